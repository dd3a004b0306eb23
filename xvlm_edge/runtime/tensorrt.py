"""The TensorRT backend: engines from the export step, run zero-copy on torch CUDA tensors through `_C`.

An engine directory holds, per graph, `<graph>.engine` and its manifest `<graph>.json` (schema in
csrc/tensorrt/README.md): I/O names, dtypes and shapes in the graph's INPUTS/OUTPUTS order, the optimisation
profiles, the TensorRT version that built it and the engine's sha256. The manifest is parsed and validated in
C++ (`_C.EngineManifest`), the same code the lamp firmware runs; this module adds only what needs Python:
the sha256 check, torch tensors and streams.

Zero-copy: inputs are bound by `data_ptr()`, outputs are allocated by torch with the shapes TensorRT infers
and written in place, on the caller's current CUDA stream. Nothing is copied unless the caller hands in a
tensor of the wrong device or dtype, which `TensorRTEngine.run` refuses and only `TensorRTRuntime.run` (the
`Runtime` contract, whose callers may hand in CPU tensors) converts.

Without TensorRT compiled into `_C` every entry point here raises `BackendUnavailableError` with the install
hint; `read_engine_dir` still validates a directory (it needs no TensorRT).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from xvlm_edge import _C
from xvlm_edge.errors import BackendUnavailableError, EngineError
from xvlm_edge.files import sha256_file
from xvlm_edge.runtime.base import Runtime

INSTALL_HINT = (
    "rebuild xvlm_edge against TensorRT 10 or 11 on a CUDA machine: "
    "pip install . -Ccmake.define.CMAKE_PREFIX_PATH=/usr/src/tensorrt (or set TensorRT_ROOT); "
    "see csrc/tensorrt/README.md. On CPU, use backend='onnxruntime' or 'torch'."
)

#: torch dtype <-> the dtype names of engine manifests (csrc/include/xvlm_edge/engine.hpp).
TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


def require_tensorrt() -> None:
    """Raise BackendUnavailableError unless `_C` was compiled with the TensorRT runner."""
    if not _C.has_tensorrt():
        raise BackendUnavailableError(
            "TensorRT runtime not compiled into xvlm_edge._C (CMake found no TensorRT when it was built)",
            hint=INSTALL_HINT,
        )


def read_engine_dir(path: str | Path) -> dict[str, _C.EngineManifest]:
    """{graph: manifest} of every `*.json` manifest in `path`, each checked against its engine's sha256.

    Needs no TensorRT, so a directory can be validated anywhere (the export step, CI, a CPU box).
    """
    root = Path(path)
    if not root.is_dir():
        raise EngineError(f"engine directory {root} does not exist", hint=f"build the engines on the device: xvlm-edge engines {root.parent}")
    manifests: dict[str, _C.EngineManifest] = {}
    for file in sorted(root.glob("*.json")):
        manifest = _C.EngineManifest.load(str(file))
        if manifest.graph in manifests:
            raise EngineError(f"{file}: a second engine for graph {manifest.graph!r} in {root}")
        engine = root / manifest.engine
        if not engine.is_file():
            raise EngineError(f"{file}: engine file {engine} is missing")
        digest = sha256_file(engine)
        if digest != manifest.sha256:
            raise EngineError(
                f"{engine}: sha256 {digest} differs from the manifest's {manifest.sha256} (corrupt or replaced engine)",
                hint=f"rebuild the engines: xvlm-edge engines {root.parent}",
            )
        manifests[manifest.graph] = manifest
    if not manifests:
        raise EngineError(
            f"no engine manifests (*.json) in {root}", hint=f"build the engines on the device: xvlm-edge engines {root.parent}"
        )
    return manifests


class TensorRTEngine:
    """One engine: its manifest and a `_C.EngineRunner` (one execution context; one engine per thread)."""

    def __init__(self, manifest: _C.EngineManifest, engine_path: str | Path) -> None:
        require_tensorrt()
        self.manifest = manifest
        self._runner = _C.EngineRunner(manifest, str(engine_path))
        self.input_names = tuple(t.name for t in manifest.spec.inputs)
        self.output_names = tuple(t.name for t in manifest.spec.outputs)
        self._output_dtypes = {t.name: TORCH_DTYPES[t.dtype] for t in manifest.spec.outputs}

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run on CUDA tensors {name: tensor} on the current stream; returns new CUDA tensors {name: tensor}.

        Inputs must be contiguous CUDA tensors of the manifest's dtypes on one device; they are bound by
        pointer, not copied. The call returns once the work is enqueued, as any CUDA op does.
        """
        devices = {t.device for t in inputs.values()}
        if len(devices) != 1 or next(iter(devices)).type != "cuda":
            raise EngineError(
                f"engine {self.manifest.graph!r} needs its inputs on one CUDA device, got {sorted(map(str, devices))}"
            )
        (device,) = devices
        for name, t in inputs.items():
            if not t.is_contiguous():
                raise EngineError(f"input {name!r} is not contiguous; pass tensor.contiguous()")
            if t.dtype not in _DTYPE_NAMES:
                raise EngineError(f"input {name!r} has dtype {t.dtype}, which no engine tensor uses")
        stream = torch.cuda.current_stream(device).cuda_stream
        out_shapes = self._runner.prepare({n: list(t.shape) for n, t in inputs.items()}, stream)
        outputs = {
            n: torch.empty(out_shapes[n], dtype=self._output_dtypes[n], device=device) for n in self.output_names
        }
        self._runner.run(
            [(n, _DTYPE_NAMES[t.dtype], list(t.shape), t.data_ptr()) for n, t in inputs.items()],
            [(n, _DTYPE_NAMES[t.dtype], list(t.shape), t.data_ptr()) for n, t in outputs.items()],
            stream,
        )
        return outputs


