"""training/ data: the synthetic generator, the official-format readers, region sampling, MLM masking, collate."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections import Counter
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from training import synthetic
from training.data import (
    ALL_OPS,
    ImageTextDataset,
    RegionTextDataset,
    TextConfig,
    apply_op,
    collate,
    decode_image,
    make_collate,
    rand_augment,
    random_resized_crop,
    resize,
    sample_region_crop,
    to_tensor,
)
from training.masking import IGNORE_INDEX, TextMasker, encode_masked
from xvlm_edge.concepts import box_to_patch_mask
from xvlm_edge.errors import InputError
from xvlm_edge.preprocess import CLIP_MEAN, CLIP_STD
from xvlm_edge.text import pre_caption, pre_question
from xvlm_edge.tokenizer import Tokenizer

SIZE = 128  # generated image side: small keeps the module fast
WORD_TO_COUNT = {w: i for i, w in enumerate(synthetic.COUNT_WORDS)} | {"no": 0}
SINGULAR = {p: s for s, p in synthetic.PLURALS.items()} | {s: s for s in synthetic.SHAPES}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(synthetic.build_vocab(), source="synthetic")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("synth"), 12, seed=7, image_size=SIZE)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _pixels(image: torch.Tensor) -> np.ndarray:
    """Undo the CLIP normalisation: (3, R, R) float -> (R, R, 3) float RGB in 0..255."""
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    return ((image * std + mean) * 255).permute(1, 2, 0).numpy()


def _near(pixels: np.ndarray, color: str, tol: float = 65.0) -> np.ndarray:
    """Pixels within `tol` of a named colour: every shade the generator draws (`synthetic.shade`, up to 62 away)."""
    return np.linalg.norm(pixels.astype(np.float32) - np.array(synthetic.COLORS[color]), axis=-1) < tol


# ---------------------------------------------------------------------------------------------- generator


def test_generator_is_deterministic_per_seed_and_per_scene(tmp_path: Path) -> None:
    a = synthetic.generate(tmp_path / "a", 6, seed=3, image_size=96)
    b = synthetic.generate(tmp_path / "b", 6, seed=3, image_size=96)
    part = synthetic.generate(tmp_path / "part", 2, seed=3, image_size=96, start=4)
    other = synthetic.generate(tmp_path / "other", 6, seed=4, image_size=96)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 6 + len(synthetic.FILES)
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    for i in (4, 5):  # scene i does not depend on which batch produced it
        name = Path("images") / f"{i:06d}.png"
        assert (part / name).read_bytes() == (a / name).read_bytes()
    for name in synthetic.FILES:
        whole = [r for r in _lines(a / f"{name}.jsonl") if r.get("image", "").endswith(("4.png", "5.png"))]
        assert whole == _lines(part / f"{name}.jsonl"), name
    assert (other / "images/000000.png").read_bytes() != (a / "images/000000.png").read_bytes()


def test_binary_records_carry_the_same_png(tmp_path: Path) -> None:
    files = synthetic.generate(tmp_path / "files", 2, seed=1, image_size=96)
    inline = synthetic.generate(tmp_path / "inline", 2, seed=1, image_size=96, binary=True)
    assert not (inline / "images").exists()
    for with_path, with_binary in zip(_lines(files / "regions.jsonl"), _lines(inline / "regions.jsonl"), strict=True):
        png = (files / with_path.pop("image")).read_bytes()
        assert base64.b64decode(with_binary.pop("binary")) == png
        assert with_path == with_binary


def test_cli_writes_scenes_and_vocab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert synthetic.main(["--out", str(tmp_path / "d"), "--num-scenes", "2", "--seed", "5", "--image-size", "64"]) == 0
    assert len(_lines(tmp_path / "d" / "captions.jsonl")) == 2
    assert synthetic.main(["vocab", "--out", str(tmp_path / "vocab.txt")]) == 0
    assert Tokenizer.from_file(tmp_path / "vocab.txt").tokenize("two red stars") == ["two", "red", "stars"]
    assert synthetic.main(["--out", str(tmp_path / "e"), "--num-scenes", "0", "--seed", "5"]) == 2
    assert "wrote" in capsys.readouterr().out


def _all_texts(seed: int, n: int) -> list[tuple[synthetic.Scene, synthetic.SceneTexts]]:
    scenes = [synthetic.sample_scene(seed, i, SIZE) for i in range(n)]
    return [(s, synthetic.describe(s)) for s in scenes]


def test_every_generated_word_is_one_token_of_the_domain_vocab(tokenizer: Tokenizer) -> None:
    texts = []
    for _, t in _all_texts(seed=11, n=300):
        texts += t.captions + [c for _, names in t.regions for c in names]
        texts += [f"{a} {shape}" for _, shape, attrs in t.objects for a in attrs]
        texts += [q for q, _, _ in t.questions] + [a for _, a, _ in t.questions] + [s for s, _, _ in t.statements]
    texts.append("a picture of")  # the captioning prompt
    for text in texts:
        for cleaned in (text, pre_caption(text), pre_question(text)):
            pieces = tokenizer.tokenize(cleaned)
            assert "[UNK]" not in pieces and not any(p.startswith("##") for p in pieces), (text, pieces)
    assert set(synthetic.vocabulary_words()) <= set(synthetic.build_vocab())


def test_statements_questions_and_region_names_are_true(tokenizer: Tokenizer) -> None:
    labels, kinds = Counter(), Counter()
    for scene, texts in _all_texts(seed=5, n=200):
        objs = scene.objects
        scene_labels = [label for _, label, _ in texts.statements]
        assert scene_labels.count(True) == scene_labels.count(False) >= 2  # balanced in every scene
        for statement, label, kind in texts.statements:
            words = statement.split()[2:]  # "there are|is ..."
            count, *color, noun = words
            matches = [o for o in objs if o.shape == SINGULAR[noun] and (not color or o.color == color[0])]
            assert (len(matches) == WORD_TO_COUNT[count]) == label, (statement, label, objs)
            assert (count == "no") == (kind == "none"), (statement, kind)
            if kind == "near_miss":
                assert abs(len(matches) - WORD_TO_COUNT[count]) == 1 and not label, statement
            labels[label] += 1
            kinds[kind, label] += 1
        for question, answer, kind in texts.questions:
            m = re.fullmatch(r"how many (\w+ )?(\w+) are there\?", question)
            if m and m.group(2) != "shapes":
                color = (m.group(1) or "").strip()
                expected = sum(o.shape == SINGULAR[m.group(2)] and (not color or o.color == color) for o in objs)
                assert WORD_TO_COUNT[answer] == expected, (question, answer)
            elif m:
                assert WORD_TO_COUNT[answer] == len(objs)
            assert kind in ("count", "color", "shape", "size", "exist", "relation")
            r = re.fullmatch(r"is the (.+) (left of|right of|above|below) the (.+)\?", question)
            if r:
                a, b = (
                    [o for o in objs if all(w in (o.size, o.color, o.shape) for w in n.split())] for n in (r[1], r[3])
                )
                assert len(a) == len(b) == 1, question
                truth = synthetic._relation(a[0], b[0], r[2])
                assert truth or synthetic._relation(a[0], b[0], synthetic._OPPOSITE[r[2]]), question
                assert answer == ("yes" if truth else "no"), question
                labels[answer] += 1
        for box, names in texts.regions:
            for name in names:  # attribute-only names must pick exactly the boxed object
                words = name.split()[1:]
                if set(words) <= {*synthetic.SIZES, *synthetic.COLORS, *synthetic.SHAPES}:
                    hits = [o for o in objs if all(w in (o.size, o.color, o.shape) for w in words)]
                    assert [list(o.box) for o in hits] == [box], name
    assert labels[True] == labels[False]
    assert labels["yes"] > 20 and labels["no"] > 20
    expected = {("shape_count", True), ("color_shape_count", True), ("none", True), ("none", False), ("near_miss", False)}
    assert set(kinds) == expected and min(kinds.values()) > 50, kinds  # every kind the lamp is asked, often


def test_objects_are_drawn_filled_and_outlined() -> None:
    """`synthetic.STYLES`: some objects are outlines (the middle of the box is background), most are filled."""
    middles = []
    for i in range(20):
        scene = synthetic.sample_scene(4, i, SIZE)
        image = synthetic.render(scene)
        for obj in scene.objects:
            x, y = (round(c) for c in obj.center)
            middles.append(bool(_near(image[y - 1 : y + 2, x - 1 : x + 2], obj.color).all()))
    filled = sum(middles) / len(middles)
    assert 0.6 < filled < 0.9, filled  # 0.75 drawn filled (with or without a border)


def test_boxes_contain_their_objects_and_nothing_of_their_colour_leaks_out() -> None:
    for i in range(10):
        scene = synthetic.sample_scene(2, i, SIZE)
        image = synthetic.render(scene)
        for obj in scene.objects:
            x, y, w, h = obj.box
            assert min(x, y) >= 0 and x + w <= SIZE and y + h <= SIZE and min(w, h) > 0
            near = _near(image, obj.color)
            assert near[y : y + h, x : x + w].mean() > 0.1, obj
            allowed = np.zeros(near.shape, bool)
            for other in scene.objects:
                if other.color == obj.color:
                    ox, oy, ow, oh = other.box
                    allowed[max(oy - 2, 0) : oy + oh + 2, max(ox - 2, 0) : ox + ow + 2] = True
            assert not (near & ~allowed).any(), obj


# ---------------------------------------------------------------------------------------------- readers


def test_image_text_reader_round_trip(synth_dir: Path, tokenizer: Tokenizer) -> None:
    plain = ImageTextDataset(synth_dir / "captions.jsonl", tokenizer, image_res=64, patch_size=16, augment=False)
    records = _lines(synth_dir / "captions.jsonl")
    for i in range(3):
        sample = plain[i]
        png = (synth_dir / records[i]["image"]).read_bytes()
        assert torch.equal(sample.image, to_tensor(resize(decode_image(png), 64, 64)))
        assert tokenizer.decode(sample.text_ids[0]) in [pre_caption(c) for c in records[i]["caption"]]
        assert sample.image_atts.shape == (1, 1 + 16) and bool(sample.image_atts.all())
    augmented = ImageTextDataset(synth_dir / "captions.jsonl", tokenizer, image_res=64, patch_size=16, seed=1)
    first = augmented[0]
    assert torch.equal(first.image, augmented[0].image) and torch.equal(first.text_ids, augmented[0].text_ids)
    assert first.image.shape == (3, 64, 64)
    chosen = set()
    for epoch in range(20):
        augmented.set_epoch(epoch)
        chosen.add(tokenizer.decode(augmented[0].text_ids[0]))
    assert len(chosen) > 1  # a random caption of the list per visit


def test_region_reader_boxes_survive_crop_flip_and_resize(synth_dir: Path, tokenizer: Tokenizer) -> None:
    ds = RegionTextDataset(
        synth_dir / "objects.jsonl", tokenizer, image_res=96, patch_size=32, augment=False, max_regions=6
    )
    checked = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            sample = ds[i]
            pixels = _pixels(sample.image)
            for k in range(len(sample.is_image)):
                color = next(w for w in tokenizer.decode(sample.text_ids[k]).split() if w in synthetic.COLORS)
                cx, cy, w, h = (sample.target_bbox[k] * 96).tolist()
                x0, y0 = round(cx - w / 2), round(cy - h / 2)
                inside = _near(pixels[y0 : y0 + round(h), x0 : x0 + round(w)], color)
                assert inside.mean() > 0.1, (i, epoch, k)
                checked += 1
    assert checked > 50
    assert ds.skipped == {}


def test_camera_photographs_regions_and_their_boxes_move_with_the_page(tmp_path: Path, tokenizer: Tokenizer) -> None:
    """`camera=1`: every sample is a lamp photograph (tilt, light, blur, noise, JPEG); the target box is where the
    object is in the photographed, cropped and resized input."""
    image = np.zeros((128, 128, 3), np.uint8)
    image[30:70, 40:100] = 255
    record = {"binary": base64.b64encode(synthetic.encode_png(image)).decode(), "elems": [{"bb": [40, 30, 60, 40], "caption": "the square"}]}
    path = tmp_path / "square.jsonl"
    path.write_text(json.dumps(record) + "\n")
    photographed = RegionTextDataset(path, tokenizer, image_res=64, patch_size=16, augment=False, camera=1.0)
    plain = RegionTextDataset(path, tokenizer, image_res=64, patch_size=16, augment=False)
    moved = 0
    for epoch in range(8):
        photographed.set_epoch(epoch)
        sample = photographed[0]
        grey = _pixels(sample.image).mean(-1)
        ys, xs = np.nonzero(grey > (np.percentile(grey, 5) + np.percentile(grey, 99)) / 2)
        cx, cy, w, h = (sample.target_bbox[0] * 64).tolist()
        found, target = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        inter = max(0, min(found[2], target[2]) - max(found[0], target[0])) * max(0, min(found[3], target[3]) - max(found[1], target[1]))
        union = (found[2] - found[0]) * (found[3] - found[1]) + w * h - inter
        assert inter / union > 0.75, (epoch, found, target)
        plain.set_epoch(epoch)
        moved += not torch.equal(plain[0].target_bbox, sample.target_bbox)
    assert moved >= 6  # the tilt moved the box in (nearly) every photograph
    with pytest.raises(InputError, match="camera is the probability"):
        RegionTextDataset(path, tokenizer, image_res=64, patch_size=16, camera=1.5)


def test_whole_image_region_sample_keeps_every_box_where_it_is() -> None:
    boxes = np.array([[10.0, 20.0, 30.0, 40.0], [150.0, 5.0, 50.0, 60.0], [0.0, 100.0, 200.0, 50.0]])
    region = sample_region_crop(boxes, 200, 150, np.random.default_rng(0), allow_flip=False, whole_image=True)
    assert region.crop == (0, 0, 200, 150) and not region.flipped
    assert sorted(region.kept) == [(i, tuple(b)) for i, b in enumerate(boxes.tolist())]


def test_region_sampling_keeps_only_mostly_visible_boxes_and_mirrors_on_flip() -> None:
    rng = np.random.default_rng(0)
    width, height = 200, 150
    flips = Counter()
    for trial in range(300):
        xy = rng.uniform(0, [width - 10, height - 10], size=(6, 2))
        wh = rng.uniform(5, [width, height], size=(6, 2)) * 0.5
        boxes = np.concatenate([xy, np.minimum(wh, [width, height] - xy)], 1)
        allow = trial % 3 != 0
        region = sample_region_crop(boxes, width, height, np.random.default_rng(trial), allow_flip=allow)
        x0, y0, w0, h0 = region.crop
        assert min(x0, y0) >= 0 and x0 + w0 <= width and y0 + h0 <= height
        flips[(allow, region.flipped)] += 1
        kept = dict(region.kept)
        fully_inside = 0
        for i, (bx, by, bw, bh) in enumerate(boxes):
            ix0, iy0 = max(bx, x0), max(by, y0)
            ix1, iy1 = min(bx + bw, x0 + w0), min(by + bh, y0 + h0)
            visible = max(ix1 - ix0, 0) * max(iy1 - iy0, 0) / (bw * bh)
            fully_inside += bool(np.isclose(visible, 1.0))
            assert (i in kept) == (visible > 0.5), (trial, i, visible)
            if i in kept:
                expected_x = ix0 - x0 if not region.flipped else (x0 + w0) - ix1
                assert np.allclose(kept[i], (expected_x, iy0 - y0, ix1 - ix0, iy1 - iy0)), (trial, i)
        assert fully_inside >= 1  # the crop always contains the box it was drawn around
    assert flips[(False, True)] == 0
    assert flips[(True, True)] > 50 and flips[(True, False)] > 50


def _half_and_half(tmp_path: Path, caption: str) -> Path:
    """A 64x64 image, red left half, blue right half; one elem boxes the red half."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = synthetic.COLORS["red"]
    image[:, 32:] = synthetic.COLORS["blue"]
    png = base64.b64encode(synthetic.encode_png(image)).decode()
    record = {
        "binary": png,
        "elems": [{"bb": [0, 0, 64, 64], "caption": "both"}, {"bb": [0, 0, 32, 64], "caption": caption}],
    }
    path = tmp_path / f"{caption.replace(' ', '_')}.jsonl"
    path.write_text(json.dumps(record) + "\n")
    return path


