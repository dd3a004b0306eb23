"""TensorRT engine build, tested without TensorRT: the profiles of every graph of a real tiny export (all heads),
checked by the C++ spec validation and profile selection against the shapes the tasks actually feed, and run
by ONNX Runtime at their min/opt/max points (an inconsistent point, such as total != past + new, fails there
as it would fail TensorRT's build); the build's directory handling through a stand-in for `_C.EngineBuilder`;
and the BackendUnavailableError paths (the build, `create_runtime(backend="tensorrt")` and `xvlm-edge engines`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import pytest
import torch

from xvlm_edge import _C
from xvlm_edge.api import Model
from xvlm_edge.checkpoint import Checkpoint, load_directory, save
from xvlm_edge.config import HEADS, get_preset
from xvlm_edge.errors import BackendUnavailableError, EngineError, InputError
from xvlm_edge.export import export_model
from xvlm_edge.export import tensorrt as tb
from xvlm_edge.graphs import catalogue
from xvlm_edge.manifest import ExportManifest, export_dir
from xvlm_edge.models.xvlm import XVLM
from xvlm_edge.runtime import create_runtime
from xvlm_edge.runtime import tensorrt as trt_runtime
from xvlm_edge.runtime.onnxruntime_backend import ort_session
from xvlm_edge.runtime.torch_backend import TorchRuntime
from xvlm_edge.tasks.caption import generate_captions
from xvlm_edge.tokenizer import Tokenizer

#: Every head, so the export has every graph. Image side 32 keeps the export at seconds (1 + N = 5 tokens).
IMAGE_RES = 32
IMAGE_TOKENS = 5
DTYPE_NAMES = {v: k for k, v in trt_runtime.TORCH_DTYPES.items()}
#: Limits small enough to run every graph at its max point on a CPU.
SMALL = tb.EngineLimits(
    max_images=2, max_text_rows=4, max_tokens=8, max_decoder_rows=6, max_cache=6, opt_images=2, opt_beams=2, opt_tokens=4
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclasses.dataclass
class Export:
    model_dir: Path
    root: Path
    manifest: ExportManifest
    shapes: dict  # {graph: {input: shape}}, -1 where dynamic


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Export:
    torch.manual_seed(0)
    config = get_preset("tiny", HEADS)
    config = dataclasses.replace(config, vision=dataclasses.replace(config.vision, image_res=IMAGE_RES))
    model_dir = save(Checkpoint(XVLM(config).eval(), Tokenizer.default(), config), tmp_path_factory.mktemp("trt") / "model")
    written = export_model(model_dir, "fp32", "tensorrt", threads=1)
    root = export_dir(model_dir, "tensorrt", "fp32")
    manifest = ExportManifest.read(root)  # what a device reads back, every sha256 checked
    assert dataclasses.asdict(manifest) == json.loads(json.dumps(dataclasses.asdict(written)))  # the file is its JSON
    return Export(model_dir, root, manifest, tb.onnx_input_shapes(root, manifest))


@pytest.fixture(scope="module")
def profiles(export: Export) -> dict[str, list[_C.Profile]]:
    return tb.engine_profiles(export.manifest, tb.EngineLimits(), export.shapes)


@pytest.fixture(scope="module")
def specs(export: Export, profiles) -> dict[str, _C.EngineSpec]:
    out = {}
    for graph, entry in export.manifest.graphs.items():
        inputs, outputs = tb.read_onnx_io(export.root / entry.file)
        out[graph] = _C.EngineSpec(inputs, outputs, profiles[graph])
    return out


def shapes_for(export: Export, graph: str, **sizes: int) -> dict[str, list[int]]:
    """Input shapes of `graph` with each named axis at `sizes` (static dims from the ONNX)."""
    entry = export.manifest.graphs[graph]
    return {
        name: [sizes[entry.dynamic_axes[name][str(i)]] if d < 0 else d for i, d in enumerate(export.shapes[graph][name])]
        for name in entry.inputs
    }


# -- reading the ONNX -----------------------------------------------------------------------------------


def test_read_onnx_io_equals_onnx_load(export: Export) -> None:
    dtypes = {1: "float32", 7: "int64"}
    for entry in export.manifest.graphs.values():
        inputs, outputs = tb.read_onnx_io(export.root / entry.file)
        graph = onnx.load(str(export.root / entry.file), load_external_data=False).graph
        for ours, theirs in ((inputs, graph.input), (outputs, graph.output)):
            want = [
                (v.name, dtypes[v.type.tensor_type.elem_type], tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim))
                for v in theirs
            ]  # fmt: skip
            assert [(t.name, t.dtype, t.shape) for t in ours] == want
        assert [t.name for t in inputs] == entry.inputs and [t.name for t in outputs] == entry.outputs


def test_read_onnx_io_refuses_what_is_not_onnx(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(EngineError, match="bad.onnx is not a readable ONNX model"):
        tb.read_onnx_io(bad)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(EngineError, match="no graph outputs"):
        tb.read_onnx_io(empty)


# -- profiles -------------------------------------------------------------------------------------------


def test_every_graph_gets_a_profile_the_engine_spec_accepts(export: Export, specs) -> None:
    expected = {"vision", "text", "fusion", "multimodal", "nlvr"} | {
        f"{d}_{k}" for d in ("caption", "answer") for k in ("cross_kv", "step", "score")
    }
    assert set(specs) == expected == set(catalogue(HEADS))
    for graph, spec in specs.items():
        spec.validate()  # a range for every dynamic input, ranks equal, static dims pinned, min <= opt <= max
        (profile,) = spec.profiles
        dynamic = {t.name for t in spec.inputs if -1 in t.shape}
        assert set(profile.ranges) == dynamic, graph
        manifest = _C.EngineManifest(graph, f"{graph}.engine", "0" * 64, "10.3.0", "fp32", spec)
        assert _C.EngineManifest.parse(manifest.to_json()).to_json() == manifest.to_json()


def test_an_axis_has_one_range_per_graph_and_the_relations_hold(export: Export, profiles) -> None:
    for graph, entry in export.manifest.graphs.items():
        ranges = profiles[graph][0].ranges
        seen: dict[str, set] = {}
        for name, axes in entry.dynamic_axes.items():
            if name in ranges:  # inputs only: outputs have no profile
                for dim, axis in axes.items():
                    seen.setdefault(axis, set()).add(tuple(bound[int(dim)] for bound in ranges[name]))
        assert all(len(found) == 1 for found in seen.values()), (graph, seen)
        axis = {name: found.pop() for name, found in seen.items()}
        if graph.endswith(("_step", "_score")):
            for point in range(3):  # min, opt, max
                assert axis["total"][point] == axis["past"][point] + axis["new"][point], graph
                assert axis["rows"][point] % axis["images"][point] == 0, graph
                assert axis["keys"] == axis["cross_tokens"]
            expected = (IMAGE_TOKENS,) * 3 if graph.startswith("caption") else (1, 16, 40)
            assert axis["keys"] == expected, graph


def test_axis_ranges_follow_the_graph_kind() -> None:
    """One graph spec of each kind under SMALL: by hand from the rules in export/tensorrt.py's docstring."""
    specs, r = catalogue(HEADS), tb.AxisRange
    assert tb.axis_ranges(specs["text"], SMALL, IMAGE_TOKENS) == {"images": r(1, 2, 2), "rows": r(1, 1, 4), "tokens": r(1, 4, 8)}
    step = tb.axis_ranges(specs["caption_step"], SMALL, IMAGE_TOKENS)
    assert step["keys"] == step["cross_tokens"] == step["tokens"] == r(5, 5, 5)  # the image's 1 + N tokens
    assert (step["images"], step["rows"]) == (r(1, 2, 2), r(1, 4, 6))  # opt rows = opt images x opt beams
    assert (step["past"], step["new"], step["total"]) == (r(0, 3, 5), r(1, 1, 6), r(1, 4, 11))
    score = tb.axis_ranges(specs["answer_score"], SMALL, IMAGE_TOKENS)
    assert score["keys"] == score["cross_tokens"] == r(1, 4, 8)  # a question's tokens
    assert (score["past"], score["new"], score["total"]) == (r(0, 1, 5), r(1, 3, 6), r(1, 4, 11))
    assert tb.axis_ranges(specs["caption_cross_kv"], SMALL, IMAGE_TOKENS)["tokens"] == r(5, 5, 5)


