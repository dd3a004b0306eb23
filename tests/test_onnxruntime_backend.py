"""The ONNX Runtime backend against the torch backend (the reference), task by task, on random tiny models.

fp32: caption token ids (greedy and beam) must equal torch's exactly; floats agree to 1e-4 (the export
parity bound: the two differ only in kernels and summation order). INT8 runs every task; its accuracy is
the gate's business (tests/test_export.py). The official captioning fixture is exported and decoded too.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import xvlm_edge
from xvlm_edge.checkpoint import Checkpoint, save
from xvlm_edge.config import LAYOUT_HEADS, get_preset
from xvlm_edge.errors import BackendUnavailableError, EngineError, ForcedExportWarning, InputError, StaleExportError
from xvlm_edge.export import export_model
from xvlm_edge.models.xvlm import XVLM
from xvlm_edge.runtime import create_runtime
from xvlm_edge.tokenizer import Tokenizer

ATOL = 1e-4
HEADS = ("itc", "itm", "bbox", "caption")
PHRASES = ["a red square", "the circle on the left", "two shapes"]


def make_checkpoint(directory: Path, heads: tuple[str, ...], seed: int = 0) -> Path:
    """A tiny random model saved as a checkpoint directory (weights spread so logits are not nearly tied)."""
    torch.manual_seed(seed)
    config = get_preset("tiny", heads)
    model = XVLM(config).eval()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    return save(Checkpoint(model, Tokenizer.default(), config), directory)


def images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(60 + 7 * i, 80 + 5 * i, 3), dtype=np.uint8) for i in range(count)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = make_checkpoint(tmp_path_factory.mktemp("ort") / "model", HEADS)
    export_model(directory, "fp32", threads=1)
    # random weights: the gate's verdict is not what is tested here (tests/test_export.py tests the gate)
    export_model(directory, "int8", calibration=images(4, seed=5), eval_images=images(2, seed=6), force=True, threads=1)
    return directory


@pytest.fixture(scope="module")
def pair(model_dir):
    return xvlm_edge.load(model_dir, backend="torch"), xvlm_edge.load(model_dir, backend="onnxruntime", threads=1)


@pytest.mark.parametrize("beams", [1, 3])
def test_caption_ids_equal_torch(pair, beams: int) -> None:
    torch_model, ort_model = pair
    ref = torch_model.caption(images(3), num_beams=beams, max_length=10)
    got = ort_model.caption(images(3), num_beams=beams, max_length=10)
    assert [c.token_ids for c in got] == [c.token_ids for c in ref]
    assert np.allclose([c.score for c in got], [c.score for c in ref], atol=ATOL)


def test_ground_match_check_retrieve_equal_torch(pair) -> None:
    torch_model, ort_model = pair
    image = images(1)[0]
    for r, g in zip(torch_model.ground(image, PHRASES), ort_model.ground(image, PHRASES)):
        assert np.allclose(r.cxcywh, g.cxcywh, atol=ATOL)
    assert np.allclose(torch_model.match(image, PHRASES), ort_model.match(image, PHRASES), atol=ATOL)
    assert [v.verdict for v in torch_model.check(image, PHRASES)] == [v.verdict for v in ort_model.check(image, PHRASES)]
    ref, got = torch_model.retrieve(images(3), PHRASES, k=2), ort_model.retrieve(images(3), PHRASES, k=2)
    assert torch.allclose(ref.scores.sims, got.scores.sims, atol=ATOL)
    assert torch.allclose(ref.scores.i2t, got.scores.i2t, atol=ATOL)
    assert [[t.index for t in row] for row in ref.texts_for_image] == [[t.index for t in row] for row in got.texts_for_image]
    for ref_row, got_row in zip(ref.texts_for_image, got.texts_for_image):
        assert np.allclose([t.probability for t in ref_row], [t.probability for t in got_row], atol=ATOL)


def test_int8_runs_every_task(model_dir) -> None:
    with pytest.warns(ForcedExportWarning, match="failed its accuracy gate"):  # random weights: written with force
        model = xvlm_edge.load(model_dir, backend="onnxruntime", precision="int8", threads=1)
    assert model.info["precision"] == "int8"
    image = images(1)[0]
    assert all(c.token_ids for c in model.caption(images(2), num_beams=3, max_length=10))
    boxes = model.ground(image, PHRASES)
    assert all(0 <= v <= 1 for b in boxes for v in b.cxcywh)
    assert all(0 <= p <= 1 for p in model.match(image, PHRASES))
    assert len(model.retrieve(images(2), PHRASES, k=2).texts_for_image) == 2


@pytest.mark.parametrize("layout", ["vqa", "nlvr"])
def test_vqa_and_nlvr_equal_torch(tmp_path, layout: str) -> None:
    directory = make_checkpoint(tmp_path / layout, LAYOUT_HEADS[layout])
    export_model(directory, "fp32", threads=1)
    ref, got = xvlm_edge.load(directory, backend="torch"), xvlm_edge.load(directory, backend="onnxruntime", threads=1)
    a, b = images(2)
    if layout == "vqa":
        questions = ["what color is it?", "how many shapes?"]
        assert [x.text for x in ref.answer(a, questions)] == [x.text for x in got.answer(a, questions)]
        ranked_ref, ranked_got = ref.answer(a, questions, ["red", "blue", "two"]), got.answer(a, questions, ["red", "blue", "two"])
        for r, g in zip(ranked_ref, ranked_got):
            assert r.text == g.text and abs(r.probability - g.probability) < ATOL and abs(r.share - g.share) < ATOL
    else:
        for r, g in zip(ref.nlvr(a, b, PHRASES), got.nlvr(a, b, PHRASES)):
            assert r.verdict == g.verdict and abs(r.score - g.score) < ATOL


def test_official_captioning_fixture_ids_equal_torch(reference_dir, tmp_path) -> None:
    from xvlm_edge.checkpoint import convert_official

    directory = save(convert_official(reference_dir / "checkpoints" / "swin_captioning.th"), tmp_path / "captioning")
    export_model(directory, "fp32", threads=1)
    ref, got = xvlm_edge.load(directory, backend="torch"), xvlm_edge.load(directory, backend="onnxruntime", threads=1)
    for beams in (1, 3):
        ids = [c.token_ids for c in ref.caption(images(2), num_beams=beams)]
        assert [c.token_ids for c in got.caption(images(2), num_beams=beams)] == ids


def test_threads_and_info(model_dir) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = xvlm_edge.load(model_dir, backend="onnxruntime", threads=2)
        # torch only does the decoding bookkeeping beside ONNX Runtime: one thread, so its pool does not contend
        assert torch.get_num_threads() == 1 and model.info["torch_threads"] == "1"
    finally:
        torch.set_num_threads(before)
    assert model.info["backend"] == "onnxruntime" and model.info["threads"] == "2" and model.info["precision"] == "fp32"
    assert model.info["threads_reason"] == "asked"
    defaulted = xvlm_edge.load(model_dir, backend="onnxruntime")
    assert int(defaulted.info["threads"]) >= 1 and defaulted.info["threads_reason"].startswith("default")
    with pytest.raises(InputError, match="threads"):
        xvlm_edge.load(model_dir, backend="onnxruntime", threads=0)
    assert model.checkpoint.model is None  # the export is the model: no PyTorch weights loaded
    with pytest.raises(BackendUnavailableError, match="PyTorch weights were not loaded"):
        model.model  # noqa: B018


def test_refusals(model_dir, tmp_path, monkeypatch) -> None:
    model = XVLM(get_preset("tiny", ("bbox",))).eval()
    with pytest.raises(BackendUnavailableError, match="checkpoint directory"):
        create_runtime(model, backend="onnxruntime")
    with pytest.raises(BackendUnavailableError, match="has no onnxruntime fp32 export") as info:
        create_runtime(model, backend="onnxruntime", model_dir=tmp_path)  # a directory with no export
    assert "xvlm-edge export" in info.value.hint
    with pytest.raises(BackendUnavailableError, match="runs"):
        create_runtime(model, backend="onnxruntime", precision="fp16", model_dir=model_dir)
    with pytest.raises(BackendUnavailableError, match="CPU"):
        create_runtime(model, backend="onnxruntime", device="cuda", model_dir=model_dir)
    with pytest.raises(BackendUnavailableError, match="runs from an INT8 export"):
        create_runtime(model, precision="int8")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(BackendUnavailableError, match="onnxruntime package is not installed") as info:
        create_runtime(model, backend="onnxruntime", model_dir=model_dir)
    assert "pip install onnx onnxruntime" in info.value.hint


def test_tampered_graph_is_refused(model_dir, tmp_path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    vision = copy / "export" / "onnxruntime-fp32" / "vision.onnx"
    vision.write_bytes(vision.read_bytes()[:-1] + b"\0")
    with pytest.raises(EngineError, match="sha256"):
        xvlm_edge.load(copy, backend="onnxruntime")


def test_stale_export_is_refused(model_dir, tmp_path) -> None:
    """New weights in the checkpoint directory make its export stale: refused, with the command that redoes it."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit of the last weight: still a valid checkpoint
    assert xvlm_edge.load(copy, backend="torch").model is not None
    for precision in ("fp32", "int8"):
        with pytest.raises(StaleExportError, match="other weights") as info:
            xvlm_edge.load(copy, backend="onnxruntime", precision=precision)
        assert f"xvlm-edge export {copy} --target onnxruntime --precision {precision}" in info.value.hint
    (copy / "model.safetensors").unlink()
    with pytest.raises(StaleExportError, match="missing"):  # nothing to vouch for the export against
        create_runtime(None, backend="onnxruntime", model_dir=copy)