@pytest.mark.parametrize(("caption", "may_flip"), [("the red half", True), ("the half on the left", False)])
def test_careful_hflip_end_to_end(tmp_path: Path, tokenizer: Tokenizer, caption: str, may_flip: bool) -> None:
    ds = RegionTextDataset(_half_and_half(tmp_path, caption), tokenizer, image_res=64, patch_size=16, augment=False)
    flipped = 0
    for epoch in range(40):
        ds.set_epoch(epoch)
        sample = ds[0]
        pixels = _pixels(sample.image)
        k = next(k for k in range(2) if tokenizer.decode(sample.text_ids[k]) == caption)
        cx, _, w, _ = (sample.target_bbox[k] * 64).tolist()
        assert _near(pixels[:, int(cx - w / 2) + 1 : int(cx + w / 2) - 1], "red").mean() > 0.95
        flipped += cx > 32  # the red half moved right: the image and its box were mirrored together
    assert (flipped > 5) if may_flip else (flipped == 0)


def test_collate_shapes_and_image_atts_follow_the_official_patch_rule(synth_dir: Path, tokenizer: Tokenizer) -> None:
    text = TextConfig(max_tokens=24, max_masks=6)
    ds = RegionTextDataset(synth_dir / "regions.jsonl", tokenizer, image_res=128, patch_size=32, text=text, seed=3)
    samples = [ds[i] for i in range(4)]
    n = sum(len(s.is_image) for s in samples)
    batch = collate(samples)
    assert batch["images"].shape == (4, 3, 128, 128)
    assert batch["idx_to_group_img"].tolist() == sorted(batch["idx_to_group_img"].tolist())
    shapes = {"text_ids": (n, 24), "text_atts": (n, 24), "text_ids_masked": (n, 24), "masked_pos": (n, 6),
              "masked_ids": (n, 6), "image_atts": (n, 17), "target_bbox": (n, 4), "is_image": (n,),
              "idx_to_group_img": (n,)}  # fmt: skip
    assert {k: tuple(v.shape) for k, v in batch.items() if k != "images"} == shapes
    whole = batch["is_image"] == 1
    assert whole.sum() == 4 and bool(batch["image_atts"][whole].all())
    assert torch.allclose(batch["target_bbox"][whole], torch.tensor([0.5, 0.5, 1.0, 1.0]))
    cx, cy, w, h = (batch["target_bbox"][~whole].double() * 128).unbind(-1)
    xywh = torch.stack([cx - w / 2, cy - h / 2, w, h], -1)
    eps = torch.tensor([1e-3, 1e-3, -2e-3, -2e-3], dtype=torch.float64)
    inner = box_to_patch_mask(xywh + eps, 128, 32)  # float32 targets: allow for rounding at patch edges
    outer = box_to_patch_mask((xywh - eps).clamp(min=0), 128, 32)
    atts = batch["image_atts"][~whole]
    assert bool((inner <= atts).all()) and bool((atts <= outer).all())
    assert bool((batch["text_atts"].sum(1) >= 2).all())

    fewer, more = collate(samples, num_texts=3), make_collate(num_texts=n + 2)(samples)
    assert fewer["text_ids"].shape == (3, 24) and more["text_ids"].shape == (n + 2, 24)
    assert fewer["images"].shape[0] == more["images"].shape[0] == 4
    assert torch.equal(collate(samples, num_texts=3)["text_ids"], fewer["text_ids"])  # deterministic
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=make_collate(num_texts=5))
    assert next(iter(loader))["target_bbox"].shape == (5, 4)