class TensorRTRuntime(Runtime):
    """The graphs of an engine directory behind the `Runtime` interface (any tensors in, CUDA tensors out)."""

    name = "tensorrt"

    def __init__(self, engine_dir: str | Path, *, device: str | torch.device | None = None) -> None:
        require_tensorrt()
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                "the TensorRT backend needs a CUDA device; this PyTorch sees none", hint=INSTALL_HINT
            )
        self.device = torch.device(device if device is not None else "cuda")
        if self.device.type != "cuda":
            raise BackendUnavailableError(f"the TensorRT backend runs on CUDA, not {self.device.type!r}")
        root = Path(engine_dir)
        manifests = read_engine_dir(root)
        with torch.cuda.device(self.device):
            self.engines = {g: TensorRTEngine(m, root / m.engine) for g, m in manifests.items()}
        precisions = sorted({m.precision for m in manifests.values()})
        self.precision = precisions[0] if len(precisions) == 1 else "mixed"
        self.info = {
            "backend": self.name,
            "device": str(self.device),
            "precision": self.precision,
            "engines": str(root),
        }

    def has(self, graph: str) -> bool:
        return graph in self.engines

    def _engine(self, graph: str) -> TensorRTEngine:
        engine = self.engines.get(graph)
        if engine is None:
            raise EngineError(f"graph {graph!r} has no engine here (has {sorted(self.engines)})")
        return engine

    def output_names(self, graph: str) -> tuple[str, ...]:
        return self._engine(graph).output_names

    def cache_shape(self, decoder: str) -> tuple[int, int, int]:
        """(layers, heads, head dim) from the step engine's cache input (L, rows, heads, T, d)."""
        (spec,) = [t for t in self._engine(f"{decoder}_step").manifest.spec.inputs if t.name == "cache_k"]
        layers, _, heads, _, dim = spec.shape
        return layers, heads, dim

    @torch.no_grad()
    def run(self, graph: str, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        engine = self._engine(graph)
        if len(inputs) != len(engine.input_names):
            raise EngineError(
                f"graph {graph!r} takes {len(engine.input_names)} inputs {engine.input_names}, got {len(inputs)}"
            )
        specs = {t.name: t for t in engine.manifest.spec.inputs}
        feed = {}
        for n, x in zip(engine.input_names, inputs):
            x = x.to(self.device, TORCH_DTYPES[specs[n].dtype]).contiguous()
            # TensorRT needs 256-byte aligned buffers; a view at an offset gets its own (the one copy here).
            feed[n] = x.clone() if x.data_ptr() % 256 else x
        with torch.cuda.device(self.device):
            out = engine.run(feed)
        return tuple(out[n] for n in engine.output_names)  # on the device: a decoder's cache stays there


__all__ = ["INSTALL_HINT", "TORCH_DTYPES", "TensorRTEngine", "TensorRTRuntime", "read_engine_dir", "require_tensorrt"]
