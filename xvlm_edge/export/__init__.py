"""Export: ONNX per graph (or ExecuTorch programs) with a torch parity check, fp16 for TensorRT, INT8 behind an accuracy gate.

`export_model(MODEL_DIR, precision, target)` writes `MODEL_DIR/export/<target>-<precision>/`: one `<graph>.onnx`
per graph of the catalogue and the manifest (`xvlm_edge.manifest`). The directory is built beside its final
place and swapped in only once every check passed (`files.atomic_directory`), so a refused export leaves
the previous one (or nothing) behind. Each precision has its module: `onnx.py` (fp32, and the parity check
every precision runs), `fp16.py`, `int8.py` (the plan search); `tensorrt.py` builds engines from an export.

Targets: `onnxruntime` (fp32, int8), `tensorrt` (the ONNX a TensorRT engine is built from on the device:
fp32; fp16, since strongly typed networks take their precision from the ONNX types; or int8 with the QDQ
vision graph and float text/decoder graphs, since TensorRT does not run ORT's dynamic-quantisation ops), and
`executorch` (fp32, int8: one XNNPACK `.pte` per graph for explicit `executorch.Bounds`, with `vocab.txt` and
`config.json` beside them for the lamp's C++ SDK; `executorch.py`). INT8 runs the same plan search and gate
on every target (`int8.PlanSearch` over an `int8.QuantTarget`).
`onnxruntime` has no fp16: its CPU provider has fp16 kernels for few ops and runs the rest (MatMul, Conv,
Add...) in fp32 behind Casts it inserts, so an fp16 graph there only adds rounding to the fp32 export.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xvlm_edge.errors import BackendUnavailableError, CheckpointError, InputError
from xvlm_edge.export.gate import AccuracyGateError, Thresholds
from xvlm_edge.manifest import ExportManifest, GraphFile, export_dir

if TYPE_CHECKING:
    from xvlm_edge.export.executorch import Bounds

log = logging.getLogger(__name__)

TARGETS = ("onnxruntime", "tensorrt", "executorch")
PRECISIONS = {"onnxruntime": ("fp32", "int8"), "tensorrt": ("fp32", "fp16", "int8"), "executorch": ("fp32", "int8")}
#: Why a target refuses a precision, for the error message.
_REFUSED = {
    ("onnxruntime", "fp16"): "fp16 ONNX is for TensorRT (--target tensorrt): ONNX Runtime's CPU provider has fp16 "
    "kernels for few ops and runs the rest (MatMul, Conv, Add...) in fp32 behind Casts; use fp32 or int8 there",
    ("executorch", "fp16"): "the executorch target is the lamp's CPU (XNNPACK): fp32, or int8 behind the accuracy gate",
}
ImageSource = str | Path | Sequence[np.ndarray] | None


def images(source: ImageSource, count: int, seed: int) -> list[np.ndarray]:
    """Calibration or evaluation images: a folder's, the given arrays, or `count` synthetic scenes."""
    from xvlm_edge.export.quantize import folder_images, synthetic_images

    if source is None:
        return synthetic_images(count, seed=seed)
    if isinstance(source, (str, Path)):
        return folder_images(source, count)
    found = list(source)
    if not found:
        raise InputError("an empty image list was given for calibration or evaluation")
    return found