# ---------------------------------------------------------------------------------------------- masking


def test_masking_rate_and_special_positions(tokenizer: Tokenizer) -> None:
    masker = TextMasker(tokenizer, mask_prob=0.25, max_masks=8)
    text = "two red circles and a blue star above the small green square"  # 12 tokens, 13 with [CLS]
    rng = np.random.default_rng(0)
    for _ in range(300):
        m = encode_masked(text, tokenizer, masker, rng, max_tokens=20)
        n = int(m.text_atts.sum())
        positions = m.masked_pos[m.masked_ids != IGNORE_INDEX]
        assert n == 13 and len(positions) == round(13 * 0.25)
        assert bool((positions >= 1).all()) and bool((positions < n).all())
        assert torch.equal(m.masked_ids[: len(positions)], m.text_ids[positions])
        assert bool((m.masked_pos[len(positions) :] == 0).all())
        assert m.text_ids_masked[0] == tokenizer.cls_id and bool((m.text_ids_masked[n:] == tokenizer.pad_id).all())
        unmasked = torch.ones(20, dtype=torch.bool)
        unmasked[positions] = False
        assert torch.equal(m.text_ids_masked[unmasked], m.text_ids[unmasked])
    long_text = " ".join(["red"] * 60)
    m = encode_masked(long_text, tokenizer, masker, rng, max_tokens=40)
    assert int((m.masked_ids != IGNORE_INDEX).sum()) == 8  # capped by max_masks


