"""Runtimes: one backend per engine behind the `Runtime` contract (`base.py`), and the factory that picks one.

`backend="auto"` is the only choice made for the caller, and it is reported in `Runtime.info`. Anything
asked for that is not there raises `BackendUnavailableError` naming it; an export made from other weights
than the checkpoint's is refused (`StaleExportError`), never served.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from xvlm_edge.errors import BackendUnavailableError, InputError
from xvlm_edge.runtime.base import DecoderState, Runtime, full_image_atts

if TYPE_CHECKING:
    from xvlm_edge.models.xvlm import XVLM

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tensorrt", "executorch")
#: fp16/bf16: torch on CUDA (or a TensorRT fp16 export); int8: an INT8 export on ONNX Runtime, TensorRT or ExecuTorch.
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
#: What each exported backend runs; the torch backend runs the module itself.
EXPORTED_PRECISIONS = {"onnxruntime": ("fp32", "int8"), "tensorrt": ("fp32", "fp16", "int8"), "executorch": ("fp32", "int8")}


def create_runtime(
    model: XVLM | None,
    backend: str = "auto",
    precision: str = "fp32",
    device: str | torch.device | None = None,
    *,
    model_dir: str | Path | None = None,
    threads: int | None = None,
) -> Runtime:
    """The runtime asked for, or BackendUnavailableError naming what is missing (never a silent fallback).

    `backend="onnxruntime"` runs the export in `model_dir/export/onnxruntime-<precision>/` with `threads`
    intra-op threads; `backend="executorch"` the programs in `model_dir/export/executorch-<precision>/` on CPU
    (`threads`: ExecuTorch's threadpool); `backend="tensorrt"` the engines built from
    `model_dir/export/tensorrt-<precision>/` (`xvlm-edge engines`). Each checks the export against `model_dir`'s
    weights, and needs no `model`.
    `backend="auto"` is torch: an export is a deliberate step, and it is never picked up behind your back.

    Threads: the torch backend sets torch's process-wide count to `threads`. The CPU exported backends give
    `threads` to their runtime and set torch's count to 1: torch only does the decoding bookkeeping between
    graph runs there (log-softmax, top-k, cache reorder over a few beams), too small to gain from a second
    thread, and its OpenMP pool waking and spinning beside the runtime's on the same cores cost every
    step. Base preset, INT8 caption on 2 cores: 491 -> 431 ms median (`Model.info["torch_threads"]`).
    """
    if precision not in PRECISIONS:
        raise BackendUnavailableError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if backend not in ("auto", *BACKENDS):
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose one of {['auto', *BACKENDS]}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads must be a positive integer, got {threads!r}")
    if backend in EXPORTED_PRECISIONS:
        return _exported(backend, precision, device, model_dir, threads)
    if precision == "int8":
        raise BackendUnavailableError(
            "precision int8 runs from an INT8 export",
            hint="xvlm-edge export MODEL_DIR --precision int8, then backend='onnxruntime'",
        )
    if model is None:
        raise BackendUnavailableError("the torch backend needs the PyTorch weights, which were not loaded")
    if threads is not None:
        torch.set_num_threads(threads)
    from xvlm_edge.runtime.torch_backend import TorchRuntime

    runtime = TorchRuntime(model, precision=precision, device=device)
    runtime.info["requested"] = backend
    if backend == "auto":
        runtime.info["reason"] = "auto: torch (exported backends are chosen explicitly)"
        log.info("backend auto -> torch on %s (%s)", runtime.device, precision)
    return runtime


def _exported(backend: str, precision: str, device, model_dir: str | Path | None, threads: int | None) -> Runtime:
    """The ONNX Runtime, ExecuTorch or TensorRT runtime of `model_dir`'s export, checked against its weights."""
    from xvlm_edge.manifest import ExportManifest, export_command, export_dir

    if precision not in EXPORTED_PRECISIONS[backend]:
        raise BackendUnavailableError(f"the {backend} backend runs {list(EXPORTED_PRECISIONS[backend])}, not {precision!r}")
    if model_dir is None or not Path(model_dir).is_dir():
        raise BackendUnavailableError(
            f"backend {backend!r} runs an exported checkpoint directory; none was given",
            hint="convert to a directory (xvlm-edge convert), then: " + export_command("DIR", backend, precision),
        )
    directory = export_dir(model_dir, backend, precision)
    if not directory.is_dir():
        raise BackendUnavailableError(
            f"{model_dir} has no {backend} {precision} export ({directory} does not exist)",
            hint="run: " + export_command(model_dir, backend, precision),
        )
    if backend == "executorch":
        from xvlm_edge.runtime.executorch_backend import require_executorch

        require_executorch()  # before reading the export: a missing package is the first thing to fix
    manifest = ExportManifest.read(directory)
    manifest.check_weights(model_dir, directory)
    if backend in ("onnxruntime", "executorch") and device is not None and torch.device(device).type != "cpu":
        raise BackendUnavailableError(f"the {backend} backend runs on the CPU here, not {device!r}", hint="use device='cpu'")
    if backend in ("onnxruntime", "executorch"):
        torch.set_num_threads(1)  # bookkeeping only: see create_runtime
    if backend == "onnxruntime":
        from xvlm_edge.runtime.onnxruntime_backend import OnnxRuntime

        runtime: Runtime = OnnxRuntime(directory, manifest=manifest, threads=threads)
    elif backend == "executorch":
        from xvlm_edge.runtime.executorch_backend import ExecuTorchRuntime

        runtime = ExecuTorchRuntime(directory, manifest=manifest, threads=threads)
    else:
        from xvlm_edge.export.tensorrt import DEFAULT_ENGINE_SUBDIR
        from xvlm_edge.runtime.tensorrt import TensorRTRuntime

        runtime = TensorRTRuntime(directory / DEFAULT_ENGINE_SUBDIR, device=device)
    runtime.info["requested"] = backend
    return runtime


__all__ = ["BACKENDS", "PRECISIONS", "DecoderState", "Runtime", "create_runtime", "full_image_atts"]
