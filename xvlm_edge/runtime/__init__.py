"""One interface over every inference backend: run a named graph on tensors, get tensors back.

A backend implements `run(graph, *inputs)` for the graphs of `xvlm_edge.graphs` (same names, same input
order, same outputs); the typed helpers here turn the outputs into the graphs' dataclasses, so tasks never
see a backend's internals. `backend="auto"` is the only choice made for the caller, and it is reported in
`Runtime.info`. Anything asked for that is not there raises `BackendUnavailableError` naming it.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from xvlm_edge.errors import BackendUnavailableError
from xvlm_edge.graphs import (
    CrossKV,
    DecoderOutput,
    FusionOutput,
    ImageEncoding,
    TextEncoding,
)

if TYPE_CHECKING:
    from xvlm_edge.models.xvlm import XVLM

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")
#: Backends of the design (DESIGN.md section 1) that `create_runtime` does not build yet
#: (`runtime.tensorrt.TensorRTRuntime` is constructed from an engine directory directly).
PLANNED_BACKENDS = ("tensorrt",)
#: fp16/bf16: torch on CUDA; int8: ONNX Runtime from an INT8 export.
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (exports and engines are checked against their manifests)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Runtime(ABC):
    """Runs graphs by name. `info` says which backend, device and precision were chosen and why."""

    name: str
    device: torch.device
    precision: str
    info: dict[str, str]

    @abstractmethod
    def run(self, graph: str, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run `graph` on `inputs` (in the graph's INPUTS order); float outputs come back as fp32 on the CPU."""

    @abstractmethod
    def has(self, graph: str) -> bool:
        """Whether this runtime has `graph` (the checkpoint's heads decide which graphs exist)."""

    # -- typed helpers: the only calls tasks make ------------------------------------------------------

    def vision(self, pixels: torch.Tensor) -> ImageEncoding:
        out = self.run("vision", pixels)
        return ImageEncoding(*out)

    def text(self, text_ids: torch.Tensor, text_atts: torch.Tensor) -> TextEncoding:
        return TextEncoding(*self.run("text", text_ids, text_atts))

    def fusion(
        self,
        text_embeds: torch.Tensor,
        text_atts: torch.Tensor,
        image_embeds: torch.Tensor,
        image_index: torch.Tensor,
        image_atts: torch.Tensor | None = None,
    ) -> FusionOutput:
        if image_atts is None:
            image_atts = full_image_atts(len(image_index), image_embeds.shape[1])
        names = self.output_names("fusion")
        out = dict(zip(names, self.run("fusion", text_embeds, text_atts, image_embeds, image_index, image_atts)))
        return FusionOutput(**out)

    def multimodal(
        self, text_ids: torch.Tensor, text_atts: torch.Tensor, image_embeds: torch.Tensor, image_index: torch.Tensor
    ) -> torch.Tensor:
        atts = full_image_atts(len(image_index), image_embeds.shape[1])
        return self.run("multimodal", text_ids, text_atts, image_embeds, image_index, atts)[0]

    def nlvr(
        self,
        text_ids: torch.Tensor,
        text_atts: torch.Tensor,
        image_embeds: torch.Tensor,
        left_index: torch.Tensor,
        right_index: torch.Tensor,
    ) -> torch.Tensor:
        return self.run("nlvr", text_ids, text_atts, image_embeds, left_index, right_index)[0]

    def cross_kv(self, decoder: str, states: torch.Tensor) -> CrossKV:
        """`decoder` is "caption" (states = image embeds) or "answer" (states = VQA question states)."""
        return CrossKV(*self.run(f"{decoder}_cross_kv", states))

    def decoder_step(
        self,
        graph: str,
        text_ids: torch.Tensor,
        self_atts: torch.Tensor,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        cross: CrossKV,
        cross_atts: torch.Tensor,
    ) -> DecoderOutput:
        """`graph` is "caption_step" / "answer_step", or "caption_score" / "answer_score" (logits of every new
        position). The rows come grouped by image (or question): r = rows / B consecutive rows read each one."""
        out = self.run(graph, text_ids, self_atts, cache_k, cache_v, cross.k, cross.v, cross_atts)
        return DecoderOutput(*out)

    def empty_cache(self, decoder: str, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """An empty self-attention cache (L, rows, heads, 0, d) for `decoder` ("caption" or "answer")."""
        layers, heads, dim = self.cache_shape(decoder)
        empty = torch.zeros(layers, rows, heads, 0, dim)
        return empty, empty

    @abstractmethod
    def output_names(self, graph: str) -> tuple[str, ...]:
        """Names of `graph`'s outputs (they depend on the checkpoint's heads)."""

    @abstractmethod
    def cache_shape(self, decoder: str) -> tuple[int, int, int]:
        """(layers, heads, head dim) of a decoder's self-attention cache."""


def full_image_atts(rows: int, tokens: int) -> torch.Tensor:
    """The all-ones (rows, 1 + N) image mask of whole-image queries."""
    return torch.ones(rows, tokens, dtype=torch.long)


def create_runtime(
    model: XVLM,
    backend: str = "auto",
    precision: str = "fp32",
    device: str | torch.device | None = None,
    *,
    model_dir: str | Path | None = None,
    threads: int | None = None,
) -> Runtime:
    """The runtime asked for, or BackendUnavailableError naming what is missing (never a silent fallback).

    `backend="onnxruntime"` runs the export in `model_dir/export/onnxruntime-<precision>/` (made by
    `xvlm-edge export`) with `threads` intra-op threads; `model` is then only used by the caller.
    `backend="auto"` is torch: an export is a deliberate step, and it is never picked up behind your back.
    """
    if precision not in PRECISIONS:
        raise BackendUnavailableError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if backend in PLANNED_BACKENDS:
        raise BackendUnavailableError(
            f"backend {backend!r} is not part of this build yet", hint="use backend='torch' (or 'auto')"
        )
    if backend not in ("auto", *BACKENDS):
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose one of {['auto', *BACKENDS]}")
    if backend == "onnxruntime":
        return _onnxruntime(precision, device, model_dir, threads)
    if precision == "int8":
        raise BackendUnavailableError(
            "precision int8 runs on the onnxruntime backend only", hint="export with --precision int8, then use backend='onnxruntime'"
        )
    if threads is not None:
        torch.set_num_threads(threads)
    from xvlm_edge.runtime.torch_backend import TorchRuntime

    runtime = TorchRuntime(model, precision=precision, device=device)
    runtime.info["requested"] = backend
    if backend == "auto":
        runtime.info["reason"] = "auto: torch (exported backends are chosen explicitly)"
        log.info("backend auto -> torch on %s (%s)", runtime.device, precision)
    return runtime


def _onnxruntime(precision: str, device: str | torch.device | None, model_dir: str | Path | None, threads: int | None) -> Runtime:
    from xvlm_edge.runtime.onnxruntime_backend import PRECISIONS as ORT_PRECISIONS
    from xvlm_edge.runtime.onnxruntime_backend import (
        OnnxRuntime,
        export_dir,
        require_onnxruntime,
    )

    require_onnxruntime()
    if device is not None and torch.device(device).type != "cpu":
        raise BackendUnavailableError(f"the onnxruntime backend runs on the CPU here, not {device!r}", hint="use device='cpu'")
    if precision not in ORT_PRECISIONS:
        raise BackendUnavailableError(f"the onnxruntime backend runs {list(ORT_PRECISIONS)}, not {precision!r}")
    if model_dir is None or not Path(model_dir).is_dir():
        raise BackendUnavailableError(
            "backend 'onnxruntime' runs an exported checkpoint directory; none was given",
            hint="convert to a directory (xvlm-edge convert), then: xvlm-edge export DIR --precision " + precision,
        )
    runtime = OnnxRuntime(export_dir(model_dir, "onnxruntime", precision), threads=threads)
    runtime.info["requested"] = "onnxruntime"
    return runtime


__all__ = ["BACKENDS", "PRECISIONS", "Runtime", "create_runtime", "full_image_atts"]