def test_masking_takes_whole_words_and_spans() -> None:
    vocab = [*synthetic.SPECIAL_TOKENS, "red", "##dish", "blu", "##ish", "gre", "##en"]
    tokenizer = Tokenizer(vocab)
    text = "reddish bluish green reddish bluish green reddish bluish"  # 8 words of 2 pieces: 17 ids, n_pred 4
    words = TextMasker(tokenizer, mask_prob=0.25, max_masks=8, skipgram_prb=0.0)
    rng = np.random.default_rng(1)
    for _ in range(300):
        m = encode_masked(text, tokenizer, words, rng, max_tokens=20)
        positions = set(m.masked_pos[m.masked_ids != IGNORE_INDEX].tolist())
        assert len(positions) == 4
        for p in positions:  # word k occupies positions 2k+1 (head) and 2k+2 (## piece)
            assert (p + 1 if p % 2 else p - 1) in positions

    # Spans: with skipgram_prb = 1 runs of consecutive masked words are far more common than without.
    flat = Tokenizer([*synthetic.SPECIAL_TOKENS, "red", "blue", "green"])
    sentence = " ".join(["red", "blue", "green"] * 8)  # 24 one-piece words, n_pred 6
    adjacent = {}
    for prb in (0.0, 1.0):
        masker = TextMasker(flat, mask_prob=0.25, max_masks=8, skipgram_prb=prb, skipgram_size=3)
        runs = 0
        for _ in range(300):
            m = encode_masked(sentence, flat, masker, rng, max_tokens=30)
            pos = sorted(m.masked_pos[m.masked_ids != IGNORE_INDEX].tolist())
            assert len(pos) == 6
            runs += sum(b == a + 1 for a, b in pairwise(pos))
        adjacent[prb] = runs / 300
    assert adjacent[1.0] > 2 * adjacent[0.0]


