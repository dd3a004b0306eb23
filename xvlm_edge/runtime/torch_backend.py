"""The PyTorch backend: the graphs run eagerly, fp32 on CPU, fp32/fp16/bf16 on CUDA.

(Named `torch_backend` so that the submodule never shadows the `torch` package inside `xvlm_edge.runtime`.)

The runtime owns the modules it runs and never changes the caller's: on the caller's device and dtype it
runs a copy of the module tree that shares the caller's tensors (no memory doubled); otherwise a converted
copy. Outputs stay on the runtime's device (`runtime/base.py`).

One CPU-specific choice, made in the runtime's own decoder modules: their linear layers may be
`StreamingLinear`, which computes `(W @ x^T)^T` when x has few rows. A cached decode step multiplies 3 rows
(the beams) by every weight, so it is bound by streaming the weights from memory. Which product streams
faster depends on the CPU: on a 2-core AMD EPYC `F.linear` (oneDNN, x @ W^T) streamed DRAM-resident weights
at ~2.9 GB/s and `torch.mm(W, x^T)` at ~9 GB/s (a 3x faster step), while on a 2-core Xeon with AVX-512 the
streamed step took 68 ms and `F.linear` 38 ms (`benchmarks/bench_tasks.py --cases stream` times both).
So the runtime measures both on the decoders' own weights when it is built (`streaming_pays`, tens of ms
at the base size), uses the faster, and says which in `info["decoder_linear"]`. Only the summation order
differs (~1e-7 relative); the parity tests run with either.
"""

from __future__ import annotations

import copy
import itertools
import time

import torch
import torch.nn.functional as F
from torch import nn

from xvlm_edge.errors import BackendUnavailableError, EngineError
from xvlm_edge.graphs import STEP, build_graphs, decoder_graph, decoder_shape
from xvlm_edge.models.bert import LMHead
from xvlm_edge.models.xvlm import XVLM
from xvlm_edge.runtime.base import Runtime

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

#: Rows up to which `(W @ x^T)^T` beats `F.linear` on CPU (a decode step has beams x 1 rows).
SKINNY_ROWS = 16


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> CUDA when present, else CPU; an explicit device must exist."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise BackendUnavailableError(f"unknown device {device!r}", hint="use 'cpu' or 'cuda'") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("device 'cuda' asked for, but this PyTorch sees no CUDA device", hint="use device='cpu'")
    if device.type not in ("cpu", "cuda"):
        raise BackendUnavailableError(f"the torch backend runs on 'cpu' or 'cuda', not {device.type!r}")
    return device


# -- the CPU streaming trick -----------------------------------------------------------------------------


def streaming_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, computed as `(W @ x^T)^T` when x has at most `SKINNY_ROWS` rows.

    Traced, scripted, compiled or exported, it is plain `F.linear`: the row count of the example must never
    become a constant of a graph.
    """
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return F.linear(x, weight, bias)
    rows = x.numel() // x.shape[-1]
    if rows > SKINNY_ROWS:
        return F.linear(x, weight, bias)
    out = torch.mm(weight, x.reshape(rows, x.shape[-1]).t()).t()  # (out, in) @ (in, rows) -> (rows, out)
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], out.shape[-1])


class StreamingLinear(nn.Module):
    """An `nn.Linear` (same parameters, same keys) that streams its weight for skinny inputs on CPU."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None) -> None:
        super().__init__()
        self.weight = weight
        self.bias = bias

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> StreamingLinear:
        """A StreamingLinear sharing `linear`'s parameters."""
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return streaming_linear(x, self.weight, self.bias)


class StreamingLMHead(nn.Module):
    """`LMHead` (same parameters, same keys) with the tied vocabulary projection streamed: a quarter of a step."""

    def __init__(self, head: LMHead) -> None:
        super().__init__()
        self.transform, self.act, self.bias = head.transform, head.act, head.bias

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        x = self.transform.LayerNorm(self.act(self.transform.dense(x)))
        return streaming_linear(x, word_embeddings, self.bias)


