"""The export manifest: the one format that says what an export directory holds and where it came from.

An export (`MODEL_DIR/export/<target>-<precision>/`) is one file per graph of the catalogue plus
`manifest.json`: the format version, target and precision, each graph's file, sha256, tensor names and
dynamic axes, the sha256 of the weights it was exported from, the model config, the quantisation settings,
the accuracy gate's record and the CPU it was made on. The ONNX export, the fp16 export, the TensorRT engine
build, every runtime, the CLI and the C++ SDK read it through this module (the SDK through its JSON).
An ExecuTorch export also says what a reader without Python needs to run each `.pte`: the method, every
tensor's dtype and shape (axis names for the dynamic dimensions), each axis's exported [min, max], the
relations between axes and the memory-planned arena; and it holds `vocab.txt` and `config.json` (`assets`).

`ExportManifest.read` refuses what it cannot vouch for: another format version, a graph file that is
missing or whose sha256 differs, and (`check_weights`) an export of other weights than the checkpoint's.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from xvlm_edge.errors import EngineError, ForcedExportWarning, StaleExportError
from xvlm_edge.files import sha256_file

log = logging.getLogger(__name__)

#: Version of the manifest format; readers refuse any other (an export is cheap to redo, a misread is not).
FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
#: The checkpoint file an export is made from (and checked against): `checkpoint.WEIGHTS_FILE`.
WEIGHTS_FILE = "model.safetensors"


def export_dir(model_dir: str | Path, target: str, precision: str) -> Path:
    """Where the export of `model_dir` for `target` at `precision` lives."""
    return Path(model_dir) / "export" / f"{target}-{precision}"


def export_command(model_dir: str | Path, target: str, precision: str) -> str:
    """The command that (re-)makes that export, for messages."""
    return f"xvlm-edge export {model_dir} --target {target} --precision {precision}"


@dataclass
class GraphFile:
    """One graph's file in an export: its catalogue entry (names, axes) and how it was quantised."""

    file: str
    sha256: str
    bytes: int
    inputs: list[str]
    outputs: list[str]
    #: {tensor: {dim: axis name}}, dims as strings (JSON keys)
    dynamic_axes: dict[str, dict[str, str]]
    #: how the graph's weights and activations are stored ("float32", "dynamic int8 ...", ...)
    quantization: str = "float32"
    qdq_nodes: int = 0
    int8_matmuls: int = 0
    # -- what a reader without Python needs to run the file (ExecuTorch exports fill these) --------------
    #: the program's method that runs the graph ("" for ONNX, which has no methods)
    method: str = ""
    #: {tensor: dtype} of every input and output ("float32", "int64")
    dtypes: dict[str, str] = field(default_factory=dict)
    #: {tensor: shape}: an int per fixed dimension, the axis name of each dynamic one (a key of `bounds`)
    shapes: dict[str, list[int | str]] = field(default_factory=dict)
    #: {axis: [min, max]} that the file accepts, inclusive; a call outside them is refused
    bounds: dict[str, list[int]] = field(default_factory=dict)
    #: size relations between this graph's axes that a caller must keep ("total = past + new")
    relations: list[str] = field(default_factory=list)
    #: bytes of the memory-planned buffers (activations, inputs, outputs) sized for the bounds
    arena_bytes: int = 0


