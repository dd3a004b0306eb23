"""TensorRT engines from a TensorRT-target ONNX export: optimisation profiles from user limits, then one engine
and one manifest per graph, the engine directory `runtime/tensorrt.py` runs (`xvlm-edge engines`).

Profiles. The export manifest names every dynamic axis of every graph input (the graph catalogue,
`graphs.catalogue`): "images", "rows", "tokens", "past", "new", "total", "keys", "cross_tokens". `axis_ranges`
gives each name ONE (min, opt, max) per graph, so every input that shares an axis gets the same range:
TensorRT refuses a profile whose opt shapes break the network's shape constraints, and warns about min/max
that do. The relations the graphs impose (`graphs.AXIS_RELATIONS`) hold at each of min, opt and max:
- `total = past + new` (the self-attention mask spans the cache plus the new tokens), so total's range is the
  sum of the two, and its max (2 x max_cache - 1) is larger than any call makes;
- decoder rows come grouped by image (`graphs.DecoderStepGraph`): rows = images x r, so max_decoder_rows is a
  multiple of max_images and opt rows = opt_images x opt_beams;
- a decoder's cross keys ("keys", "cross_tokens", and its cross_kv graph's "tokens") are the image's 1 + N
  tokens for captioning, pinned to that value, and the question's tokens for VQA.
Static dims come from the ONNX files, read by a small protobuf walk that skips the weights (`read_onnx_io`):
the device that builds engines needs neither the `onnx` package nor the memory to parse a whole model.

Building needs `_C` compiled against TensorRT; without it `build_engines` raises BackendUnavailableError
with the install hint before touching anything.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import BinaryIO

from xvlm_edge import _C
from xvlm_edge.config import ModelConfig
from xvlm_edge.errors import EngineError, InputError
from xvlm_edge.files import atomic_directory, sha256_file
from xvlm_edge.graphs import (
    DECODER_ROWS,
    ENCODER,
    IMAGE_CHUNK,
    MAX_DECODER_TOKENS,
    MAX_TOKENS,
    SCORE,
    TEXT_CHUNK,
    GraphSpec,
    catalogue,
)
from xvlm_edge.manifest import ExportManifest
from xvlm_edge.runtime.tensorrt import read_engine_dir, require_tensorrt

log = logging.getLogger(__name__)

#: Where `build_engines` puts the engines when no directory is given: inside the export they come from, so a
#: re-export (which replaces the export directory) never leaves engines of the old ONNX behind.
DEFAULT_ENGINE_SUBDIR = "engines"


@dataclass(frozen=True)
class EngineLimits:
    """The largest (and the typical) call an engine must run; everything beyond max is refused at run time.

    Defaults are the graph catalogue's chunk limits (`graphs.IMAGE_CHUNK` ...), which the tasks chunk to: 128
    decoder rows hold the official VQA ranking (one question x k_test 128 answers) as well as 16 images x 8
    beams of captioning. The opt values are what TensorRT tunes for: one image, three beams.
    """

    max_images: int = IMAGE_CHUNK  # images per call (VQA's answer decoder: questions per call)
    max_text_rows: int = TEXT_CHUNK  # texts, phrases or boxes per call of text / fusion / multimodal / nlvr
    max_tokens: int = MAX_TOKENS  # tokens per text (and per VQA question, which the answer decoder reads)
    max_decoder_rows: int = DECODER_ROWS  # images x beams (captioning), questions x candidate answers (VQA)
    max_cache: int = MAX_DECODER_TOKENS  # past + new tokens of one decoder row
    opt_images: int = 1
    opt_text_rows: int = 1
    opt_beams: int = 3
    opt_tokens: int = 16  # a typical text, and a typical decoder row (past + new)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"engine limit {f.name} must be a positive integer, got {value!r}")
        pairs = (
            ("opt_images", "max_images"),
            ("opt_text_rows", "max_text_rows"),
            ("opt_tokens", "max_tokens"),
            ("opt_tokens", "max_cache"),
            ("max_images", "max_decoder_rows"),
        )
        for small, large in pairs:
            if getattr(self, small) > getattr(self, large):
                raise InputError(f"engine limit {small}={getattr(self, small)} exceeds {large}={getattr(self, large)}")
        if self.opt_images * self.opt_beams > self.max_decoder_rows:
            raise InputError(
                f"opt_images x opt_beams = {self.opt_images * self.opt_beams} exceeds max_decoder_rows={self.max_decoder_rows}"
            )
        if self.max_decoder_rows % self.max_images:
            raise InputError(
                f"max_decoder_rows={self.max_decoder_rows} must be a multiple of max_images={self.max_images}: "
                "decoder rows come grouped by image, the same number per image"
            )
        if self.opt_tokens < 2:
            raise InputError("opt_tokens must be at least 2 (a decoder row at opt holds cached and new tokens)")


@dataclass(frozen=True)
class AxisRange:
    """Inclusive range of one named axis, and the size TensorRT tunes for."""

    min: int
    opt: int
    max: int

    def __add__(self, other: AxisRange) -> AxisRange:
        return AxisRange(self.min + other.min, self.opt + other.opt, self.max + other.max)


def axis_ranges(spec: GraphSpec, limits: EngineLimits, image_tokens: int) -> dict[str, AxisRange]:
    """{axis name: range} for one graph; `image_tokens` is 1 + N, what a caption decoder cross-attends to."""
    images = AxisRange(1, limits.opt_images, limits.max_images)
    tokens = AxisRange(1, limits.opt_tokens, limits.max_tokens)
    if spec.kind == ENCODER:
        return {"images": images, "rows": AxisRange(1, limits.opt_text_rows, limits.max_text_rows), "tokens": tokens}
    keys = AxisRange(image_tokens, image_tokens, image_tokens) if spec.decoder == "caption" else tokens
    # opt: a step feeds one new token after a cached prefix; a score call feeds the whole row after the one
    # cached [CLS] of VQA ranking (`tasks/vqa.py::rank_answers`). Both hold opt_tokens tokens.
    past_opt, new_opt = (limits.opt_tokens - 1, 1) if spec.kind != SCORE else (1, limits.opt_tokens - 1)
    past = AxisRange(0, past_opt, limits.max_cache - 1)  # 0: the first step has an empty cache
    new = AxisRange(1, new_opt, limits.max_cache)  # max: the prompt, or a whole row to score
    return {
        "images": images,
        "rows": AxisRange(1, limits.opt_images * limits.opt_beams, limits.max_decoder_rows),
        "tokens": keys,  # cross_kv's states (images, S, C): the keys of the step graphs
        "keys": keys,
        "cross_tokens": keys,
        "past": past,
        "new": new,
        "total": past + new,
    }


def engine_profiles(
    manifest: ExportManifest, limits: EngineLimits, input_shapes: Mapping[str, Mapping[str, Sequence[int]]]
) -> dict[str, list[_C.Profile]]:
    """{graph: [profile]} for every graph of a TensorRT export manifest (`xvlm_edge.manifest`).

    `input_shapes` is {graph: {input: shape}} of the ONNX files, -1 where dynamic (`onnx_input_shapes`); the
    names of the dynamic axes come from the manifest and must mark exactly those dims. Pure: no file, no
    TensorRT. One profile per graph; `_C.select_profile` refuses a call outside it, naming input and dim.
    """
    config = ModelConfig.from_dict(manifest.config)
    specs = catalogue(config.heads)
    positions = config.text.max_position_embeddings
    for name in ("max_tokens", "max_cache"):
        if getattr(limits, name) > positions:
            raise InputError(f"engine limit {name}={getattr(limits, name)} exceeds the model's {positions} text positions")
    image_tokens = 1 + config.vision.grid**2
    profiles: dict[str, list[_C.Profile]] = {}
    for graph, entry in manifest.graphs.items():
        if graph not in specs:
            raise EngineError(f"graph {graph!r} is not in the catalogue of a model with heads {list(config.heads)}", hint=_REEXPORT)
        axes = axis_ranges(specs[graph], limits, image_tokens)
        shapes = input_shapes.get(graph)
        if shapes is None:
            raise EngineError(f"no input shapes for graph {graph!r}")
        ranges = {}
        for name in entry.inputs:
            if name not in shapes:
                raise EngineError(f"graph {graph!r}: no shape for input {name!r} (the ONNX has {sorted(shapes)})")
            named = {int(dim): axis for dim, axis in entry.dynamic_axes.get(name, {}).items()}
            bounds = [_dim_range(graph, name, i, size, named.get(i), axes) for i, size in enumerate(shapes[name])]
            if any(size < 0 for size in shapes[name]):
                ranges[name] = ([b.min for b in bounds], [b.opt for b in bounds], [b.max for b in bounds])
        profiles[graph] = [_C.Profile(ranges)]
    return profiles


def _dim_range(graph: str, name: str, dim: int, size: int, axis: str | None, axes: Mapping[str, AxisRange]) -> AxisRange:
    where = f"graph {graph!r} input {name!r} dim {dim}"
    if size >= 0 and axis is None:
        return AxisRange(size, size, size)
    if size >= 0:
        raise EngineError(f"{where} is static ({size}) in the ONNX but the manifest names it axis {axis!r}", hint=_REEXPORT)
    if axis is None:
        raise EngineError(f"{where} is dynamic in the ONNX but the manifest names no axis for it", hint=_REEXPORT)
    if axis not in axes:
        raise EngineError(f"{where} is axis {axis!r}, which has no engine limit (known: {sorted(axes)})")
    return axes[axis]


_REEXPORT = "the manifest does not match its ONNX files: re-run xvlm-edge export MODEL_DIR --target tensorrt"


# -- ONNX graph inputs and outputs, without the weights ----------------------------------------------------
# The few onnx.proto field numbers needed: ModelProto.graph 7; GraphProto.input 11, output 12; ValueInfoProto
# name 1, type 2; TypeProto.tensor_type 1; TypeProto.Tensor elem_type 1, shape 2; TensorShapeProto.dim 1;
# Dimension dim_value 1 (dim_param 2 means dynamic).
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 16: "bfloat16"}


def read_onnx_io(path: str | Path) -> tuple[list[_C.TensorSpec], list[_C.TensorSpec]]:
    """(inputs, outputs) of an ONNX model as TensorSpecs, -1 for every dim without a fixed size.

    Walks the protobuf and seeks past everything but the graph's input and output entries, so a model of
    hundreds of MB costs a few KB of reads (onnx.load would parse every weight).
    """
    path = Path(path)
    inputs: list[_C.TensorSpec] = []
    outputs: list[_C.TensorSpec] = []
    try:
        with path.open("rb") as f:
            end = f.seek(0, io.SEEK_END)
            f.seek(0)
            for number, wire, size in _fields(f, end):
                if number == 7 and wire == 2:  # ModelProto.graph
                    for field, kind, length in _fields(f, f.tell() + size):
                        if field in (11, 12) and kind == 2:
                            (inputs if field == 11 else outputs).append(_tensor_spec(f.read(length)))
                    break
    except (EOFError, KeyError, IndexError, UnicodeDecodeError) as exc:
        raise EngineError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if not outputs:
        raise EngineError(f"{path} is not an ONNX model with a graph (no graph outputs found)")
    return inputs, outputs


def onnx_input_shapes(export_dir: str | Path, manifest: ExportManifest) -> dict[str, dict[str, list[int]]]:
    """{graph: {input: shape}} of every ONNX file the manifest lists (-1 where dynamic)."""
    root = Path(export_dir)
    shapes = {}
    for graph, entry in manifest.graphs.items():
        inputs, _ = read_onnx_io(root / entry.file)
        shapes[graph] = {t.name: list(t.shape) for t in inputs}
    return shapes


def _varint(stream: BinaryIO) -> int:
    value, shift = 0, 0
    while True:
        byte = stream.read(1)
        if not byte:
            raise EOFError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7


def _fields(stream: BinaryIO, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, wire type, value) of each field of the message ending at byte `end` of `stream`.

    Varints yield their value; length-delimited fields their size, with the stream at their first byte: the
    consumer may read them, and the walk resumes after them either way. Fixed-width fields are skipped.
    """
    while stream.tell() < end:
        key = _varint(stream)
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, _varint(stream)
        elif wire == 2:
            size = _varint(stream)
            start = stream.tell()
            if start + size > end:
                raise EOFError(f"field {number} runs past the end of its message")
            yield number, wire, size
            stream.seek(start + size)
        elif wire in (1, 5):
            stream.seek(8 if wire == 1 else 4, io.SEEK_CUR)
        else:
            raise EOFError(f"wire type {wire} is not protobuf")
    if stream.tell() != end:
        raise EOFError("a field runs past the end of its message")


