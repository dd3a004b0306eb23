"""xvlm_edge: X-VLM multi-grained vision-language models for edge devices."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from xvlm_edge.errors import (
    BackendUnavailableError,
    CheckpointError,
    EngineError,
    ImageError,
    InputError,
    TextError,
    XVLMEdgeError,
)

try:
    __version__ = version("xvlm-edge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"


def load(path=None, backend="auto", precision="fp32", device=None, threads=None):
    """Load a model: our checkpoint directory or an official X-VLM `.th` file (any of the six layouts).

    Returns an `xvlm_edge.api.Model` with caption / ground / match / check / retrieve / answer / nlvr; every
    score it returns is a probability in [0, 1] (raw logits and log-probabilities sit beside them).
    `backend` is "auto" (torch), "torch", "onnxruntime" (an export made by `xvlm-edge export`) or "tensorrt"
    (engines built by `xvlm-edge engines`); `precision` "fp32", "fp16"/"bf16" on CUDA, or "int8" from an
    INT8 export; `device` None picks CUDA when present; `threads` sets the CPU threads (None: what the
    machine has free, see `xvlm_edge.api.load`). `model.info` reports what was chosen and why. With no path,
    the embedded default model in `xvlm_edge/assets/default/` loads (no download).
    """
    from xvlm_edge.api import load as load_model

    return load_model(path, backend=backend, precision=precision, device=device, threads=threads)


__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "EngineError",
    "ImageError",
    "InputError",
    "TextError",
    "XVLMEdgeError",
    "__version__",
    "load",
]