def export_model(
    model_dir: str | Path,
    precision: str = "fp32",
    target: str = "onnxruntime",
    *,
    destination: str | Path | None = None,
    calibration: ImageSource = None,
    eval_images: ImageSource = None,
    thresholds: Thresholds | None = None,
    force: bool = False,
    strict: bool = False,
    exclude: Sequence[str] | None = None,
    keep_fp32: Sequence[str] = (),
    sensitivity_budget: int | None = None,
    reduce_range: bool | None = None,
    threads: int | None = None,
    progress: bool = False,
    bounds: Bounds | None = None,
) -> ExportManifest:
    """Export, check and (for int8) gate the checkpoint directory `model_dir`; returns the manifest written.

    `destination`: the export directory (default `MODEL_DIR/export/<target>-<precision>/`).
    INT8 (`int8.py`): without `force` or `strict`, the plan search keeps in float what the gate needs, per
    graph and per MatMul (`sensitivity_budget` nodes per graph, default `int8.SENSITIVITY_BUDGET`, 0: whole
    graphs only); `strict` refuses
    instead (AccuracyGateError); `force` quantises every graph with its fastest option and writes it whatever
    the gate says (recorded, and warned about on load). `keep_fp32`: graphs to leave float from the start.
    `reduce_range`: 7-bit weights; None follows this CPU (`cpu.needs_reduced_range`).
    `threads`: ONNX Runtime threads of the checks (None: every core; executorch: its threadpool). Raises
    EngineError when an fp32 graph differs from torch past `onnx.FP32_ATOL`, or an fp16 graph past `fp16.FP16_TOL`.
    `bounds` (executorch only): the largest call each program takes (`executorch.Bounds`, default lamp-sized).
    Executorch INT8 is dynamic (no calibration) and XNNPACK's (no reduce_range); `exclude` names module-name
    substrings kept float.
    """
    if target not in TARGETS:
        raise InputError(f"unknown export target {target!r}; choose one of {list(TARGETS)}")
    if precision not in PRECISIONS[target]:
        why = _REFUSED.get((target, precision))
        raise BackendUnavailableError(
            f"target {target} exports {list(PRECISIONS[target])}, not {precision!r}" + (f": {why}" if why else "")
        )
    budget = sensitivity_budget
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
        raise InputError(f"the sensitivity budget is a number of nodes >= 0, got {budget!r}")
    if force and strict:
        raise InputError("force and strict contradict each other: force writes a failing export, strict refuses one")
    if precision != "int8" and (keep_fp32 or strict or force or budget is not None or reduce_range is not None):
        raise InputError("keep_fp32, strict, force, the sensitivity budget and reduce_range apply to int8 exports only")
    if target != "executorch" and bounds is not None:
        raise InputError(f"bounds size ExecuTorch programs (target executorch), not {target} exports")
    if target == "executorch" and bounds is not None:
        from xvlm_edge.export.executorch import Bounds

        if not isinstance(bounds, Bounds):
            raise InputError(f"bounds must be an xvlm_edge.export.executorch.Bounds, got {type(bounds).__name__}")
    if target == "executorch" and (calibration is not None or reduce_range is not None or budget):
        raise InputError(
            "the executorch target's INT8 is XNNPACK's dynamic INT8 of whole graphs: it takes no calibration images, "
            "no reduce_range and no per-MatMul sensitivity search"
        )
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir} is not a checkpoint directory", hint="convert first: xvlm-edge convert CKPT DIR")
    from xvlm_edge.checkpoint import GATE_IMAGES_DIR, load_directory
    from xvlm_edge.files import atomic_directory

    checkpoint = load_directory(model_dir)
    if eval_images is None and (model_dir / GATE_IMAGES_DIR).is_dir():
        eval_images = model_dir / GATE_IMAGES_DIR  # the checkpoint's own held-out domain images
    final = Path(destination) if destination is not None else export_dir(model_dir, target, precision)
    with atomic_directory(final) as tmp:
        fp32_dir = tmp if precision == "fp32" else tmp / ".fp32"
        fp32_dir.mkdir(exist_ok=True)
        if target == "executorch":
            from xvlm_edge.export import executorch

            bounds = executorch.Bounds() if bounds is None else bounds
            manifest = executorch.export_fp32(checkpoint, model_dir, fp32_dir, bounds, threads)
            manifest.assets = executorch.write_assets(model_dir, tmp)
        else:
            manifest = _fp32(checkpoint, model_dir, target, fp32_dir, threads)
        if precision == "fp16":
            _fp16(checkpoint, manifest, fp32_dir, tmp, threads)
        elif precision == "int8":
            settings = _int8_settings(thresholds, force, strict, exclude, keep_fp32, budget, reduce_range, threads, progress, target)
            _int8(checkpoint, manifest, fp32_dir, tmp, target, settings, calibration, eval_images, bounds)
        if fp32_dir != tmp:
            shutil.rmtree(fp32_dir)
        manifest.write(tmp)
    log.info("wrote %s", final)
    return manifest


