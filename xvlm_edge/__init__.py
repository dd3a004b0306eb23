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


def load(path):
    """Load our checkpoint directory or an official X-VLM `.th` file (any of the six layouts)."""
    from xvlm_edge.checkpoint import load as load_checkpoint

    return load_checkpoint(path)


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
