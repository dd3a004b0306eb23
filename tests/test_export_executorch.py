"""The ExecuTorch export and backend against torch (the reference), on a micro random model.

The model has every graph of the captioning and bbox layouts, with ITC and ITM (vision with its feature, text,
fusion with ITM and box heads, the caption decoder's cross K/V, step and score programs). It is smaller than
the `tiny` preset (one Swin stage at 32 px, two text layers): lowering a dynamic graph to XNNPACK costs
about a second per layer here, and the fp32 export of these six graphs takes about a minute.

fp32: every program equals its torch graph within `onnx.FP32_ATOL` of the output's scale at sizes that were
not traced; caption token ids (greedy and beam) equal torch's; grounding and matching agree to 1e-4 (the same
bound: the two differ in kernels and summation order only). Calls past the lamp's 4 images and 32 phrases
are cut by the runtime (same results); past the token bounds they are refused. INT8: XNNPACK dynamic INT8
behind the accuracy gate, the plan recorded; the plan search steps a failing graph down to float (slow).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_onnxruntime_backend import images

import xvlm_edge
from xvlm_edge.checkpoint import Checkpoint, load_directory, save
from xvlm_edge.cli import main
from xvlm_edge.config import LAYOUT_HEADS, SwinConfig, get_preset
from xvlm_edge.errors import EngineError, InputError, StaleExportError
from xvlm_edge.export import export_model
from xvlm_edge.export.executorch import Bounds, case_kind, check_cases, decoder_inputs
from xvlm_edge.export.gate import Thresholds
from xvlm_edge.export.onnx import FP32_ATOL, TRACE_SIZES, Sizes, check_parity, example_inputs
from xvlm_edge.files import sha256_file
from xvlm_edge.graphs import build_graphs, catalogue
from xvlm_edge.manifest import ExportManifest
from xvlm_edge.models.xvlm import XVLM
from xvlm_edge.runtime import create_runtime
from xvlm_edge.runtime.executorch_backend import PteMethod
from xvlm_edge.tokenizer import Tokenizer

ATOL = 1e-4
HEADS = ("itc", "itm", "bbox", "caption")
PHRASES = ["a red square", "the circle on the left", "two shapes"]
VOCAB = Path(xvlm_edge.__file__).parent / "assets" / "default" / "vocab.txt"  # 156 words: small logits
#: Sizes neither traced nor checked at export; encoders within 4 images, decoders one image's rows.
FRESH_ENCODER = (Sizes(images=2, rows=5, tokens=11, past=0, new=1), Sizes(images=4, rows=7, tokens=2, past=0, new=1))
FRESH_DECODER = (Sizes(images=1, rows=5, tokens=4, past=9, new=3), Sizes(images=1, rows=8, tokens=6, past=0, new=7))


def micro_checkpoint(directory: Path, heads: tuple[str, ...], seed: int = 0, box_head: str = "cls") -> Path:
    """A micro random model saved as a checkpoint directory (weights spread so logits are not nearly tied)."""
    tokenizer = Tokenizer.from_file(VOCAB)
    tiny = get_preset("tiny", heads)
    config = dataclasses.replace(
        tiny,
        vision=SwinConfig(image_res=32, embed_dim=16, depths=(2,), num_heads=(1,), window_size=4, ape=True),
        text=dataclasses.replace(tiny.text, vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, fusion_layer=1),
        embed_dim=16,
        box_head=box_head,
    )
    torch.manual_seed(seed)
    model = XVLM(config).eval()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    return save(Checkpoint(model, tokenizer, config), directory)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = micro_checkpoint(tmp_path_factory.mktemp("executorch") / "model", HEADS)
    export_model(directory, "fp32", "executorch", threads=1)
    return directory


@pytest.fixture(scope="module")
def pair(model_dir):
    return xvlm_edge.load(model_dir, backend="torch", threads=1), xvlm_edge.load(model_dir, backend="executorch", threads=1)


def test_manifest_files_bounds_and_arena(model_dir: Path) -> None:
    """One .pte per catalogue graph with its sha256, method, dtypes, shapes (axis names), bounds and planned
    arena; vocab.txt and config.json beside them, hashed; the parity record within the ONNX bound."""
    root = model_dir / "export" / "executorch-fp32"
    manifest = ExportManifest.read(root)  # verifies every hash, graphs and assets
    data = json.loads((root / "manifest.json").read_text())
    assert data == dataclasses.asdict(manifest)
    assert set(manifest.graphs) == set(catalogue(HEADS)) and manifest.target == "executorch" and manifest.executorch == "1.5.1"
    for name, entry in manifest.graphs.items():
        assert entry.file == f"{name}.pte" and entry.sha256 == sha256_file(root / entry.file) and entry.method == "forward"
        assert entry.inputs == list(catalogue(HEADS)[name].inputs) and set(entry.dtypes) == {*entry.inputs, *entry.outputs}
        assert entry.arena_bytes > 0 and entry.quantization == "float32"
        parity = manifest.parity["fp32_vs_torch"][name]
        assert parity["max_abs"] <= FP32_ATOL and len(parity["cases"]) >= 3
    vision, step = manifest.graphs["vision"], manifest.graphs["caption_step"]
    assert vision.shapes["pixels"] == [1, 3, 32, 32] and vision.bounds == {}  # one image: lowered whole
    assert vision.shapes["image_embeds"] == [1, 65, 16] and vision.shapes["image_feat"] == [1, 16]
    assert manifest.graphs["caption_cross_kv"].shapes["states"] == [1, 65, 16]
    assert manifest.graphs["fusion"].bounds["images"] == [1, 4]
    assert manifest.graphs["text"].dtypes["text_ids"] == "int64" and manifest.graphs["text"].bounds == {"rows": [1, 32], "tokens": [1, 40]}
    assert step.shapes["cross_k"] == [1, 1, 2, 65, 16] and step.shapes["self_atts"] == ["rows", "total"]  # one image, 1 + N keys
    assert step.bounds == {"new": [1, 40], "past": [0, 39], "rows": [1, 8], "total": [1, 40]} and step.relations == ["total = past + new"]
    assert step.shapes["new_cache_k"] == [2, "rows", 2, "total", 16] and manifest.decoders["caption"] == [2, 2, 16]
    assert manifest.graphs["caption_score"].shapes["logits"] == ["rows", "new", 156]
    assert manifest.bounds["limits"] == dataclasses.asdict(Bounds()) and manifest.bounds["planned_total"] == 79
    decoder_sizes = [c["sizes"] for c in manifest.parity["fp32_vs_torch"]["caption_step"]["cases"]]
    assert {"images": 1, "rows": 8, "tokens": 40, "past": 39, "new": 1} in decoder_sizes  # at the bounds: the arena full
    for key, name in (("vocab", "vocab.txt"), ("config", "config.json")):
        assert manifest.assets[key] == {"file": name, "sha256": sha256_file(model_dir / name)}
    copy = root.parent / "tampered"
    shutil.copytree(root, copy)
    (copy / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(EngineError, match="differs from the manifest"):
        ExportManifest.read(copy)
    shutil.rmtree(copy)


def test_parity_at_fresh_sizes(model_dir: Path) -> None:
    """Every program against its torch graph at sizes neither traced nor checked, past-the-trace rows included."""
    model = load_directory(model_dir).model
    graphs = build_graphs(model)
    encoder = [(s, example_inputs(model, graphs, s, seed=7 + i)) for i, s in enumerate(FRESH_ENCODER)]
    one_image = [dataclasses.replace(s, images=1) for s in FRESH_ENCODER]
    single = [(s, example_inputs(model, graphs, s, seed=11 + i)) for i, s in enumerate(one_image)]
    decoder = [(s, decoder_inputs(model, graphs, s, seed=9 + i)) for i, s in enumerate(FRESH_DECODER)]
    manifest = ExportManifest.read(model_dir / "export" / "executorch-fp32")
    for name, graph in graphs.items():
        entry = manifest.graphs[name]
        cases = {"decoder": decoder, "encoder": encoder, "one_image": single}[case_kind(graph.spec)]
        found = check_parity(name, PteMethod(model_dir / "export" / "executorch-fp32" / entry.file, entry), graphs, cases, FP32_ATOL, "test", "")
        assert found["max_abs"] <= FP32_ATOL, name
    assert all(s != TRACE_SIZES for s in FRESH_ENCODER)
    assert len(check_cases(model, graphs, Bounds())["decoder"]) == 4


@pytest.mark.parametrize("beams", [1, 3])
def test_caption_ids_equal_torch(pair, beams: int) -> None:
    """Five images: past the 4-image bound, so the vision program runs twice and the decoder once per image."""
    torch_model, et_model = pair
    ref = torch_model.caption(images(5), num_beams=beams, max_length=10)
    got = et_model.caption(images(5), num_beams=beams, max_length=10)
    assert [c.token_ids for c in got] == [c.token_ids for c in ref]
    assert np.allclose([c.score for c in got], [c.score for c in ref], atol=ATOL)


def test_ground_match_retrieve_equal_torch(pair) -> None:
    torch_model, et_model = pair
    image = images(1)[0]
    for r, g in zip(torch_model.ground(image, PHRASES), et_model.ground(image, PHRASES)):
        assert np.allclose(r.cxcywh, g.cxcywh, atol=ATOL)
    many = [f"{p} number {i}" for i in range(13) for p in PHRASES]  # 39 statements: past the 32-row bound
    assert np.allclose(torch_model.match(image, many), et_model.match(image, many), atol=ATOL)
    ref, got = torch_model.retrieve(images(3), PHRASES, k=2), et_model.retrieve(images(3), PHRASES, k=2)
    assert torch.allclose(ref.scores.i2t, got.scores.i2t, atol=ATOL)
    assert et_model.info["backend"] == "executorch" and "beams 8" in et_model.info["bounds"]


def test_shape_past_a_bound_is_refused(pair) -> None:
    """Axes whose rows are independent are cut; tokens, and a decoder row's cached + new tokens, are refused."""
    runtime = pair[1].runtime
    ids = torch.full((2, 41), 5, dtype=torch.long)
    with pytest.raises(EngineError, match=r"input 'text_ids' dimension 1 \(tokens\) is 41, outside the export's bound tokens in \[1, 40\]") as info:
        runtime.run("text", ids, torch.ones_like(ids))
    assert "Bounds" in info.value.hint and "tokens 40" in info.value.hint
    embeds = runtime.vision(torch.zeros(1, 3, 32, 32)).image_embeds
    state = runtime.decoder("caption", embeds, torch.ones(1, embeds.shape[1], dtype=torch.long))
    state.start(torch.full((2, 39), 5, dtype=torch.long), torch.zeros(2, dtype=torch.long))  # 39 cached tokens
    with pytest.raises(EngineError, match=r"input 'self_atts' dimension 1 \(total\) is 41, outside the export's bound total in \[1, 40\]"):
        state.feed(torch.full((2, 2), 5, dtype=torch.long))
    with pytest.raises(EngineError, match="dimension 2 is 64; the export fixed it at 32"):
        runtime.run("vision", torch.zeros(1, 3, 64, 64))