def _graph_file(path: Path, spec, quantization: str) -> GraphFile:
    from xvlm_edge.export.quantize import count_ops
    from xvlm_edge.files import sha256_file

    ops = count_ops(path)
    return GraphFile(
        file=path.name,
        sha256=sha256_file(path),
        bytes=path.stat().st_size,
        inputs=list(spec.inputs),
        outputs=list(spec.outputs),
        dynamic_axes={t: {str(d): a for d, a in axes.items()} for t, axes in spec.axes.items()},
        quantization=quantization,
        qdq_nodes=ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0),
        int8_matmuls=ops.get("MatMulInteger", 0) + ops.get("DynamicQuantizeMatMul", 0),
    )


def _fp32(checkpoint, model_dir: Path, target: str, into: Path, threads: int | None) -> ExportManifest:
    """The checked fp32 graphs in `into` (copied from an fp32 export of the same weights when there is one,
    since re-exporting costs minutes at the base size) and the manifest describing them."""
    import torch

    from xvlm_edge.cpu import cpu_flags, cpu_name
    from xvlm_edge.export.onnx import OPSET, export_fp32
    from xvlm_edge.files import sha256_file
    from xvlm_edge.graphs import build_graphs, catalogue, decoder_shapes
    from xvlm_edge.manifest import WEIGHTS_FILE
    from xvlm_edge.runtime.onnxruntime_backend import require_onnxruntime

    weights = sha256_file(model_dir / WEIGHTS_FILE)
    parity = _reuse_fp32(export_dir(model_dir, target, "fp32"), weights, into)
    if parity is None:
        parity = export_fp32(checkpoint.model, into, threads=threads)
    specs = catalogue(checkpoint.config.heads)
    graphs = build_graphs(checkpoint.model)
    return ExportManifest(
        target=target,
        precision="fp32",
        weights_sha256=weights,
        config=json.loads(json.dumps(checkpoint.config.to_dict())),  # as read back: lists, not tuples
        graphs={name: _graph_file(into / f"{name}.onnx", spec, "float32") for name, spec in specs.items()},
        decoders=decoder_shapes(graphs),
        opset=OPSET,
        exporter=f"torch.onnx TorchScript exporter, torch {torch.__version__}",
        onnxruntime=require_onnxruntime().__version__,
        machine=platform.machine(),
        cpu=cpu_name(),
        cpu_flags=list(cpu_flags()),
        parity={"fp32_vs_torch": parity},
        accuracy={"reference": "torch fp32", "note": "fp32 export: see parity"},
    )


def _reuse_fp32(directory: Path, weights_sha: str, into: Path) -> dict | None:
    """Copy a checked fp32 export of the same weights and opset into `into`; its parity, or None when there is none."""
    from xvlm_edge.export.onnx import OPSET
    from xvlm_edge.manifest import copy_reusable

    manifest = copy_reusable(directory, into, lambda m: (m.weights_sha256, m.opset, m.precision) == (weights_sha, OPSET, "fp32"))
    return None if manifest is None else manifest.parity["fp32_vs_torch"]


def _fp16(checkpoint, manifest: ExportManifest, fp32_dir: Path, out: Path, threads: int | None) -> None:
    from xvlm_edge.export.fp16 import FLOAT32_OPS, check_fp16, convert_to_fp16
    from xvlm_edge.export.onnx import check_inputs
    from xvlm_edge.graphs import build_graphs, catalogue

    graphs = build_graphs(checkpoint.model)
    cases = check_inputs(checkpoint.model, graphs)
    specs = catalogue(checkpoint.config.heads)
    parity = {}
    for name, spec in specs.items():
        convert_to_fp16(fp32_dir / f"{name}.onnx", out / f"{name}.onnx")
        parity[name] = check_fp16(name, out / f"{name}.onnx", graphs, cases, threads=threads)
        manifest.graphs[name] = _graph_file(out / f"{name}.onnx", spec, f"float16 ({', '.join(FLOAT32_OPS)} in fp32)")
    manifest.precision = "fp16"
    manifest.parity["fp16_vs_torch"] = parity
    manifest.quantization = {"float32_ops": list(FLOAT32_OPS)}
    manifest.accuracy = {"reference": "torch fp32", "note": "fp16 export: see parity (ONNX Runtime CPU)"}