def streaming_pays(modules: list[nn.Module], rows: int = 3, margin: float = 0.9) -> tuple[bool, str]:
    """Whether `(W @ x^T)^T` beats `F.linear` by `margin` on this CPU for the linear layers under `modules`
    (a decode step's `rows`), and the timings that decided. Every weight is read once per pass, so the
    passes stream what a decode step streams; the best of three interleaved passes each."""
    weights = [m.weight for module in modules for m in module.modules() if type(m) is nn.Linear]
    weights += [m.bert.embeddings.word_embeddings.weight for module in modules for m in module.modules() if hasattr(m, "head")]
    if not weights:
        return False, "no decoder"
    inputs = [torch.randn(rows, w.shape[1], dtype=w.dtype) for w in weights]
    best = {"F.linear": float("inf"), "streamed": float("inf")}
    with torch.no_grad():
        for _ in range(3):
            for name, product in (("F.linear", lambda x, w: F.linear(x, w)), ("streamed", lambda x, w: torch.mm(w, x.t()))):
                start = time.perf_counter()
                for x, w in zip(inputs, weights):
                    product(x, w)
                best[name] = min(best[name], time.perf_counter() - start)
    pays = best["streamed"] < margin * best["F.linear"]
    timing = f"{best['streamed'] * 1e3:.1f} ms streamed vs {best['F.linear'] * 1e3:.1f} ms F.linear over {len(weights)} weights"
    return pays, timing


def stream_weights(module: nn.Module) -> None:
    """Replace every `nn.Linear` and `LMHead` under `module` (which must be the caller's own) by its
    streaming version, sharing the parameters."""
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                setattr(parent, name, StreamingLinear.from_linear(child))
            elif type(child) is LMHead:
                setattr(parent, name, StreamingLMHead(child))


def own_copy(model: XVLM, device: torch.device, dtype: torch.dtype) -> XVLM:
    """A module tree of our own for `model` on `device`/`dtype`, in eval mode, `model` left as it was.

    Already there: new modules over the same tensors (swapping a submodule or calling `.eval()` on ours
    cannot reach the caller's). Elsewhere: a converted copy (`.to()` would move the caller's tensors).
    """
    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    in_place = all(t.device == device and (t.dtype == dtype or not t.is_floating_point()) for t in tensors)
    if in_place:
        ours = copy.deepcopy(model, memo={id(t): t for t in tensors})
    else:
        ours = copy.deepcopy(model).to(device=device, dtype=dtype)
    return ours.eval()


class TorchRuntime(Runtime):
    name = "torch"

    def __init__(self, model: XVLM, *, precision: str = "fp32", device: str | torch.device | None = None) -> None:
        self.device = resolve_device(device)
        if precision != "fp32" and self.device.type != "cuda":
            raise BackendUnavailableError(
                f"precision {precision} needs a CUDA device on the torch backend; the CPU path is fp32 only",
                hint="use precision='fp32' on CPU",
            )
        self.precision = precision
        self.dtype = _DTYPES[precision]
        self.model = own_copy(model, self.device, self.dtype)
        self.info = {"backend": self.name, "device": str(self.device), "precision": precision}
        decoders = [getattr(self.model, name) for name in ("caption_decoder", "answer_decoder") if hasattr(self.model, name)]
        if self.device.type == "cpu" and decoders:
            pays, timing = streaming_pays(decoders)
            for decoder in decoders if pays else ():
                stream_weights(decoder)
            self.info["decoder_linear"] = f"{'streamed (W @ x^T)' if pays else 'F.linear'}: {timing}"
        self.graphs = build_graphs(self.model)

    def has(self, graph: str) -> bool:
        return graph in self.graphs

    def output_names(self, graph: str) -> tuple[str, ...]:
        return tuple(self._graph(graph).OUTPUTS)

    def cache_shape(self, decoder: str) -> tuple[int, int, int]:
        return decoder_shape(self._graph(decoder_graph(decoder, STEP)).decoder)

    def _graph(self, name: str) -> nn.Module:
        graph = self.graphs.get(name)
        if graph is None:
            raise EngineError(f"graph {name!r} does not exist for this checkpoint (has {sorted(self.graphs)})")
        return graph

    @torch.no_grad()
    def run(self, graph: str, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        module = self._graph(graph)
        moved = [x.to(self.device, self.dtype if x.is_floating_point() else x.dtype) for x in inputs]
        return tuple(module(*moved))


__all__ = [
    "SKINNY_ROWS",
    "StreamingLMHead",
    "StreamingLinear",
    "TorchRuntime",
    "own_copy",
    "resolve_device",
    "stream_weights",
    "streaming_linear",
    "streaming_pays",
]