def call_at(export: Export, graph: str, shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """ONNX Runtime inputs of these shapes with values a real call could hold (ids in the vocabulary, indices
    within the images, all-ones masks)."""
    rng = np.random.default_rng(0)
    images = next((s[0] for n, s in shapes.items() if n in ("image_embeds", "pixels")), 1)
    feed = {}
    for name, shape in shapes.items():
        if name.endswith("_index"):
            feed[name] = np.arange(shape[0], dtype=np.int64) % images
        elif name.endswith("_ids"):
            feed[name] = rng.integers(1000, 2000, size=shape, dtype=np.int64)
        elif name.endswith("_atts"):
            feed[name] = np.ones(shape, dtype=np.int64)
        else:
            feed[name] = rng.standard_normal(shape, dtype=np.float32)
    return feed


@pytest.mark.parametrize("point", [0, 1, 2], ids=["min", "opt", "max"])
def test_min_opt_max_are_calls_the_onnx_graphs_run(export: Export, point: int) -> None:
    """TensorRT refuses a profile whose opt point breaks a shape constraint of the network (and warns at min
    and max). ONNX Runtime runs the same graphs at each point: total = past + new, rows grouped by image,
    cross keys matching the cross mask. Small limits keep the max point cheap."""
    profiles = tb.engine_profiles(export.manifest, SMALL, export.shapes)
    for graph, entry in export.manifest.graphs.items():
        ranges = profiles[graph][0].ranges
        shapes = {n: list(ranges[n][point]) if n in ranges else export.shapes[graph][n] for n in entry.inputs}
        outputs = ort_session(export.root / entry.file, threads=1).run(None, call_at(export, graph, shapes))
        assert all(np.isfinite(o).all() for o in outputs), graph


class RecordingRuntime(TorchRuntime):
    """The torch backend, recording the name, dtype and shape of every input of every graph call."""

    def __init__(self, model: XVLM) -> None:
        super().__init__(model, device="cpu")
        self.calls: list[tuple[str, dict[str, tuple[str, list[int]]]]] = []

    def run(self, graph: str, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        names = self.graphs[graph].INPUTS
        self.calls.append((graph, {n: (DTYPE_NAMES[x.dtype], list(x.shape)) for n, x in zip(names, inputs)}))
        return super().run(graph, *inputs)


@pytest.fixture(scope="module")
def task_calls(export: Export) -> list[tuple[str, dict[str, tuple[str, list[int]]]]]:
    """Every graph call the tasks make: captions of 1 and 4 images with 3 beams (rows of 20 tokens), greedy
    and uncached captions, grounding, matching, retrieval, VQA ranking and generation, NLVR."""
    checkpoint = load_directory(export.model_dir)
    runtime = RecordingRuntime(checkpoint.model)
    model = Model(checkpoint, runtime)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size=(48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(4)]
    model.caption(images[0], num_beams=3, min_length=20, max_length=20)
    model.caption(images, num_beams=3, min_length=20, max_length=20)
    model.caption(images[0], num_beams=1)
    embeds = runtime.vision(torch.randn(1, 3, IMAGE_RES, IMAGE_RES)).image_embeds
    generate_captions(runtime, model.tokenizer, embeds, prompt="a picture of ", max_length=8, min_length=8, num_beams=3, cached=False)
    model.ground(images[0], ["the red square", "a circle on the left of the picture"])
    model.match(images[0], ["a cat", "a dog on a sofa", "two birds"])
    model.retrieve(images[:3], ["a cat", "a dog", "a bird", "a red car"], k=2)
    model.answer(images[0], "what colour is the car?", answers=["red", "blue", "dark green", "a small cat"], k=3)
    model.answer(images[:2], ["what is this?", "how many birds are there in the picture?"])
    model.nlvr(images[0], images[1], ["there are two dogs", "the left image has a cat"])
    return runtime.calls


def test_every_shape_the_tasks_feed_selects_the_profile(export: Export, specs, task_calls) -> None:
    assert {graph for graph, _ in task_calls} == set(specs)
    for graph, inputs in task_calls:
        _C.validate_shapes(specs[graph], inputs)  # names, dtypes, ranks and static dims
        assert _C.select_profile(specs[graph].profiles, {n: shape for n, (_, shape) in inputs.items()}) == 0
    steps = [shapes for graph, shapes in task_calls if graph == "caption_step"]
    assert max(shapes["self_atts"][1][1] for shapes in steps) == 19  # a 20-token caption's last step
    assert {shapes["cross_k"][1][1] for shapes in steps} == {1, 4} and max(s["text_ids"][1][0] for s in steps) == 12


def test_vqa_ranking_over_k_test_answers_fits(export: Export, specs) -> None:
    """The official ranking re-scores k_test = 128 answers of one question: 128 rows after one cached [CLS]."""
    shapes = shapes_for(export, "answer_score", rows=128, images=1, past=1, new=8, total=9, keys=12, cross_tokens=12)
    assert _C.select_profile(specs["answer_score"].profiles, shapes) == 0


@pytest.mark.parametrize(
    ("graph", "sizes", "message"),
    [
        ("vision", {"images": 17}, r"input 'pixels' dim 0 is 17, allowed \[1, 16\]"),
        ("text", {"rows": 2, "tokens": 41}, r"input 'text_atts' dim 1 is 41, allowed \[1, 40\]"),
        ("fusion", {"rows": 129, "tokens": 4, "images": 1}, r"input 'image_atts' dim 0 is 129, allowed \[1, 128\]"),
        (
            "caption_step",
            {"rows": 51, "images": 17, "new": 1, "past": 5, "total": 6, "keys": 5, "cross_tokens": 5},
            r"input 'cross_k' dim 1 is 17, allowed \[1, 16\]",
        ),
        (
            "caption_step",
            {"rows": 3, "images": 1, "new": 1, "past": 40, "total": 41, "keys": 5, "cross_tokens": 5},
            r"input 'cache_k' dim 3 is 40, allowed \[0, 39\]",
        ),
        (
            "caption_step",  # a caption reads the whole image: 1 + N keys, nothing else
            {"rows": 3, "images": 1, "new": 1, "past": 5, "total": 6, "keys": 4, "cross_tokens": 4},
            r"input 'cross_atts' dim 1 is 4, allowed \[5, 5\]",
        ),
        (
            "answer_score",
            {"rows": 129, "images": 1, "new": 3, "past": 1, "total": 4, "keys": 8, "cross_tokens": 8},
            r"input 'cache_k' dim 1 is 129, allowed \[1, 128\]",
        ),
    ],
)
def test_shapes_beyond_the_limits_are_refused_naming_input_and_dim(
    export: Export, specs, graph: str, sizes: dict, message: str
) -> None:
    with pytest.raises(EngineError, match=message):
        _C.select_profile(specs[graph].profiles, shapes_for(export, graph, **sizes))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_images": 0}, "max_images must be a positive integer, got 0"),
        ({"opt_tokens": True}, "opt_tokens must be a positive integer, got True"),
        ({"opt_images": 17}, "opt_images=17 exceeds max_images=16"),
        ({"opt_tokens": 41}, "opt_tokens=41 exceeds max_tokens=40"),
        ({"max_cache": 8}, "opt_tokens=16 exceeds max_cache=8"),
        ({"max_decoder_rows": 8}, "max_images=16 exceeds max_decoder_rows=8"),
        ({"max_decoder_rows": 40}, "max_decoder_rows=40 must be a multiple of max_images=16"),
        ({"opt_images": 16, "opt_beams": 9}, r"opt_images x opt_beams = 144 exceeds max_decoder_rows=128"),
        ({"opt_tokens": 1}, "opt_tokens must be at least 2"),
    ],
)
def test_limits_are_checked_when_made(changes: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        tb.EngineLimits(**changes)


def test_limits_beyond_the_position_table_are_refused(export: Export) -> None:
    limits = tb.EngineLimits(max_tokens=600, max_cache=64)
    with pytest.raises(InputError, match="max_tokens=600 exceeds the model's 512 text positions"):
        tb.engine_profiles(export.manifest, limits, export.shapes)


def test_a_manifest_that_disagrees_with_its_onnx_is_refused(export: Export) -> None:
    manifest = copy.deepcopy(export.manifest)
    axes = manifest.graphs["text"].dynamic_axes
    del axes["text_ids"]["1"]
    with pytest.raises(EngineError, match="graph 'text' input 'text_ids' dim 1 is dynamic in the ONNX but the manifest names no axis"):
        tb.engine_profiles(manifest, tb.EngineLimits(), export.shapes)
    axes["text_ids"]["1"] = "syllables"
    with pytest.raises(EngineError, match="dim 1 is axis 'syllables', which has no engine limit"):
        tb.engine_profiles(manifest, tb.EngineLimits(), export.shapes)
    axes["text_ids"]["1"] = "tokens"
    manifest.graphs["vision"].dynamic_axes["pixels"]["2"] = "height"
    with pytest.raises(EngineError, match=rf"input 'pixels' dim 2 is static \({IMAGE_RES}\) in the ONNX but the manifest names it axis 'height'"):
        tb.engine_profiles(manifest, tb.EngineLimits(), export.shapes)
    del manifest.graphs["vision"].dynamic_axes["pixels"]["2"]
    manifest.graphs["caption_beam"] = manifest.graphs.pop("caption_step")  # a graph the catalogue does not have
    shapes = {**export.shapes, "caption_beam": export.shapes["caption_step"]}
    with pytest.raises(EngineError, match="graph 'caption_beam' is not in the catalogue"):
        tb.engine_profiles(manifest, tb.EngineLimits(), shapes)
    # the module's manifest is untouched (the copy was deep)
    assert "caption_step" in export.manifest.graphs and "2" not in export.manifest.graphs["vision"].dynamic_axes["pixels"]


# -- building -------------------------------------------------------------------------------------------


@pytest.mark.skipif(_C.has_tensorrt(), reason="checks the build without TensorRT")
def test_build_without_tensorrt_raises_before_any_work(tmp_path: Path) -> None:
    engines = tmp_path / "engines"
    with pytest.raises(BackendUnavailableError, match="TensorRT runtime not compiled into xvlm_edge._C") as info:
        tb.build_engines(tmp_path / "no-export-here", engines)  # refused before the missing export is noticed
    assert info.value.hint == trt_runtime.INSTALL_HINT
    assert not engines.exists()


class StandInBuilder:
    """`_C.EngineBuilder` where TensorRT is missing: writes placeholder bytes, returns the spec TensorRT would
    (the ONNX's I/O and the profiles given), and records what it was asked."""

    calls: ClassVar[list[tuple[str, str, str]]] = []
    fail_on: ClassVar[str | None] = None

    def __init__(self, onnx_path: str, engine_path: str, profiles: list, timing_cache_path: str = "") -> None:
        self.onnx_path, self.engine_path, self.profiles = onnx_path, engine_path, profiles
        StandInBuilder.calls.append((onnx_path, engine_path, timing_cache_path))
        self.cache = timing_cache_path

    def build(self) -> _C.EngineSpec:
        if self.fail_on and self.onnx_path.endswith(f"/{self.fail_on}.onnx"):
            raise EngineError(f"TensorRT could not build an engine from {self.onnx_path}")
        Path(self.engine_path).write_bytes(b"engine of " + Path(self.onnx_path).name.encode())
        Path(self.cache).write_bytes(b"timings")
        inputs, outputs = tb.read_onnx_io(self.onnx_path)
        return _C.EngineSpec(inputs, outputs, self.profiles)


@pytest.fixture
def stand_in(monkeypatch) -> type[StandInBuilder]:
    monkeypatch.setattr(_C, "has_tensorrt", lambda: True)
    monkeypatch.setattr(_C, "tensorrt_version", lambda: "10.3.0")
    monkeypatch.setattr(_C, "EngineBuilder", StandInBuilder, raising=False)
    StandInBuilder.calls, StandInBuilder.fail_on = [], None
    return StandInBuilder


def test_build_writes_an_engine_directory_the_runtime_reads(export: Export, profiles, stand_in, tmp_path, caplog) -> None:
    engines = tmp_path / "engines"
    with caplog.at_level(logging.INFO, logger=tb.__name__):
        built = tb.build_engines(export.root, engines)
    assert built.keys() == export.manifest.graphs.keys()
    read = trt_runtime.read_engine_dir(engines)  # sha256 of each engine checked against its manifest
    assert sorted(p.name for p in engines.iterdir()) == sorted(f"{g}.{ext}" for g in read for ext in ("engine", "json"))
    for graph, manifest in read.items():
        assert (manifest.precision, manifest.tensorrt_version, manifest.engine) == ("fp32", "10.3.0", f"{graph}.engine")
        assert [p.ranges for p in manifest.spec.profiles] == [p.ranges for p in profiles[graph]]
    caches = {cache for _, _, cache in stand_in.calls}
    assert len(caches) == 1 and not Path(caches.pop()).exists()  # one cache shared by the build, then removed
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("engine ")]
    assert len(progress) == len(read) and progress[0].startswith(f"engine 1/{len(read)} vision: ")

    cache = tmp_path / "timing.cache"
    tb.build_engines(export.root, engines, timing_cache=cache)  # replaces the previous engines
    assert cache.read_bytes() == b"timings" and {c for _, _, c in stand_in.calls[len(read) :]} == {str(cache)}
    assert trt_runtime.read_engine_dir(engines).keys() == read.keys()