def _int8_settings(thresholds, force, strict, exclude, keep_fp32, budget, reduce_range, threads, progress, target):
    from xvlm_edge.cpu import needs_reduced_range
    from xvlm_edge.export.int8 import SENSITIVITY_BUDGET, Int8Settings
    from xvlm_edge.export.quantize import DEFAULT_EXCLUDE

    if target == "executorch":  # whole graphs, XNNPACK's int8 kernels (no 7-bit weights needed)
        budget, reduce_range = 0, False
    return Int8Settings(
        thresholds=thresholds or Thresholds(),
        force=force,
        strict=strict,
        exclude=DEFAULT_EXCLUDE if exclude is None else tuple(exclude),
        keep_fp32=tuple(keep_fp32),
        sensitivity_budget=SENSITIVITY_BUDGET if budget is None else budget,
        reduce_range=needs_reduced_range() if reduce_range is None else bool(reduce_range),
        reduce_range_source=_reduce_range_source(reduce_range, target),
        threads=threads,
        progress=progress,
    )


def _reduce_range_source(reduce_range: bool | None, target: str) -> str:
    if target == "executorch":
        return "not used: XNNPACK's int8 kernels"
    return "detected from this CPU's flags" if reduce_range is None else "set by the user"


def _int8(checkpoint, manifest: ExportManifest, fp32_dir: Path, out: Path, target, settings, calibration, eval_images, bounds) -> None:
    import tempfile

    from xvlm_edge.export import gate
    from xvlm_edge.export.int8 import CALIBRATION_IMAGES, EVAL_IMAGES, OnnxTarget, PlanSearch, check_keep_fp32
    from xvlm_edge.graphs import catalogue

    specs = catalogue(checkpoint.config.heads)
    check_keep_fp32(settings.keep_fp32, list(specs))
    # XNNPACK's INT8 is dynamic: nothing to calibrate
    calibration_images = [] if target == "executorch" else images(calibration, CALIBRATION_IMAGES, seed=0)
    evaluation = images(eval_images, EVAL_IMAGES, seed=1)
    with tempfile.TemporaryDirectory(prefix="xvlm-int8-") as work:
        if target == "executorch":
            from xvlm_edge.export.executorch import ExecuTorchTarget

            quant_target = ExecuTorchTarget(checkpoint, fp32_dir, out, Path(work), bounds, settings.exclude, manifest, settings.threads)
        else:
            quant_target = OnnxTarget(checkpoint, fp32_dir, out, Path(work), target, settings, calibration_images, manifest)
        search = PlanSearch(checkpoint, quant_target, Path(work), settings, evaluation)
        metrics = search.run()
        plan = search.record()
        for name, spec in specs.items():
            if target == "executorch":
                manifest.graphs[name] = quant_target.graph_file(name, search.plan[name])
            else:
                manifest.graphs[name] = _graph_file(out / f"{name}.onnx", spec, plan[name]["description"])
    manifest.precision = "int8"
    manifest.quantization = {
        "reduce_range": settings.reduce_range,
        "reduce_range_source": settings.reduce_range_source,
        "exclude": list(settings.exclude),
        "keep_fp32": list(settings.keep_fp32),
        "calibration_images": len(calibration_images),
        "eval_images": "generated" if eval_images is None else str(eval_images) if isinstance(eval_images, (str, Path)) else "given",
        "sensitivity_budget": settings.sensitivity_budget,
        "mode": "strict" if settings.strict else "force" if settings.force else "search",
        "plan": plan,
        "trials": search.trials,
        "search_seconds": search.seconds,
    }
    record = gate.gate(metrics, settings.thresholds, settings.force)
    manifest.accuracy = {"reference": "torch fp32", **record}


__all__ = ["PRECISIONS", "TARGETS", "AccuracyGateError", "Thresholds", "export_model", "images"]