def test_passing_export_loads_without_warning(model_dir) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fp32 export has no gate to fail
        xvlm_edge.load(model_dir, backend="onnxruntime")


def test_graph_names_and_cache_shape(model_dir) -> None:
    torch_rt = xvlm_edge.load(model_dir, backend="torch").runtime
    ort_rt = xvlm_edge.load(model_dir, backend="onnxruntime").runtime
    for graph in ("vision", "text", "fusion", "caption_step"):
        assert ort_rt.has(graph) and ort_rt.output_names(graph) == torch_rt.output_names(graph)
    assert not ort_rt.has("answer_step")
    assert ort_rt.cache_shape("caption") == torch_rt.cache_shape("caption")
    with pytest.raises(EngineError, match="not in this export"):
        ort_rt.run("nlvr", torch.zeros(1))
    assert dataclasses.is_dataclass(ort_rt.vision(torch.zeros(2, 3, 128, 128)))
    with pytest.raises(EngineError, match="ONNX Runtime failed"):
        ort_rt.run("vision", torch.zeros(1, 3, 64, 64))  # the resolution is fixed by the checkpoint


def test_cli_caption_on_onnxruntime(model_dir, tmp_path, capsys) -> None:
    import json

    import cv2

    from xvlm_edge.cli import main

    path = tmp_path / "image.png"
    cv2.imwrite(str(path), images(1)[0])
    args = ["caption", str(path), "--model", str(model_dir), "--beams", "1", "--json"]
    with pytest.warns(ForcedExportWarning):
        assert main([*args, "--backend", "onnxruntime", "--precision", "int8"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["backend"]["backend"] == "onnxruntime" and document["backend"]["precision"] == "int8"
    assert main([*args, "--backend", "onnxruntime", "--precision", "fp16"]) == 2  # ORT runs fp32 and int8: a user mistake