def test_masking_replaces_80_10_10(tokenizer: Tokenizer) -> None:
    masker = TextMasker(tokenizer, mask_prob=0.25, max_masks=8)
    text = "two red circles and a blue star above the small green square"
    rng = np.random.default_rng(2)
    outcome = Counter()
    specials = {tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id}
    for _ in range(4000):
        m = encode_masked(text, tokenizer, masker, rng, max_tokens=16)
        real = m.masked_ids != IGNORE_INDEX
        for pos, original in zip(m.masked_pos[real].tolist(), m.masked_ids[real].tolist(), strict=True):
            new = int(m.text_ids_masked[pos])
            assert new not in specials
            outcome["mask" if new == tokenizer.mask_id else "same" if new == original else "random"] += 1
    total = sum(outcome.values())
    assert abs(outcome["mask"] / total - 0.8) < 0.02
    assert abs(outcome["random"] / total - 0.1) < 0.02  # a random draw equal to the original counts as "same"
    assert abs(outcome["same"] / total - 0.1) < 0.02


# ---------------------------------------------------------------------------------------------- augmentations


def test_augmentations_keep_shape_and_are_seeded() -> None:
    image = synthetic.render(synthetic.sample_scene(0, 0, 96))
    for op in ALL_OPS:
        out = apply_op(image, op, 7, np.random.default_rng(0))
        assert out.shape == image.shape and out.dtype == np.uint8, op
    a = rand_augment(image, np.random.default_rng(5), ALL_OPS)
    b = rand_augment(image, np.random.default_rng(5), ALL_OPS)
    assert np.array_equal(a, b)
    assert random_resized_crop(image, np.random.default_rng(0), 64, (0.5, 1.0)).shape == (64, 64, 3)
    tall = np.zeros((300, 20, 3), np.uint8)  # no crop fits the aspect range: the centre-crop fallback
    assert random_resized_crop(tall, np.random.default_rng(0), 32, (0.9, 1.0)).shape == (32, 32, 3)


