"""The embedded default model (`xvlm_edge/assets/default/`): it loads with no path and does real work on the shipped
example images, judged against each example's recorded scene (`xvlm_edge/assets/examples/<name>.json`).

The examples are held-out synthetic scenes (seed 5; training used seed 0, evaluation seed 1, calibration seed 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import xvlm_edge
from xvlm_edge.errors import CheckpointError
from xvlm_edge.tasks.match import Verdict

ASSETS = Path(xvlm_edge.__file__).parent / "assets"
EXAMPLES = sorted((ASSETS / "examples").glob("*.png"))


@pytest.fixture(scope="module")
def model() -> xvlm_edge.api.Model:
    return xvlm_edge.load()


def _scene(image: Path) -> dict:
    return json.loads(image.with_suffix(".json").read_text())


def _domain_words() -> set[str]:
    from training.synthetic import vocabulary_words

    return set(vocabulary_words())


def test_the_default_model_ships_small_with_every_head(model: xvlm_edge.api.Model) -> None:
    assert 3 <= len(EXAMPLES) <= 5
    default = ASSETS / "default"
    size = sum(p.stat().st_size for p in default.rglob("*") if p.is_file())  # weights, vocab, gate images
    assert size <= 30 * 2**20, f"the embedded model is {size / 2**20:.1f} MB, over the 30 MB budget"
    assert set(model.config.heads) == {"itc", "itm", "mlm", "bbox", "caption", "vqa"}
    assert 0.0 < model.config.check_threshold < 1.0


def test_missing_default_model_is_a_clear_checkpoint_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.resources

    monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path)  # an install without assets/
    with pytest.raises(CheckpointError, match="no embedded default model in this install"):
        xvlm_edge.load()


#: Where the shipped model still falls short (MODEL_CARD.md): it judges counts of a shape alone ("there are three
#: stars", most of the examples' statements) right only 38 % of the time. This check says what a good default
#: model does; strict xfail turns it into a failure the day it passes, so the mark goes once a better-trained
#: model ships (the grounding check lost its mark when grounding reached 87 % of held-out phrases).
UNDER_TRAINED = pytest.mark.xfail(strict=True, reason="the shipped model is under-trained here (see MODEL_CARD.md)")


def _iou(a: list[float], b: list[float]) -> float:
    """IoU of xyxy box `a` and [x, y, w, h] box `b`."""
    x, y, w, h = b
    inter = max(0.0, min(a[2], x + w) - max(a[0], x)) * max(0.0, min(a[3], y + h) - max(a[1], y))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + w * h - inter)


@pytest.mark.parametrize("image", EXAMPLES, ids=lambda p: p.stem)
def test_caption_is_a_sentence_of_domain_words(model: xvlm_edge.api.Model, image: Path) -> None:
    caption = model.caption(str(image)).text
    words = caption.split()
    assert len(words) >= 2, f"caption {caption!r} is too short"
    assert set(words) <= _domain_words(), f"out-of-domain words in {caption!r}"
    assert set(words) & _shape_words(), f"{caption!r} names no shape at all"


def test_caption_batch_equals_one_by_one_when_captions_end_apart(model: xvlm_edge.api.Model) -> None:
    """Beam search keeps a finished image's rows in place (the step graph reads rows grouped by image)."""
    batch = model.caption([str(image) for image in EXAMPLES])
    assert len({len(c.token_ids) for c in batch}) > 1  # images finish at different steps
    assert [c.token_ids for c in batch] == [model.caption(str(image)).token_ids for image in EXAMPLES]


def _shape_words() -> set[str]:
    from training.synthetic import PLURALS, SHAPES

    return {*SHAPES, *PLURALS.values(), "shape", "shapes"}


def _singular(word: str) -> str:
    from training.synthetic import PLURALS

    return {plural: shape for shape, plural in PLURALS.items()}.get(word, word)


def test_captions_name_shapes_actually_present(model: xvlm_edge.api.Model) -> None:
    hits = 0
    for image in EXAMPLES:
        words = model.caption(str(image)).text.split()
        present = {o["shape"] for o in _scene(image)["objects"]}
        said = {_singular(w) for w in words}
        hits += bool(said & present)
    assert hits >= len(EXAMPLES) - 1, f"{hits} of {len(EXAMPLES)} captions name a shape that is in the scene"


@pytest.mark.parametrize("image", EXAMPLES, ids=lambda p: p.stem)
def test_ground_returns_a_box_inside_the_image(model: xvlm_edge.api.Model, image: Path) -> None:
    phrase = _scene(image)["regions"][0]["caption"][0]
    box = model.ground(str(image), phrase)
    x1, y1, x2, y2 = box.xyxy
    assert box.text == phrase
    assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 256, box.xyxy  # examples are rendered at 256 x 256
    cx, _, w, _ = box.cxcywh
    assert cx * 256 == pytest.approx((x1 + x2) / 2, abs=1e-3) and w * 256 == pytest.approx(x2 - x1, abs=1e-3)


def test_ground_finds_the_named_objects(model: xvlm_edge.api.Model) -> None:
    ious = []
    for image in EXAMPLES:
        regions = _scene(image)["regions"]
        boxes = model.ground(str(image), [r["caption"][0] for r in regions])
        ious += [_iou(b.xyxy, r["bb"]) for b, r in zip(boxes, regions)]
    hits = sum(iou >= 0.5 for iou in ious)
    assert hits >= 0.8 * len(ious), f"{hits} of {len(ious)} phrases grounded at IoU >= 0.5"


@UNDER_TRAINED
def test_check_returns_verdicts_that_mostly_agree_with_the_scene(model: xvlm_edge.api.Model) -> None:
    right = total = 0
    for image in EXAMPLES:
        statements = _scene(image)["statements"]
        verdicts = model.check(str(image), [s["statement"] for s in statements])
        assert all(isinstance(v, Verdict) and v.threshold == model.config.check_threshold for v in verdicts)
        right += sum(v.verdict == s["label"] for v, s in zip(verdicts, statements))
        total += len(statements)
    assert right / total >= 0.75, f"{right} of {total} statements judged right"


def test_int8_export_passes_its_gate_with_every_encoder_in_int8(tmp_path: Path) -> None:
    """`xvlm-edge export <default> --precision int8`, no flags: gated on the model's own held-out scenes
    (`gate_images/`, 64 of the calibration seed), the search keeps no encoder graph in float."""
    import shutil

    from xvlm_edge.checkpoint import GATE_IMAGES_DIR
    from xvlm_edge.export import export_model

    copy = shutil.copytree(ASSETS / "default", tmp_path / "default")
    assert len(list((copy / GATE_IMAGES_DIR).glob("*.png"))) == 64
    manifest = export_model(copy, "int8", threads=2)
    quantization = manifest.quantization
    assert manifest.accuracy["passed"] and quantization["eval_images"] == str(copy / GATE_IMAGES_DIR)
    assert manifest.accuracy["metrics"]["eval_images"] == 64
    for graph in ("vision", "text", "fusion", "multimodal"):
        assert quantization["plan"][graph]["option"] != "float", (graph, quantization["plan"][graph])
