"""The PyTorch backend: the graphs run eagerly, fp32 on CPU, fp32/fp16/bf16 on CUDA.

(Named `torch_backend` so that the submodule never shadows the `torch` package inside `xvlm_edge.runtime`.)

One CPU-specific change: the decoders' linear layers compute `(W @ x^T)^T` when x has few rows. A cached
decode step multiplies 3 rows (the beams) by every weight, so it is bound by streaming the weights from
memory, and on the 2-core EPYC we measured `F.linear` (oneDNN, x @ W^T) streaming DRAM-resident weights at
~2.9 GB/s but `torch.mm(W, x^T)` at ~9 GB/s: the same math, a 3x faster step. Only the summation order
changes (~1e-7 relative); the parity tests run with it.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from xvlm_edge.errors import BackendUnavailableError, EngineError
from xvlm_edge.graphs import build_graphs, decoder_shape
from xvlm_edge.models.bert import LMHead
from xvlm_edge.models.xvlm import XVLM
from xvlm_edge.runtime import Runtime

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
        self.model = model.eval().to(device=self.device, dtype=self.dtype)
        if self.device.type == "cpu":
            for name in ("caption_decoder", "answer_decoder"):
                if hasattr(self.model, name):
                    _stream_skinny_linears(getattr(self.model, name))
        self.graphs = build_graphs(self.model)
        self.info = {"backend": self.name, "device": str(self.device), "precision": precision}

    def has(self, graph: str) -> bool:
        return graph in self.graphs

    def output_names(self, graph: str) -> tuple[str, ...]:
        return tuple(self._graph(graph).OUTPUTS)

    def cache_shape(self, decoder: str) -> tuple[int, int, int]:
        return decoder_shape(self._graph(f"{decoder}_step").decoder)

    def _graph(self, name: str) -> torch.nn.Module:
        graph = self.graphs.get(name)
        if graph is None:
            raise EngineError(f"graph {name!r} does not exist for this checkpoint (has {sorted(self.graphs)})")
        return graph

    @torch.no_grad()
    def run(self, graph: str, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        module = self._graph(graph)
        moved = [x.to(self.device, self.dtype if x.is_floating_point() else x.dtype) for x in inputs]
        outputs = module(*moved)
        return tuple(y.float().cpu() if y.is_floating_point() else y.cpu() for y in outputs)


#: Rows up to which `(W @ x^T)^T` beats `F.linear` on CPU (a decode step has beams x 1 rows).
SKINNY_ROWS = 16


def _skinny_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    if rows > SKINNY_ROWS:
        return F.linear(x, self.weight, self.bias)
    flat = x.reshape(rows, x.shape[-1])  # (rows, in)
    out = torch.mm(self.weight, flat.t()).t()  # (out, in) @ (in, rows) -> (rows, out)
    if self.bias is not None:
        out = out + self.bias
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _skinny_lm_head(self: LMHead, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
    """`LMHead.forward` with the tied vocabulary projection streamed like `_skinny_linear` (a quarter of a step)."""
    x = self.transform.LayerNorm(self.act(self.transform.dense(x)))
    rows = x.numel() // x.shape[-1]
    if rows > SKINNY_ROWS:
        return F.linear(x, word_embeddings, self.bias)
    out = torch.mm(word_embeddings, x.reshape(rows, x.shape[-1]).t()).t() + self.bias  # (rows, vocab)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _stream_skinny_linears(module: torch.nn.Module) -> None:
    """Route every nn.Linear and LM head under `module` through the skinny versions (see the module docstring)."""
    for layer in module.modules():
        if type(layer) is torch.nn.Linear:
            layer.forward = types.MethodType(_skinny_linear, layer)
        elif type(layer) is LMHead:
            layer.forward = types.MethodType(_skinny_lm_head, layer)
