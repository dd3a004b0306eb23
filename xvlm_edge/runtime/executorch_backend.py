"""The ExecuTorch backend: the `.pte` programs of `MODEL_DIR/export/executorch-<precision>/`, on CPU (XNNPACK).

The export (`xvlm_edge.export.executorch`) writes one program per graph of the catalogue, each exported for
explicit bounds (`Bounds`: the lamp's images, phrases, beams and tokens per call) that the manifest records
per graph as `shapes` (an axis name per dynamic dimension) and `bounds` ({axis: [min, max]}). This runtime
runs graphs by name with the same inputs and outputs as the torch backend, so every task and the accuracy
gate run on it through `api.Model` unchanged.

The tasks cut their calls to the catalogue's chunk limits (16 images, 128 text rows, 128 decoder rows), which
are larger than the lamp's bounds. So a call past a bound on an axis whose rows are independent is cut here
into calls that fit, which changes no result (`tasks/batching.py` says why): images (vision and cross K/V,
one per call: those programs take one), text rows (text; fusion, multimodal and NLVR2 with at most `images`
distinct images per piece, renumbered), and decoder rows. Decoder step/score programs read one image's (question's) cross K/V (`rows = images x r` is a
product of two sizes, which `torch.export` cannot bound), so a decoder call over B images is B calls, each
cut into pieces of at most `rows` beams or candidate answers. A call past any other bound (tokens, the
decoder's cached + new tokens, question tokens) cannot be cut: it is refused with an EngineError naming the
input, its dimension and the bound.

The torch backend is the reference (STYLE rule 8): `tests/test_export_executorch.py` compares every task.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xvlm_edge.errors import BackendUnavailableError, EngineError
from xvlm_edge.graphs import CROSS_KV, SCORE, STEP, GraphSpec, catalogue
from xvlm_edge.manifest import ExportManifest, GraphFile
from xvlm_edge.runtime.base import ExportedRuntime

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'xvlm-edge[sdk]' (executorch==1.5.1, the version the exports are made and checked with)"
#: The one method each program has: one `.pte` per graph, so a program's default method.
METHOD = "forward"
DTYPES = {"float32": torch.float32, "int64": torch.int64}
_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)"}
_RELATION = re.compile(r"^(\w+) = (\w+) \+ (\w+)$")


def require_executorch():
    """The `executorch.runtime` module, or BackendUnavailableError with the install hint."""
    try:
        with warnings.catch_warnings():
            # executorch 1.5.1 calls importlib.resources.read_text (a DeprecationWarning) while importing
            warnings.simplefilter("ignore", DeprecationWarning)
            import executorch.runtime as runtime
    except ImportError as exc:
        raise BackendUnavailableError("the executorch package is not installed", hint=INSTALL_HINT) from exc
    return runtime


def set_threads(threads: int) -> None:
    """Size ExecuTorch's CPU threadpool (XNNPACK's threads). It is one pool per process, shared by every
    program loaded, so the last runtime created with `threads` decides it."""
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool

    if _threadpool_get_thread_count() != threads:
        _unsafe_reset_threadpool(threads)


class _NodeArg:
    """What `export.onnx.run_both` reads of an ONNX Runtime input: its name and type string."""

    def __init__(self, name: str, type: str) -> None:
        self.name, self.type = name, type


class PteMethod:
    """One `.pte` program's method, run on torch tensors (inputs cast to the recorded dtypes, made contiguous).

    It also has the slice of ONNX Runtime's session interface that `export.onnx.check_parity` drives
    (`get_inputs`, `run` over NumPy feeds), so an ExecuTorch export is checked against torch by the same code
    and bound as the ONNX export.
    """

    def __init__(self, path: str | Path, entry: GraphFile) -> None:
        et = require_executorch()
        self.path, self.entry = Path(path), entry
        try:
            self.program = et.Runtime.get().load_program(self.path)
            self.method = self.program.load_method(entry.method or METHOD)
        except (RuntimeError, ValueError) as exc:
            raise EngineError(f"ExecuTorch could not load {self.path} (method {entry.method or METHOD!r}): {exc}") from exc
        self.dtypes = [DTYPES[entry.dtypes[name]] for name in entry.inputs]

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feed = [_prepared(x, dtype) for x, dtype in zip(inputs, self.dtypes)]
        try:
            outputs = self.method.execute(feed)
        except RuntimeError as exc:
            raise EngineError(f"ExecuTorch failed running {self.path.name}: {exc}") from exc
        return tuple(outputs)  # fresh tensors: ExecuTorch copies them out of its planned memory

    # -- the ONNX Runtime session slice `export.onnx.check_parity` uses ---------------------------------------

    def get_inputs(self) -> list[_NodeArg]:
        return [_NodeArg(name, _ORT_TYPES[self.entry.dtypes[name]]) for name in self.entry.inputs]

    def run(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = dict(zip(self.entry.outputs, self(*(torch.from_numpy(feed[name]) for name in self.entry.inputs))))
        return [outputs[name].numpy() for name in output_names]


def _prepared(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous CPU tensor of `dtype`. An empty tensor (an empty decoder cache) is made afresh: a slice of
    one keeps strides that ExecuTorch's stride check rejects for size-0 dimensions."""
    x = x.detach().to("cpu", dtype)
    return torch.empty(x.shape, dtype=dtype) if x.numel() == 0 else x.contiguous()