def _message(data: bytes) -> dict[int, list[int | bytes]]:
    """A small protobuf message as {field number: [values]}: varints as ints, length-delimited as bytes."""
    stream = io.BytesIO(data)
    out: dict[int, list[int | bytes]] = {}
    for number, wire, value in _fields(stream, len(data)):
        out.setdefault(number, []).append(stream.read(value) if wire == 2 else value)
    return out


def _tensor_spec(value_info: bytes) -> _C.TensorSpec:
    info = _message(value_info)
    name = info[1][0].decode()
    tensor = _message(_message(info[2][0])[1][0])  # TypeProto.tensor_type
    dtype = _ONNX_DTYPES.get(tensor[1][0])
    if dtype is None:
        raise EngineError(f"ONNX tensor {name!r} has element type {tensor[1][0]}, which no engine tensor uses")
    dims = [_message(d) for d in _message(tensor[2][0]).get(1, [])] if 2 in tensor else []
    return _C.TensorSpec(name, dtype, [d[1][0] if 1 in d else -1 for d in dims])


# -- building ---------------------------------------------------------------------------------------------


def build_engines(
    export_dir: str | Path,
    engine_dir: str | Path | None = None,
    *,
    limits: EngineLimits | None = None,
    timing_cache: str | Path | None = None,
) -> dict[str, _C.EngineManifest]:
    """Build one TensorRT engine per graph of a TensorRT-target export; returns {graph: manifest} as read back.

    `engine_dir` defaults to `<export_dir>/engines`. The directory is built beside its final place and renamed
    over it only once every engine is built, so a failed build leaves the previous engines (or nothing).
    `timing_cache`: a file kept across builds on this GPU and TensorRT (read if it exists, then updated);
    without one the graphs of this build still share a temporary cache (the step and score decoders have
    the same layers). Raises BackendUnavailableError first when `_C` has no TensorRT.
    """
    require_tensorrt()
    limits = limits or EngineLimits()
    export_dir = Path(export_dir)
    final = export_dir / DEFAULT_ENGINE_SUBDIR if engine_dir is None else Path(engine_dir)
    manifest = ExportManifest.read(export_dir)  # checks every ONNX file's sha256
    if manifest.target != "tensorrt":
        raise EngineError(
            f"{export_dir} is an export for {manifest.target!r}; TensorRT engines are built from a "
            "--target tensorrt export (its ONNX avoids ops TensorRT lacks and carries the precision in its types)",
            hint=f"run: xvlm-edge export MODEL_DIR --target tensorrt --precision {manifest.precision}",
        )
    _check_replaceable(final, export_dir)
    profiles = engine_profiles(manifest, limits, onnx_input_shapes(export_dir, manifest))
    version = _C.tensorrt_version()
    graphs = list(manifest.graphs)
    log.info("building %d TensorRT %s engines from %s (TensorRT %s)", len(graphs), manifest.precision, export_dir, version)
    with atomic_directory(final) as staging:
        cache = Path(timing_cache) if timing_cache is not None else staging / "timing.cache"
        cache.parent.mkdir(parents=True, exist_ok=True)
        for i, graph in enumerate(graphs, 1):
            started = time.perf_counter()
            engine = staging / f"{graph}.engine"
            onnx_path = export_dir / manifest.graphs[graph].file
            spec = _C.EngineBuilder(str(onnx_path), str(engine), profiles[graph], str(cache)).build()
            engine_manifest = _C.EngineManifest(graph, engine.name, sha256_file(engine), version, manifest.precision, spec)
            (staging / f"{graph}.json").write_text(engine_manifest.to_json())  # the directory is renamed in whole
            log.info(
                "engine %d/%d %s: %.1f s, %.1f MB", i, len(graphs), graph, time.perf_counter() - started, engine.stat().st_size / 1e6
            )
        if timing_cache is None:
            cache.unlink(missing_ok=True)
    log.info("wrote %s", final)
    return read_engine_dir(final)


def _check_replaceable(final: Path, export_dir: Path) -> None:
    """Refuse an engine directory whose replacement would delete anything but engines of a previous build."""
    target, source = final.resolve(), export_dir.resolve()
    if target == source or target in source.parents:
        raise InputError(f"engine directory {final} would replace the export {export_dir}; choose another directory")
    if final.exists() and not final.is_dir():
        raise InputError(f"engine directory {final} is a file")
    if final.exists():
        others = sorted(p.name for p in final.iterdir() if not (p.is_file() and p.suffix in (".engine", ".json")))
        if others:
            raise InputError(
                f"{final} exists and holds more than engines ({', '.join(others[:5])}); give an empty or engine directory"
            )


__all__ = [
    "DEFAULT_ENGINE_SUBDIR",
    "AxisRange",
    "EngineLimits",
    "axis_ranges",
    "build_engines",
    "engine_profiles",
    "onnx_input_shapes",
    "read_onnx_io",
]