def test_a_failed_build_keeps_the_previous_engines(export: Export, stand_in, tmp_path) -> None:
    engines = tmp_path / "engines"
    tb.build_engines(export.root, engines)
    before = {p.name: p.read_bytes() for p in engines.iterdir()}
    stand_in.fail_on = "caption_step"
    with pytest.raises(EngineError, match="could not build an engine from .*caption_step.onnx"):
        tb.build_engines(export.root, engines)
    assert {p.name: p.read_bytes() for p in engines.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engines"]  # no staging directory left behind


def test_build_refuses_directories_it_must_not_replace(export: Export, stand_in, tmp_path) -> None:
    with pytest.raises(InputError, match="would replace the export"):
        tb.build_engines(export.root, export.root)
    with pytest.raises(InputError, match="would replace the export"):
        tb.build_engines(export.root, export.model_dir)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"holds more than engines \(notes.txt\)"):
        tb.build_engines(export.root, busy)
    with pytest.raises(InputError, match="notes.txt is a file"):
        tb.build_engines(export.root, busy / "notes.txt")
    assert (busy / "notes.txt").read_text() == "mine" and not stand_in.calls


def test_build_refuses_an_export_for_another_target(export: Export, stand_in, tmp_path) -> None:
    other = tmp_path / "onnxruntime-fp32"
    other.mkdir()
    dataclasses.replace(export.manifest, target="onnxruntime", graphs={}).write(other)
    with pytest.raises(EngineError, match="is an export for 'onnxruntime'") as info:
        tb.build_engines(other, tmp_path / "engines")
    assert "--target tensorrt --precision fp32" in info.value.hint
    missing = export_dir(tmp_path / "model", "tensorrt", "fp16")
    with pytest.raises(EngineError, match="no export at") as info:
        tb.build_engines(missing, tmp_path / "engines")
    assert f"xvlm-edge export {tmp_path / 'model'} --target tensorrt --precision fp16" in info.value.hint
    with pytest.raises(EngineError, match="no export at") as info:
        tb.build_engines(tmp_path / "nothing", tmp_path / "engines")
    assert "xvlm-edge export MODEL_DIR" in info.value.hint
    assert not (tmp_path / "engines").exists() and not stand_in.calls