@dataclass
class ExportManifest:
    """Everything an export directory records. `accuracy` is the gate's record for INT8 (`passed`, `forced`,
    metrics, thresholds); `parity` the fp32 (and fp16) checks against torch, per graph."""

    target: str
    precision: str
    weights_sha256: str
    config: dict[str, Any]
    graphs: dict[str, GraphFile]
    #: {decoder: [layers, heads, head dim]} of each decoder's self-attention cache
    decoders: dict[str, list[int]] = field(default_factory=dict)
    opset: int = 0
    exporter: str = ""
    onnxruntime: str = ""
    machine: str = ""
    cpu: str = ""
    cpu_flags: list[str] = field(default_factory=list)
    parity: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    #: ExecuTorch exports: the executorch version, the bounds the programs were exported for, and the files
    #: beside the graphs that make the directory self-contained ({"vocab": {"file", "sha256"}, "config": ...})
    executorch: str = ""
    bounds: dict[str, Any] = field(default_factory=dict)
    assets: dict[str, dict[str, str]] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    @property
    def forced(self) -> bool:
        """Whether this export failed its accuracy gate and was written anyway (`--force`)."""
        return bool(self.accuracy.get("forced"))

    # -- files ---------------------------------------------------------------------------------------------

    def write(self, directory: str | Path) -> Path:
        """Write `manifest.json` into `directory` (an export being built inside `files.atomic_directory`)."""
        path = Path(directory) / MANIFEST_FILE
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def read(cls, directory: str | Path, *, verify: bool = True) -> ExportManifest:
        """The manifest of an export directory; with `verify`, every graph file checked against its sha256."""
        root = Path(directory)
        path = root / MANIFEST_FILE
        if not path.is_file():
            raise EngineError(f"no export at {root} ({MANIFEST_FILE} is missing)", hint=_redo(root))
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EngineError(f"{path} is not a readable manifest: {exc}", hint=_redo(root)) from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            found = data.get("format") if isinstance(data, dict) else None
            raise EngineError(
                f"{path} has manifest format {found!r}; this xvlm_edge reads format {FORMAT_VERSION}", hint=_redo(root)
            )
        try:
            graphs = {name: GraphFile(**entry) for name, entry in data.pop("graphs").items()}
            known = {f.name for f in fields(cls)}
            manifest = cls(graphs=graphs, **{k: v for k, v in data.items() if k in known})
        except (KeyError, TypeError, AttributeError) as exc:
            raise EngineError(f"{path} is malformed ({type(exc).__name__}: {exc})", hint=_redo(root)) from exc
        if verify:
            manifest.verify_files(root)
        return manifest

    def verify_files(self, directory: str | Path) -> None:
        """Every graph file (and asset) exists and has the sha256 recorded here."""
        root = Path(directory)
        files = [(f"graph {name!r}", entry.file, entry.sha256) for name, entry in self.graphs.items()]
        files += [(f"asset {name!r}", asset.get("file", ""), asset.get("sha256", "")) for name, asset in self.assets.items()]
        for what, name, sha256 in files:
            file = root / name
            if not name or not file.is_file():
                raise EngineError(f"{root}: {what} file {name or '(unnamed)'} is missing", hint=_redo(root))
            digest = sha256_file(file)
            if digest != sha256:
                raise EngineError(
                    f"{file}: sha256 {digest} differs from the manifest's {sha256} (corrupt or replaced file)",
                    hint=_redo(root),
                )

    def check_weights(self, model_dir: str | Path, directory: str | Path) -> None:
        """Refuse an export made from other weights than `model_dir`'s (stale after retraining or conversion);
        warn when it is a forced export that failed its accuracy gate."""
        weights = Path(model_dir) / WEIGHTS_FILE
        digest = sha256_file(weights) if weights.is_file() else None
        if digest != self.weights_sha256:
            raise StaleExportError(
                f"the export {directory} was made from other weights than {weights} "
                f"(sha256 {self.weights_sha256[:12]}…, the checkpoint's is {(digest or 'missing')[:12]}…)",
                hint="re-export: " + export_command(model_dir, self.target, self.precision),
            )
        if self.forced:
            failures = "; ".join(self.accuracy.get("failures", [])) or "see its manifest"
            warnings.warn(
                f"the export {directory} failed its accuracy gate and was written with --force ({failures}); "
                "its results may differ from the fp32 model's",
                ForcedExportWarning,
                stacklevel=3,
            )

    def graph(self, name: str) -> GraphFile:
        entry = self.graphs.get(name)
        if entry is None:
            raise EngineError(f"graph {name!r} is not in this export (has {sorted(self.graphs)})")
        return entry


def copy_reusable(directory: Path, into: Path, reusable: Callable[[ExportManifest], bool]) -> ExportManifest | None:
    """The manifest of the export in `directory`, its graph files copied into `into`, when it reads (every hash
    checked) and `reusable` accepts it; None otherwise. How an export starts from a checked fp32 one instead of
    exporting and checking the graphs again."""
    if not directory.is_dir():
        return None
    try:
        manifest = ExportManifest.read(directory)
    except EngineError as exc:
        log.info("not reusing %s: %s", directory, exc)
        return None
    if not reusable(manifest):
        return None
    for entry in manifest.graphs.values():
        shutil.copyfile(directory / entry.file, into / entry.file)
    log.info("starting from the %s %s export in %s", manifest.target, manifest.precision, directory)
    return manifest


def _redo(directory: Path) -> str:
    """A hint naming the export command for an export directory laid out by `export_dir`."""
    target, _, precision = directory.name.rpartition("-")
    if directory.parent.name == "export" and target:
        return "re-export: " + export_command(directory.parent.parent, target, precision)
    return "re-export the model directory: xvlm-edge export MODEL_DIR --target TARGET --precision PRECISION"


__all__ = ["FORMAT_VERSION", "MANIFEST_FILE", "ExportManifest", "GraphFile", "copy_reusable", "export_command", "export_dir"]
