"""fp16 ONNX for TensorRT: the checked fp32 export converted to float16, and its check against torch fp32.

TensorRT 10/11 builds strongly typed networks only (csrc/tensorrt/README.md): each layer runs in the type
its ONNX tensors have, with no builder precision flags. An fp16 engine is therefore built from an ONNX
whose weights and activations are float16. We convert the fp32 export (already checked against torch at
untraced sizes) with the converter that ships in the onnxruntime wheel (`onnxruntime.transformers.float16`,
the maintained copy of onnxconverter-common's), so no dependency is added:
- every float initializer, activation and float graph input/output becomes float16; ids, masks and shapes
  stay integer, and mask constants such as BERT's -10000 are exact in fp16;
- ops in `FLOAT32_OPS` run in fp32 between Casts: LayerNormalization, whose sum of squares overflows fp16
  (max 65504) when kept in fp16: one activation of 256, or an RMS of 9 over 768 channels, which residual
  streams reach (TensorRT's builder warns about fp16 LayerNorm after attention for this reason). Measured on the tiny models it also halves the error
  (text 3.7e-3 -> 1.9e-3, caption_step 6.7e-2 -> 4.9e-2 max abs); Softmax in fp32 as well changed nothing
  measurable (text, fusion) or little (vision 3.7e-3 -> 3.2e-3), so it stays fp16: its inputs are
  max-subtracted and its outputs lie in [0, 1].

The converter appends its Casts at the end of the node list; ONNX requires topological order (the checker
and TensorRT's parser read nodes in order), so the graph is re-sorted before it is written.

Accuracy: ONNX Runtime's CPU provider runs each fp16 graph against torch fp32 at `CHECK_SIZES`. The bound
is relative to each output's scale, |ort - torch| <= FP16_TOL * max(1, max |torch|), because fp16 rounding
is relative to the magnitudes summed, not to the result (a logit near 0 in a row reaching 49 carries the
row's error). Past it the export is refused. That CPU provider has fp16 kernels for few ops (Softmax, Erf,
Gather...) and runs the others (MatMul, Conv, Add...) in fp32 between Casts it inserts; those op types are
recorded (`ort_cpu_fp32_ops`). The number measured is thus the cost of fp16 weights and of the fp16 tensors
between ops, the rounding every fp16 engine has, but not TensorRT's fp16 arithmetic inside the ops. A graph
ORT cannot run at all is recorded as unchecked, with ORT's reason, instead of failing the export.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from xvlm_edge.errors import EngineError
from xvlm_edge.export.onnx import Sizes, check_parity
from xvlm_edge.runtime.onnxruntime_backend import ort_session

log = logging.getLogger(__name__)

#: Op types kept in fp32 (between Casts) in the fp16 graph: see the module docstring.
FLOAT32_OPS = ("LayerNormalization",)
#: fp16 bound against torch fp32, per output: |ort - torch| <= FP16_TOL * max(1, max |torch|). fp16 keeps 11
#: significant bits (rounding 4.9e-4 relative). Every graph of the tiny pretrain, bbox, captioning, vqa and
#: nlvr models measured at most 1.2e-3 of scale (vision 4.6e-3 abs; caption_step 4.9e-2 on logits reaching
#: 49), so 1e-2 leaves 8x for deeper models.
FP16_TOL = 1e-2


def convert_to_fp16(src: Path, dst: Path, float32_ops: Sequence[str] = FLOAT32_OPS) -> None:
    """Write `dst`: the fp32 ONNX `src` with float16 weights, activations and float I/O (ops in `float32_ops`
    stay fp32 between Casts), topologically sorted and passing `onnx.checker`."""
    import onnx
    from onnxruntime.transformers.float16 import (
        DEFAULT_OP_BLOCK_LIST,
        convert_float_to_float16,
    )

    model = onnx.load(str(src))
    model = convert_float_to_float16(model, keep_io_types=False, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *float32_ops])
    _sort_topologically(model.graph)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))


def _sort_topologically(graph) -> None:
    """Reorder `graph.node` so each node follows the producers of its inputs (Kahn's algorithm; among
    ready nodes the original order is kept, so an already sorted graph is unchanged)."""
    import heapq

    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    waiting_on = [{producer[name] for name in node.input if name in producer} for node in nodes]
    consumers: list[list[int]] = [[] for _ in nodes]
    for i, inputs in enumerate(waiting_on):
        for j in inputs:
            consumers[j].append(i)
    ready = [i for i, inputs in enumerate(waiting_on) if not inputs]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for k in consumers[i]:
            waiting_on[k].discard(i)
            if not waiting_on[k]:
                heapq.heappush(ready, k)
    if len(order) != len(nodes):
        raise EngineError(f"the fp16 graph has a cycle ({len(nodes) - len(order)} nodes unreachable); refusing to write it")
    sorted_nodes = [type(nodes[i])() for i in order]
    for copy, i in zip(sorted_nodes, order):
        copy.CopyFrom(nodes[i])
    del graph.node[:]
    graph.node.extend(sorted_nodes)


def check_fp16(name: str, path: Path, graphs: dict[str, nn.Module], cases: list[tuple[Sizes, dict]], threads: int | None = None) -> dict:
    """The fp16 graph `path` against torch fp32 on every case of `onnx.check_inputs`, with ONNX Runtime CPU.

    Returns the numbers (`onnx.check_parity`'s, plus `checked` and `ort_cpu_fp32_ops`). Raises EngineError
    past `FP16_TOL` of an output's scale. A graph ORT's CPU provider cannot run is returned as
    `checked: False` with ORT's reason: the ONNX is still what TensorRT needs.
    """
    from onnxruntime.capi.onnxruntime_pybind11_state import (
        NotImplemented as OrtNotImplemented,
    )

    with tempfile.TemporaryDirectory() as work:
        optimized = Path(work) / "optimized.onnx"
        try:
            sess = ort_session(path, threads, optimized_copy=optimized)
        except OrtNotImplemented as exc:
            log.warning("fp16 %s: ONNX Runtime CPU cannot run it, not checked (%s)", name, exc)
            return {"checked": False, "reason": f"ONNX Runtime CPU has no kernel for an op of this fp16 graph: {exc}"}
        upcast = ort_cpu_fp32_ops(optimized)
    hint = "an fp16 overflow or a rounding-sensitive op: keep that op type in fp32 (export.fp16.FLOAT32_OPS), or export fp32"
    parity = check_parity(name, sess, graphs, cases, FP16_TOL, "fp16 export", hint)
    return {"checked": True, **parity, "ort_cpu_fp32_ops": upcast}


def ort_cpu_fp32_ops(optimized: Path) -> list[str]:
    """Op types ONNX Runtime's CPU provider ran in fp32 (behind the Casts it inserts for want of an fp16
    kernel) in `optimized`, the graph a session saved."""
    import onnx

    graph = onnx.load(str(optimized), load_external_data=False).graph
    inserted = {out for n in graph.node if n.op_type == "Cast" and n.name.startswith(_ORT_INSERTED_CAST) for out in n.output}
    return sorted({n.op_type for n in graph.node if n.op_type != "Cast" and inserted.intersection(n.input)})


#: Name prefix of the Casts ONNX Runtime's InsertCastTransformer puts around CPU nodes without an fp16 kernel.
_ORT_INSERTED_CAST = "InsertedPrecisionFreeCast_"


__all__ = ["FLOAT32_OPS", "FP16_TOL", "check_fp16", "convert_to_fp16", "ort_cpu_fp32_ops"]