@pytest.mark.skipif(_C.has_tensorrt(), reason="with TensorRT compiled in, the CLI builds the engines")
def test_cli_tensorrt_export_says_how_to_build_the_engines(export: Export, capsys: pytest.CaptureFixture) -> None:
    from xvlm_edge.cli import main

    assert main(["export", str(export.model_dir), "--target", "tensorrt", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "engines: not built (no TensorRT in this build)" in out
    assert f"on the device run: xvlm-edge engines {export.root}" in out


@pytest.mark.skipif(_C.has_tensorrt(), reason="checks the engines command without TensorRT")
def test_cli_engines_without_tensorrt_is_a_one_line_error(export: Export, capsys: pytest.CaptureFixture) -> None:
    from xvlm_edge.cli import main

    assert main(["engines", str(export.root), "--max-images", "2"]) == 1  # BackendUnavailableError: not a user error
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("xvlm-edge: error: ") and "TensorRT runtime not compiled into xvlm_edge._C" in line
    assert not (export.root / tb.DEFAULT_ENGINE_SUBDIR).exists()


@pytest.mark.skipif(_C.has_tensorrt(), reason="checks the runtime without TensorRT")
def test_create_runtime_tensorrt_without_tensorrt(export: Export) -> None:
    """A valid tensorrt export (manifest and weights check pass) still needs TensorRT in `_C` to run."""
    model = load_directory(export.model_dir).model
    with pytest.raises(BackendUnavailableError, match="TensorRT runtime not compiled into xvlm_edge._C") as info:
        create_runtime(model, backend="tensorrt", model_dir=export.model_dir)
    assert info.value.hint == trt_runtime.INSTALL_HINT


def test_create_runtime_tensorrt_refuses_a_missing_export(export: Export) -> None:
    missing = export_dir(export.model_dir, "tensorrt", "fp16")
    assert not missing.exists()
    with pytest.raises(BackendUnavailableError, match=re.escape(f"has no tensorrt fp16 export ({missing} does not exist)")) as info:
        create_runtime(None, backend="tensorrt", precision="fp16", model_dir=export.model_dir)
    assert f"xvlm-edge export {export.model_dir} --target tensorrt --precision fp16" in info.value.hint