# ---------------------------------------------------------------------------------------------- malformed


def test_malformed_records_are_counted_and_skipped(
    synth_dir: Path, tokenizer: Tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    good = _lines(synth_dir / "regions.jsonl")[0]
    good["image"] = str(synth_dir / good["image"])
    elem = good["elems"][0]
    records = [
        good,
        {**good, "image": "no/such/file.png"},
        {"binary": "not base64 at all!", "elems": good["elems"]},
        {"binary": base64.b64encode(b"definitely not an image").decode(), "elems": good["elems"]},
        {**good, "elems": [{**elem, "bb": [10, 10, 0, 5]}]},  # degenerate: w = 0, the record has nothing left
        {**good, "elems": [{**elem, "bb": [500, 500, 10, 10]}, elem]},  # outside the image: only that elem goes
        {**good, "elems": [{"bb": elem["bb"], "caption": " ?! "}, elem]},  # empty after cleaning
        "not an object",
    ]
    path = synth_dir / "malformed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n{broken json\n")
    ds = RegionTextDataset(path, tokenizer, image_res=64, patch_size=16)
    with caplog.at_level(logging.WARNING, logger="training.data"):
        samples = [ds[i] for i in range(len(ds))] + [ds[i] for i in range(len(ds))]
    assert all(s.image.shape == (3, 64, 64) and len(s.is_image) >= 1 for s in samples)
    assert ds.skipped == {
        "missing_image": 1,
        "bad_base64": 1,
        "undecodable_image": 1,
        "degenerate_box": 2,
        "empty_record": 1,
        "missing_caption": 1,
        "unreadable_record": 2,
    }
    kinds = [r.message for r in caplog.records]
    assert len(kinds) == len(ds.skipped)  # one warning per kind, however often it recurs
    assert torch.equal(ds[1].image, ds[1].image)  # the fallback is deterministic

    captions = synth_dir / "bad_captions.jsonl"
    rows = [
        {"image": good["image"], "caption": ["", "  "]},
        {"image": good["image"]},
        {"image": good["image"], "caption": "ok"},
    ]
    captions.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    it = ImageTextDataset(captions, tokenizer, image_res=64, patch_size=16)
    assert all(tokenizer.decode(it[i].text_ids[0]) == "ok" for i in range(3))
    assert it.skipped == {"missing_caption": 2}

    (synth_dir / "empty.jsonl").write_text("\n\n")
    for missing in (synth_dir / "empty.jsonl", synth_dir / "absent.jsonl"):
        with pytest.raises(InputError):
            RegionTextDataset(missing, tokenizer)


