"""The ONNX Runtime backend: the exported graphs of `MODEL_DIR/export/onnxruntime-<precision>/`, on CPU.

The export step (`xvlm_edge.export`) writes one `<graph>.onnx` per graph and the manifest
(`xvlm_edge.manifest`); this module runs graphs by name with the same inputs and outputs as the torch
backend (CPU tensors in and out), so every task runs on it unchanged. Sessions are created on first use: a
caption model never loads the text graph. `ort_session` is the one place an ONNX Runtime session is made,
for this backend, the export's parity checks, the gate and the sensitivity search alike.

The torch backend is the reference (STYLE rule 8): `tests/test_onnxruntime_backend.py` compares every task.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xvlm_edge.errors import BackendUnavailableError, EngineError
from xvlm_edge.manifest import ExportManifest
from xvlm_edge.runtime.base import ExportedRuntime

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install onnx onnxruntime (they come with xvlm-edge; a minimal install may lack them)"
_NUMPY = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float16)": np.float16}


def require_onnxruntime():
    """The onnxruntime module, or BackendUnavailableError with the install hint."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError("the onnxruntime package is not installed", hint=INSTALL_HINT) from exc
    return onnxruntime


def ort_session(path: str | Path, threads: int | None = None, *, optimized_copy: str | Path | None = None):
    """An ONNX Runtime CPU session for `path`, every graph optimisation on; `threads` intra-op threads (None:
    ORT's default, every core). The optimised graph ORT runs is saved to `optimized_copy` when given.

    Threads spin while a run lasts and stop at its end (`force_spinning_stop`). Without spinning, every
    parallel op waited for its worker to wake: a 2-thread INT8 decoder step took 11 ms, no faster than one
    thread, and 7.5 ms spinning. Spinning past the end of a run starved the torch ops that decoding
    interleaves (log_softmax of a (3, 156) tensor took 1.8 ms instead of 10 us).

    Denormals are flushed to zero: Swin's shifted-window mask sends exp(-100) through Softmax, and denormal
    arithmetic made Softmax 20 % of the INT8 vision graph (131 ms, Xeon with AVX-512); flushed, the graph
    runs 1.3x faster (377 -> 293 ms) and the dynamic INT8 one 2x. Values below 1.2e-38 cannot move an fp32
    result past the parity bound.
    """
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_copy is not None:
        options.optimized_model_filepath = str(optimized_copy)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntime(ExportedRuntime):
    """The graphs of one export directory behind the `Runtime` interface."""

    name = "onnxruntime"

    def __init__(self, directory: str | Path, *, manifest: ExportManifest | None = None, threads: int | None = None) -> None:
        self.ort = require_onnxruntime()
        self.directory = Path(directory)
        self.manifest = ExportManifest.read(self.directory) if manifest is None else manifest
        self.precision = self.manifest.precision
        self.device = torch.device("cpu")
        self.threads = threads
        self._sessions: dict[str, Any] = {}
        self.info = {
            "backend": self.name,
            "device": "cpu",
            "precision": self.precision,
            "threads": "default" if threads is None else str(threads),
            "export": str(self.directory),
        }

    def session(self, graph: str):
        """The graph's InferenceSession, created on first use."""
        sess = self._sessions.get(graph)
        if sess is None:
            sess = ort_session(self.directory / self.manifest.graph(graph).file, self.threads)
            self._sessions[graph] = sess
        return sess

    def run(self, graph: str, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sess = self.session(graph)
        specs = sess.get_inputs()
        if len(inputs) != len(specs):
            raise EngineError(f"graph {graph!r} takes {len(specs)} inputs {[s.name for s in specs]}, got {len(inputs)}")
        feed = {}
        for spec, x in zip(specs, inputs):
            array = x.detach().cpu().numpy()
            feed[spec.name] = np.ascontiguousarray(array, dtype=_NUMPY.get(spec.type, array.dtype))
        state = self.ort.capi.onnxruntime_pybind11_state
        try:
            outputs = sess.run(list(self.manifest.graph(graph).outputs), feed)
        except (state.Fail, state.InvalidArgument, state.RuntimeException) as exc:  # shapes outside the export, ...
            raise EngineError(f"ONNX Runtime failed on graph {graph!r}: {exc}") from exc
        return tuple(torch.from_numpy(y.astype(np.float32) if y.dtype == np.float16 else y) for y in outputs)


__all__ = ["INSTALL_HINT", "OnnxRuntime", "ort_session", "require_onnxruntime"]
