"""The ONNX Runtime backend: the exported graphs of `MODEL_DIR/export/onnxruntime-<precision>/`, on CPU.

The export step (`xvlm_edge.export`) writes one `<graph>.onnx` per graph and a `manifest.json` with each file's
sha256, the graph I/O names, the decoder cache shapes and the accuracy measured against fp32. This module
reads that directory, refuses a file whose hash differs from the manifest, and runs graphs by name with the
same inputs and outputs as the torch backend (CPU tensors in, fp32 CPU tensors out), so every task runs on it
unchanged. Sessions are created on first use: a caption model never loads the text graph.

The torch backend is the reference (STYLE rule 8): `tests/test_onnxruntime_backend.py` compares every task.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xvlm_edge.errors import BackendUnavailableError, EngineError
from xvlm_edge.runtime import Runtime, sha256_file

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install onnxruntime (or: pip install 'xvlm-edge[onnx]')"
MANIFEST = "manifest.json"
#: Precisions this backend runs (fp16 ONNX is for TensorRT; ORT's CPU provider would upcast it).
PRECISIONS = ("fp32", "int8")
_NUMPY = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float16)": np.float16}


def export_dir(model_dir: str | Path, target: str, precision: str) -> Path:
    """Where the export of `model_dir` for `target` at `precision` lives."""
    return Path(model_dir) / "export" / f"{target}-{precision}"


def require_onnxruntime():
    """The onnxruntime module, or BackendUnavailableError with the install hint."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError("backend 'onnxruntime' needs the onnxruntime package, which is not installed", hint=INSTALL_HINT) from exc
    return onnxruntime


def read_manifest(directory: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """The manifest of an export directory, with every graph file checked against its sha256."""
    root = Path(directory)
    path = root / MANIFEST
    if not path.is_file():
        raise BackendUnavailableError(
            f"no ONNX export at {root} ({MANIFEST} is missing)",
            hint=f"run: xvlm-edge export {root.parent.parent} --precision {root.name.split('-')[-1]} --target onnxruntime",
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EngineError(f"{path} is not a readable manifest: {exc}") from exc
    if verify:
        for graph, entry in manifest["graphs"].items():
            file = root / entry["file"]
            if not file.is_file():
                raise EngineError(f"{path}: graph {graph!r} file {file} is missing")
            digest = sha256_file(file)
            if digest != entry["sha256"]:
                raise EngineError(
                    f"{file}: sha256 {digest} differs from the manifest's {entry['sha256']} (corrupt or replaced file)",
                    hint="re-run xvlm-edge export for this model directory",
                )
    return manifest


def session_options(threads: int | None):
    """Session options: every graph optimisation on; `threads` intra-op threads (None: ORT's default, all cores)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Decoding interleaves short ORT runs with torch ops (beam search, cache reorder): ORT's threads spinning
    # after each run starve torch's on the same cores (log_softmax of (3, 156) took 1.8 ms instead of 10 us).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        if threads < 1:
            raise BackendUnavailableError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class OnnxRuntime(Runtime):
    """The graphs of one export directory behind the `Runtime` interface."""

    name = "onnxruntime"

    def __init__(self, directory: str | Path, *, threads: int | None = None) -> None:
        self.ort = require_onnxruntime()
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.precision = self.manifest["precision"]
        self.device = torch.device("cpu")
        self.threads = threads
        self._options = session_options(threads)
        self._sessions: dict[str, Any] = {}
        self.info = {
            "backend": self.name,
            "device": "cpu",
            "precision": self.precision,
            "threads": "default" if threads is None else str(threads),
            "export": str(self.directory),
        }

    def has(self, graph: str) -> bool:
        return graph in self.manifest["graphs"]

    def _entry(self, graph: str) -> dict[str, Any]:
        entry = self.manifest["graphs"].get(graph)
        if entry is None:
            raise EngineError(f"graph {graph!r} is not in the export {self.directory} (has {sorted(self.manifest['graphs'])})")
        return entry

    def session(self, graph: str):
        """The graph's InferenceSession, created on first use."""
        sess = self._sessions.get(graph)
        if sess is None:
            path = self.directory / self._entry(graph)["file"]
            sess = self.ort.InferenceSession(str(path), self._options, providers=["CPUExecutionProvider"])
            self._sessions[graph] = sess
        return sess

    def output_names(self, graph: str) -> tuple[str, ...]:
        return tuple(self._entry(graph)["outputs"])

    def cache_shape(self, decoder: str) -> tuple[int, int, int]:
        shape = self.manifest.get("decoders", {}).get(decoder)
        if shape is None:
            raise EngineError(f"the export {self.directory} has no {decoder!r} decoder")
        layers, heads, dim = shape
        return layers, heads, dim

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
            outputs = sess.run(list(self._entry(graph)["outputs"]), feed)
        except (state.Fail, state.InvalidArgument, state.RuntimeException) as exc:  # shapes outside the export, ...
            raise EngineError(f"ONNX Runtime failed on graph {graph!r}: {exc}") from exc
        return tuple(torch.from_numpy(y.astype(np.float32) if y.dtype == np.float16 else y) for y in outputs)


__all__ = ["INSTALL_HINT", "MANIFEST", "OnnxRuntime", "export_dir", "read_manifest", "require_onnxruntime"]