# -- multi-task scene batches ---------------------------------------------------------------------------------


def test_scene_task_reader_joins_caption_vqa_and_check_of_the_same_image(synth_dir: Path, tokenizer: Tokenizer) -> None:
    from training.data import SCENE_FIELDS, SceneTaskDataset, collate

    text = TextConfig(max_tokens=30, max_words=30)
    ds = SceneTaskDataset(synth_dir / "captions.jsonl", tokenizer, vqa=synth_dir / "vqa.jsonl",
                          check=synth_dir / "check.jsonl", image_res=64, patch_size=16, text=text, augment=False)  # fmt: skip
    captions = _lines(synth_dir / "captions.jsonl")
    qa = [(r["image"], r["question"], r["answer"][0]) for r in _lines(synth_dir / "vqa.jsonl")]
    checks = [(r["image"], r["statement"], r["label"]) for r in _lines(synth_dir / "check.jsonl")]
    prompt = tokenizer.caption_prompt_ids("a picture of ").tolist()
    for i in range(len(ds)):
        scene = ds[i].scene
        assert set(scene) == set(SCENE_FIELDS)
        image = captions[i]["image"]
        ids = scene["caption_ids"][0][scene["caption_atts"][0].bool()].tolist()
        assert ids[: len(prompt)] == prompt and ids[-1] == tokenizer.sep_id  # [CLS] a picture of .. [SEP]
        assert tokenizer.decode(ids[len(prompt) :]) in [pre_caption(c, 30) for c in captions[i]["caption"]]
        question = tokenizer.decode(scene["question_ids"][0])
        answer = tokenizer.decode(scene["answer_ids"][0])
        assert any(img == image and pre_question(q) == question and a == answer for img, q, a in qa)
        assert scene["answer_ids"][0, 0] == tokenizer.cls_id and tokenizer.sep_id in scene["answer_ids"][0].tolist()
        statement, label = tokenizer.decode(scene["statement_ids"][0]), bool(scene["check_label"][0])
        assert (image, statement, label) in [(img, pre_caption(st), lab) for img, st, lab in checks]
    # Both labels are drawn, and a second epoch draws again (deterministically per (seed, epoch, index)).
    labels = {bool(ds[i].scene["check_label"][0]) for i in range(len(ds))}
    assert labels == {True, False}
    again = SceneTaskDataset(synth_dir / "captions.jsonl", tokenizer, vqa=synth_dir / "vqa.jsonl",
                             check=synth_dir / "check.jsonl", image_res=64, patch_size=16, text=text, augment=False)  # fmt: skip
    assert all(torch.equal(ds[i].scene["question_ids"], again[i].scene["question_ids"]) for i in range(len(ds)))
    batch = collate([ds[i] for i in range(4)])
    assert batch["images"].shape == (4, 3, 64, 64) and batch["text_ids"].shape[0] == 4
    assert batch["caption_ids"].shape == (4, 30) and batch["answer_ids"].shape == (4, 8)
    assert batch["check_label"].shape == (4,)


def test_scene_task_reader_skips_images_without_questions(tmp_path: Path, synth_dir: Path, tokenizer: Tokenizer) -> None:
    from training.data import SceneTaskDataset

    first = _lines(synth_dir / "captions.jsonl")[0]["image"]

    def write(name: str, drop_first: bool) -> Path:
        rows = [{**r, "image": str(synth_dir / r["image"])} for r in _lines(synth_dir / name) if not (drop_first and r["image"] == first)]
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return tmp_path / name

    captions, vqa, check = write("captions.jsonl", False), write("vqa.jsonl", True), write("check.jsonl", False)
    ds = SceneTaskDataset(captions, tokenizer, vqa=vqa, check=check, image_res=64, patch_size=16, augment=False)
    sample = ds[0]  # record 0 has no question: replaced by record 1, and counted
    assert ds.skipped == {"missing_caption": 1}
    assert torch.equal(sample.image, ds[1].image)