class ExecuTorchRuntime(ExportedRuntime):
    """The programs of one ExecuTorch export directory behind the `Runtime` interface (CPU, XNNPACK)."""

    name = "executorch"

    def __init__(self, directory: str | Path, *, manifest: ExportManifest | None = None, threads: int | None = None) -> None:
        require_executorch()
        self.directory = Path(directory)
        self.manifest = ExportManifest.read(self.directory) if manifest is None else manifest
        self.precision = self.manifest.precision
        self.device = torch.device("cpu")
        self.specs: dict[str, GraphSpec] = catalogue(self.manifest.config["heads"])
        self._methods: dict[str, PteMethod] = {}
        if threads is not None:
            set_threads(threads)
        self.info = {
            "backend": self.name,
            "device": "cpu",
            "precision": self.precision,
            "threads": "executorch default" if threads is None else str(threads),
            "export": str(self.directory),
            "bounds": ", ".join(f"{k} {v}" for k, v in self.manifest.bounds.get("limits", {}).items()),
        }

    def method(self, graph: str) -> PteMethod:
        """The graph's program, loaded on first use."""
        method = self._methods.get(graph)
        if method is None:
            entry = self.manifest.graph(graph)
            method = self._methods[graph] = PteMethod(self.directory / entry.file, entry)
        return method

    # -- running, cut to the bounds ---------------------------------------------------------------------------

    def run(self, graph: str, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        entry = self.manifest.graph(graph)
        if len(inputs) != len(entry.inputs):
            raise EngineError(f"graph {graph!r} takes {len(entry.inputs)} inputs {entry.inputs}, got {len(inputs)}")
        spec = self.specs[graph]
        tensors = [x.detach().cpu() for x in inputs]
        if spec.kind in (STEP, SCORE):
            return self._run_grouped(graph, entry, spec, tensors)
        index_inputs = [n for n in ("image_index", "left_index", "right_index") if n in entry.inputs]
        if index_inputs:
            return self._run_indexed(graph, entry, spec, tensors, index_inputs)
        axis = "images" if spec.kind == CROSS_KV or "pixels" in entry.inputs else "rows"
        return self._run_split(graph, entry, spec, tensors, axis)

    def _limit(self, entry: GraphFile, axis: str) -> int:
        return entry.bounds[axis][1] if axis in entry.bounds else 1

    def _run_split(self, graph: str, entry: GraphFile, spec: GraphSpec, tensors: list[torch.Tensor], axis: str) -> tuple[torch.Tensor, ...]:
        """Vision and cross K/V (images), text (rows): pieces of at most the bound along `axis`."""
        size = _axis_size(spec, entry, tensors, axis)
        step = self._limit(entry, axis)
        if size <= step:
            return self._execute(graph, entry, tensors)
        parts = [self._execute(graph, entry, _narrow(spec, entry.inputs, tensors, axis, s, min(step, size - s))) for s in range(0, size, step)]
        return _concat(spec, entry.outputs, parts, axis)

    def _run_indexed(
        self, graph: str, entry: GraphFile, spec: GraphSpec, tensors: list[torch.Tensor], index_inputs: list[str]
    ) -> tuple[torch.Tensor, ...]:
        """Fusion, multimodal, NLVR2: rows read images through indices; pieces of at most `rows` rows reading at
        most `images` distinct images, the images gathered and the indices renumbered."""
        from xvlm_edge.tasks.batching import gather_images, row_chunks

        positions = [entry.inputs.index(n) for n in index_inputs]
        embeds = entry.inputs.index("image_embeds")
        rows, images = tensors[positions[0]].shape[0], tensors[embeds].shape[0]
        if rows <= self._limit(entry, "rows") and images <= self._limit(entry, "images"):
            return self._execute(graph, entry, tensors)
        index = torch.stack([tensors[p].long() for p in positions], dim=1)  # (K, 1 or 2)
        parts = []
        for rows_slice in row_chunks(index, self._limit(entry, "rows"), self._limit(entry, "images")):
            piece = _narrow(spec, entry.inputs, tensors, "rows", rows_slice.start, rows_slice.stop - rows_slice.start)
            gathered = gather_images(tensors[embeds], *(piece[p] for p in positions))
            piece[embeds] = gathered[0]
            for p, renumbered in zip(positions, gathered[1:]):
                piece[p] = renumbered
            parts.append(self._execute(graph, entry, piece))
        return _concat(spec, entry.outputs, parts, "rows")

    def _run_grouped(self, graph: str, entry: GraphFile, spec: GraphSpec, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Decoder steps: rows grouped by image (`DecoderState`), B images' cross K/V. The program reads one
        image's: one call per image, cut into pieces of at most `rows` rows."""
        names = entry.inputs
        cross_k, cross_v = names.index("cross_k"), names.index("cross_v")
        images = tensors[cross_k].shape[1]
        rows = _axis_size(spec, entry, tensors, "rows")
        if images < 1 or rows % images:
            raise EngineError(f"graph {graph!r}: {rows} decoder rows cannot be grouped over {images} images (rows b*r .. b*r + r - 1 read image b)")
        per_image, step = rows // images, self._limit(entry, "rows")
        if images == 1 and rows <= step:
            return self._execute(graph, entry, tensors)
        parts = []
        for b in range(images):
            for s in range(0, per_image, step):
                piece = _narrow(spec, names, tensors, "rows", b * per_image + s, min(step, per_image - s))
                piece[cross_k], piece[cross_v] = tensors[cross_k][:, b : b + 1], tensors[cross_v][:, b : b + 1]
                parts.append(self._execute(graph, entry, piece))
        return _concat(spec, entry.outputs, parts, "rows")

    def _execute(self, graph: str, entry: GraphFile, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        check_shapes(graph, entry, tensors, self.manifest.bounds.get("limits", {}))
        return self.method(graph)(*tensors)


def check_shapes(graph: str, entry: GraphFile, tensors: list[torch.Tensor], limits: dict[str, Any] | None = None) -> dict[str, int]:
    """Refuse a call the program was not exported for: a fixed dimension of another size, a dynamic one outside
    its [min, max], sizes that break a relation (`total = past + new`). Returns {axis: size}."""
    sizes: dict[str, int] = {}
    hint = "re-export with larger bounds: export_model(MODEL_DIR, target='executorch', bounds=Bounds(...))"
    if limits:
        hint += f"; this export's bounds: {', '.join(f'{k} {v}' for k, v in limits.items())}"
    for name, x in zip(entry.inputs, tensors):
        shape = entry.shapes[name]
        if x.dim() != len(shape):
            raise EngineError(f"graph {graph!r}: input {name!r} has shape {tuple(x.shape)}; the export takes {len(shape)} dimensions {shape}")
        for dim, (want, got) in enumerate(zip(shape, x.shape)):
            if isinstance(want, int):
                if got != want:
                    raise EngineError(f"graph {graph!r}: input {name!r} dimension {dim} is {got}; the export fixed it at {want} (shape {shape})")
                continue
            low, high = entry.bounds[want]
            if not low <= got <= high:
                raise EngineError(
                    f"graph {graph!r}: input {name!r} dimension {dim} ({want}) is {got}, outside the export's bound {want} in [{low}, {high}]",
                    hint=hint,
                )
            if sizes.setdefault(want, got) != got:
                raise EngineError(f"graph {graph!r}: input {name!r} dimension {dim} ({want}) is {got}, but another input has {want} = {sizes[want]}")
    for relation in entry.relations:
        match = _RELATION.match(relation)
        if match and all(axis in sizes for axis in match.groups()):
            total, a, b = (sizes[axis] for axis in match.groups())
            if total != a + b:
                raise EngineError(f"graph {graph!r}: {relation} does not hold ({match[1]} {total}, {match[2]} {a}, {match[3]} {b})")
    return sizes


def _axis_size(spec: GraphSpec, entry: GraphFile, tensors: list[torch.Tensor], axis: str) -> int:
    for name, x in zip(entry.inputs, tensors):
        for dim, found in spec.axes.get(name, {}).items():
            if found == axis and dim < x.dim():
                return x.shape[dim]
    raise EngineError(f"graph {spec.name!r} has no input with a {axis!r} axis")


def _narrow(spec: GraphSpec, names: list[str], tensors: list[torch.Tensor], axis: str, start: int, length: int) -> list[torch.Tensor]:
    """`tensors` with every input that has `axis` (by the catalogue) cut to [start, start + length)."""
    out = []
    for name, x in zip(names, tensors):
        dims = [d for d, found in spec.axes.get(name, {}).items() if found == axis]
        out.append(x.narrow(dims[0], start, length) if dims else x)
    return out


def _concat(spec: GraphSpec, names: list[str], parts: list[tuple[torch.Tensor, ...]], axis: str) -> tuple[torch.Tensor, ...]:
    """The outputs of the pieces joined along `axis` (by the catalogue)."""
    out = []
    for i, name in enumerate(names):
        dims = [d for d, found in spec.axes.get(name, {}).items() if found == axis]
        if not dims:
            raise EngineError(f"graph {spec.name!r}: output {name!r} has no {axis!r} axis to join the pieces along")
        out.append(torch.cat([part[i] for part in parts], dim=dims[0]))
    return tuple(out)


__all__ = ["INSTALL_HINT", "METHOD", "ExecuTorchRuntime", "PteMethod", "check_shapes", "require_executorch", "set_threads"]