def test_stale_export_is_refused(model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit of the last weight: still a valid checkpoint
    with pytest.raises(StaleExportError, match="other weights") as info:
        xvlm_edge.load(copy, backend="executorch")
    assert f"xvlm-edge export {copy} --target executorch --precision fp32" in info.value.hint
    with pytest.raises(StaleExportError):
        create_runtime(None, backend="executorch", model_dir=copy)


def test_int8_passes_a_loose_gate_and_records_its_plan(model_dir: Path, tmp_path: Path) -> None:
    """XNNPACK dynamic INT8 of the vision and cross K/V graphs (the rest kept fp32 to keep this test short):
    the gate's record, the plan and why, int8 weights counted; the export runs every task."""
    out = tmp_path / "int8"
    loose = Thresholds(vision_cosine=0.99, ground_iou=0.8, itm_agreement=0.6, caption_agreement=0.3)
    keep = ("text", "fusion", "caption_step")
    manifest = export_model(model_dir, "int8", "executorch", destination=out, eval_images=images(3), thresholds=loose, keep_fp32=keep, threads=1)
    plan = manifest.quantization["plan"]
    assert plan["vision"]["option"] == plan["caption_cross_kv"]["option"] == "dynamic" and plan["vision"]["reason"] == "fastest option"
    assert plan["caption_score"] == {**plan["caption_step"], "reason": "follows caption_step"} and plan["text"]["option"] == "float"
    # 2 Swin blocks x (qkv, proj, fc1, fc2) + the ITC projection; the patch embedding stays float
    assert manifest.graphs["vision"].int8_matmuls == 9 and manifest.graphs["vision"].quantization.startswith("XNNPACK dynamic int8")
    assert manifest.graphs["text"].int8_matmuls == 0 and manifest.graphs["text"].sha256 == sha256_file(model_dir / "export" / "executorch-fp32" / "text.pte")
    assert manifest.accuracy["passed"] and manifest.accuracy["metrics"]["vision_cosine"] >= 0.99
    assert manifest.quantization["calibration_images"] == 0 and manifest.quantization["mode"] == "search" and not manifest.quantization["trials"]
    assert ExportManifest.read(out).precision == "int8" and (out / "vocab.txt").is_file() and not (out / ".fp32").exists()
    with pytest.raises(InputError, match="no calibration"):
        export_model(model_dir, "int8", "executorch", calibration=images(2))
    with pytest.raises(InputError, match="bounds size ExecuTorch"):
        export_model(model_dir, "fp32", bounds=Bounds())
    with pytest.raises(InputError, match="images must be an integer >= 2"):
        Bounds(images=1)


@pytest.mark.slow
def test_int8_search_steps_a_failing_graph_down(model_dir: Path, tmp_path: Path) -> None:
    """A vision threshold INT8 misses (measured: INT8 0.9999951, float 0.9999999 to float32 rounding): the search
    (whole graphs on this target) moves vision to float, re-measuring only the failing metric's task; --strict refuses
    instead and writes nothing."""
    exact = Thresholds(vision_cosine=0.999999, ground_iou=0.0, itm_agreement=0.0, caption_agreement=0.0)
    keep = ("text", "fusion", "caption_cross_kv", "caption_step")
    manifest = export_model(model_dir, "int8", "executorch", destination=tmp_path / "a", eval_images=images(2), thresholds=exact, keep_fp32=keep, threads=1)
    plan, trials = manifest.quantization["plan"], manifest.quantization["trials"]
    assert plan["vision"]["option"] == "float" and plan["vision"]["reason"] == "dynamic failed the gate" and manifest.accuracy["passed"]
    assert [(t["graph"], t["move"]) for t in trials] == [("vision", "float")] and set(trials[0]["metrics"]) == {"vision_cosine"}
    from xvlm_edge.export.gate import AccuracyGateError

    with pytest.raises(AccuracyGateError, match="vision_cosine"):
        export_model(model_dir, "int8", "executorch", destination=tmp_path / "b", eval_images=images(2), thresholds=exact, keep_fp32=keep, strict=True)
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["vqa", "nlvr"])
def test_vqa_and_nlvr_equal_torch(tmp_path: Path, layout: str) -> None:
    """The multimodal, answer decoder and NLVR2 programs (question-token keys, image pairs) through the tasks."""
    directory = micro_checkpoint(tmp_path / layout, LAYOUT_HEADS[layout])
    export_model(directory, "fp32", "executorch", threads=1)
    ref, got = xvlm_edge.load(directory, backend="torch", threads=1), xvlm_edge.load(directory, backend="executorch", threads=1)
    a, b = images(2)
    if layout == "vqa":
        questions = ["what color is it?", "how many shapes?"]
        assert [x.text for x in ref.answer(a, questions)] == [x.text for x in got.answer(a, questions)]
        answers = ["red", "blue", "green", "yellow", "pink", "purple", "orange", "cyan", "one", "two", "three", "four"]  # past 8 rows
        for r, g in zip(ref.answer(a, questions, answers, k=12), got.answer(a, questions, answers, k=12)):
            assert r.text == g.text and abs(r.probability - g.probability) < ATOL
    else:
        for r, g in zip(ref.nlvr(a, b, PHRASES), got.nlvr(a, b, PHRASES)):
            assert r.verdict == g.verdict and abs(r.score - g.score) < ATOL


def test_cli_export_executorch(model_dir: Path, capsys) -> None:
    """`xvlm-edge export DIR --target executorch`: reuses the fp32 programs of the same weights and bounds, and
    reports each graph's parity and planned arena."""
    assert main(["export", str(model_dir), "--target", "executorch", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "bounds: images 4, text_rows 32, tokens 40, beams 8, decoder_tokens 40" in out
    assert "caption_step" in out and "max|et - torch|" in out and "arena" in out
    assert main(["export", str(model_dir), "--target", "executorch", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["graphs"]["vision"]["method"] == "forward" and doc["directory"] == str(model_dir / "export" / "executorch-fp32")
    assert main(["export", str(model_dir), "--target", "executorch", "--precision", "fp16"]) == 2
    assert "XNNPACK" in capsys.readouterr().err
