"""Training losses vs the official X-VLM values on the fixtures in $XVLM_REFERENCE_DIR, and gradient checks.

Every dimension, index and seed comes from the fixture directory (inputs.pt / inputs.json), so any fixture
set in the same format passes. Tolerance 1e-5 absolute (fixture README section 7: losses). The ITM entries of
`forward_region_losses` / `forward_image_losses` depend on `torch.multinomial` draws; the official call order
is reproduced, so with the fixture's seed immediately before the forward they match too.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from training import losses
from xvlm_edge.checkpoint import convert_official
from xvlm_edge.config import SwinConfig, TextConfig, get_preset
from xvlm_edge.models.bert import CrossContext
from xvlm_edge.models.xvlm import XVLM

ATOL = 1e-5
REGION_KEYS = ("text_ids", "text_atts", "text_ids_masked", "masked_pos", "masked_ids")


@pytest.fixture(scope="module")
def ref(reference_dir: Path) -> dict:
    load = lambda p: torch.load(reference_dir / p, map_location="cpu", weights_only=True)  # noqa: E731
    return {
        "dir": reference_dir,
        "inputs": load("inputs/inputs.pt"),
        "pixels": load("expected/preprocess.pt"),
        "seeds": json.loads((reference_dir / "inputs/inputs.json").read_text())["pretrain_forward_torch_seeds"],
        "load": load,
    }


def _close(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    actual, expected = actual.item(), expected.item()
    err = abs(actual - expected)
    assert err <= ATOL, f"{name}: {actual:.7f} vs official {expected:.7f} (error {err:.3g} > {ATOL})"


def _role(section: str) -> str:
    return "swin" if section.startswith("swin") else section


@pytest.mark.parametrize("section", ["swin_pretrain", "clip_pretrain"])
@torch.no_grad()
def test_pretrain_losses_parity(ref: dict, section: str) -> None:
    model = convert_official(ref["dir"] / "checkpoints" / f"{section}.th").model
    inp, expected, role = ref["inputs"], ref["load"](f"expected/{section}.pt"), _role(section)
    pixels = ref["pixels"][f"pixel_values_{role}"]

    torch.manual_seed(ref["seeds"]["region"])
    region = losses.pretrain_losses(
        model,
        pixels,
        *(inp[f"pretrain_regions_{k}"] for k in REGION_KEYS),
        idx_to_group_img=inp["regions_idx_to_group_img"],
        image_atts=inp[f"regions_image_atts_{role}"],
        target_bbox=inp[f"regions_target_bbox_{role}"],
        is_image=inp["regions_is_image"],
    )
    for name, value in zip(["itc", "itm", "mlm", "bbox", "giou"], expected["forward_region_losses"]):
        _close(f"forward_region_losses.{name}", getattr(region, name), value)
    for name in ("itc", "mlm", "bbox", "giou"):  # the separately stored deterministic values
        _close(f"loss_{name}", getattr(region, name), expected[f"loss_{name}"])

    torch.manual_seed(ref["seeds"]["image"])
    image = losses.pretrain_losses(model, pixels, *(inp[f"pretrain_captions_{k}"] for k in REGION_KEYS))
    assert image.bbox is None and image.giou is None
    for name, value in zip(["itc", "itm", "mlm"], expected["forward_image_losses"]):
        _close(f"forward_image_losses.{name}", getattr(image, name), value)


@pytest.mark.parametrize("section", ["swin_retrieval", "clip_retrieval"])
@torch.no_grad()
def test_contrastive_idx_parity(ref: dict, section: str) -> None:
    model = convert_official(ref["dir"] / "checkpoints" / f"{section}.th").model
    inp, expected = ref["inputs"], ref["load"](f"expected/{section}.pt")
    images = model.encode_image(ref["pixels"][f"pixel_values_{_role(section)}"])
    texts = model.encode_text(inp["captions_ids"], inp["captions_atts"])
    idx = inp["captions_image_index"]
    loss = losses.contrastive_loss(model.image_features(images)[idx], model.text_features(texts), model.temp, idx)
    _close("loss_itc_idx", loss, expected["loss_itc_idx"])


@torch.no_grad()
def test_bbox_losses_parity(ref: dict) -> None:
    model, inp = convert_official(ref["dir"] / "checkpoints/swin_bbox.th").model, ref["inputs"]
    expected = ref["load"]("expected/swin_bbox.pt")
    images = model.encode_image(ref["pixels"]["pixel_values_swin"][inp["grounding_image_index"]])
    texts = model.encode_text(inp["grounding_ids"], inp["grounding_atts"])
    pred = model.predict_bbox(model.fuse(texts, inp["grounding_atts"], model.image_context(images)))
    l1, giou = losses.bbox_losses(pred, inp["grounding_target_bbox"])
    _close("loss_bbox", l1, expected["loss_bbox"])
    _close("loss_giou", giou, expected["loss_giou"])


@torch.no_grad()
def test_caption_loss_parity(ref: dict) -> None:
    checkpoint, inp = convert_official(ref["dir"] / "checkpoints/swin_captioning.th"), ref["inputs"]
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    config = json.loads((ref["dir"] / "configs/yaml_captioning.json").read_text())
    images = model.encode_image(ref["pixels"]["pixel_values_swin"])
    ids, atts = inp["captioning_tf_ids"], inp["captioning_tf_atts"]
    hidden, _ = model.caption_decoder.bert(ids, atts, context=model.image_context(images), causal=True)
    prompt_length = len(tokenizer.caption_prompt_ids(config["prompt"]))
    targets = losses.caption_targets(ids, tokenizer.pad_id, prompt_length)
    loss = losses.caption_loss(model.caption_decoder.logits(hidden), targets, config["label_smoothing"])
    _close("tf_loss", loss, ref["load"]("expected/swin_captioning.pt")["tf_loss"])


@torch.no_grad()
def test_vqa_answer_loss_parity(ref: dict) -> None:
    checkpoint, inp = convert_official(ref["dir"] / "checkpoints/swin_vqa.th"), ref["inputs"]
    model = checkpoint.model
    images = model.encode_image(ref["pixels"]["pixel_values_swin"][inp["vqa_image_index"]])
    question_atts = inp["vqa_questions_atts"]
    states = model.encode_multimodal(inp["vqa_questions_ids"], question_atts, model.image_context(images))
    # README section 6: k = [n, n, ...] answers per question, weights [1, .5, ...] within each question.
    answer_index, num_questions = inp["vqa_train_answer_index"], len(states)
    k, rest = divmod(len(answer_index), num_questions)
    assert rest == 0, "the fixture lists the same number of training answers for every question"
    weights = torch.tensor([1.0] + [0.5] * (k - 1)).repeat(num_questions)
    question = torch.arange(num_questions).repeat_interleave(k)  # (A,) question of each answer
    answer_ids, answer_atts = inp["vqa_answers_ids"][answer_index], inp["vqa_answers_atts"][answer_index]
    context = CrossContext(states[question], question_atts[question])
    hidden, _ = model.answer_decoder.bert(answer_ids, answer_atts, context=context, causal=True)
    logits = model.answer_decoder.logits(hidden)
    loss = losses.answer_loss(logits, answer_ids, checkpoint.tokenizer.pad_id, weights, num_questions)
    _close("train_loss", loss, ref["load"]("expected/swin_vqa.pt")["train_loss"])


@torch.no_grad()
def test_nlvr_loss_parity(ref: dict) -> None:
    model, inp = convert_official(ref["dir"] / "checkpoints/swin_nlvr.th").model, ref["inputs"]
    pixels, pairs = ref["pixels"]["pixel_values_swin"], inp["nlvr_image_pairs"]
    images = model.encode_image(torch.cat([pixels[pairs[:, 0]], pixels[pairs[:, 1]]]))
    left, right = model.image_context(images[: len(pairs)]), model.image_context(images[len(pairs) :])
    logits = model.nlvr_logits(inp["nlvr_ids"], inp["nlvr_atts"], left, right)
    _close("loss", losses.nlvr_loss(logits, inp["nlvr_labels"]), ref["load"]("expected/swin_nlvr.pt")["loss"])


# -- gradients ------------------------------------------------------------------------------------------


def test_bbox_losses_gradcheck() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(5, 4, generator=gen, dtype=torch.float64) * 0.5 + 0.25
    target = torch.rand(5, 4, generator=gen, dtype=torch.float64) * 0.5 + 0.25
    is_image = torch.tensor([0, 1, 0, 0, 1])
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: losses.bbox_losses(p, target, is_image), (pred,))
    assert torch.autograd.gradcheck(lambda p: losses.bbox_losses(p, target), (pred,))


def test_bbox_losses_degenerate_rows_are_finite() -> None:
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[0.5, 0.5, -0.1, 0.2], [0.5, 0.5, 0.0, 0.0]], dtype=torch.float64)
    l1, giou = losses.bbox_losses(pred, target)
    (l1 + giou).backward()
    assert giou.item() == 0.0 and torch.isfinite(pred.grad).all()
    l1, giou = losses.bbox_losses(pred.detach(), target, is_image=torch.ones(2, dtype=torch.long))
    assert l1.item() == 0.0 and giou.item() == 0.0  # no box at all: 0, not 0/0


def test_attention_mass_loss_is_the_mean_nll_of_the_mass_on_the_box() -> None:
    weights = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 0.0]])
    box = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1], [0, 1, 1, 1]])
    # row 3 puts no weight on its box: the mass is clamped at 1e-6, not log(0)
    expected = -(math.log(0.75) + math.log(0.4) + math.log(1e-6)) / 3
    assert losses.attention_mass_loss(weights, box).item() == pytest.approx(expected, rel=1e-6)
    # whole-image rows (is_image 1) carry no box: left out of the sum and of the divisor
    is_image = torch.tensor([0, 1, 1])
    assert losses.attention_mass_loss(weights, box, is_image).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    assert losses.attention_mass_loss(weights, box, torch.ones(3, dtype=torch.long)).item() == 0.0


@pytest.mark.parametrize("with_idx", [False, True])
def test_contrastive_loss_gradcheck(with_idx: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    text = torch.randn(6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    temp = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([0, 0, 1, 2, 2, 2]) if with_idx else None
    assert torch.autograd.gradcheck(lambda i, t, tau: losses.contrastive_loss(i, t, tau, idx), (image, text, temp))


def test_caption_and_answer_loss_gradcheck() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[1, 2, 3, 4, 0], [1, 5, 6, 0, 0]])
    targets = losses.caption_targets(ids, pad_id=0, prompt_length=2)
    assert torch.autograd.gradcheck(lambda x: losses.caption_loss(x, targets, 0.1), (logits,))
    weights = torch.tensor([1.0, 0.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: losses.answer_loss(x, ids, 0, weights, 1), (logits,))


def tiny_test_config(vocab_size: int = 40):
    """A model small enough for float64 finite differences: 2 Swin stages, 2 BERT layers (1 text + 1 fusion)."""
    base = get_preset("tiny")
    vision = SwinConfig(image_res=32, patch_size=4, embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=4)
    text = TextConfig(vocab_size=vocab_size, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                      max_position_embeddings=16, fusion_layer=1)  # fmt: skip
    return dataclasses.replace(base, vision=vision, text=text, embed_dim=8, temp=0.2)


def random_region_batch(config, gen: torch.Generator, num_images: int = 2, per_image: int = 3) -> dict:
    """A region batch in the collate layout: boxes, masks and masked text drawn at random."""
    from xvlm_edge.concepts import box_to_patch_mask

    res, vocab = config.vision.image_res, config.text.vocab_size
    texts, length, num_masks = num_images * per_image, 8, 2
    xy = torch.rand(texts, 2, generator=gen) * res * 0.5
    wh = torch.rand(texts, 2, generator=gen) * res * 0.4 + 4
    is_image = torch.zeros(texts, dtype=torch.long)
    is_image[::per_image] = 1  # the first text of each image is a whole-image caption
    boxes = torch.where(is_image[:, None].bool(), torch.tensor([0.0, 0.0, res, res]), torch.cat([xy, wh], 1))
    ids = torch.randint(5, vocab, (texts, length), generator=gen)
    ids[:, 0] = 1
    atts = torch.ones_like(ids)
    atts[1::2, -2:] = 0
    masked_pos = torch.randint(1, length - 2, (texts, num_masks), generator=gen)
    masked_ids = torch.gather(ids, 1, masked_pos)
    return {
        "images": torch.randn(num_images, 3, res, res, generator=gen),
        "text_ids": ids,
        "text_atts": atts,
        "text_ids_masked": ids.scatter(1, masked_pos, 2),
        "masked_pos": masked_pos,
        "masked_ids": masked_ids,
        "idx_to_group_img": torch.arange(num_images).repeat_interleave(per_image),
        "image_atts": box_to_patch_mask(boxes, res, config.vision.box_patch_size),
        "target_bbox": torch.cat([(boxes[:, :2] + boxes[:, 2:] / 2) / res, boxes[:, 2:] / res], 1).float(),
        "is_image": is_image,
    }


def test_pretraining_step_descends_along_negative_gradient() -> None:
    """Finite differences on the full region step (ITC + ITM + MLM + bbox + GIoU) of a random tiny model."""
    torch.manual_seed(0)
    config = tiny_test_config()
    model = XVLM(config).double().train()
    batch = random_region_batch(config, torch.Generator().manual_seed(3))
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}

    def total() -> torch.Tensor:
        torch.manual_seed(7)  # the same hard negatives at every evaluation
        parts = losses.pretrain_losses(
            model, batch["images"], batch["text_ids"], batch["text_atts"], batch["text_ids_masked"],
            batch["masked_pos"], batch["masked_ids"], idx_to_group_img=batch["idx_to_group_img"],
            image_atts=batch["image_atts"], target_bbox=batch["target_bbox"], is_image=batch["is_image"],
        )  # fmt: skip
        return sum(parts.as_dict().values())

    params = [p for p in model.parameters() if p.requires_grad]
    loss = total()
    grads = torch.autograd.grad(loss, params)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    assert torch.isfinite(loss) and norm > 0
    direction = [-g / norm for g in grads]  # unit steepest-descent direction

    def at(step: float) -> float:
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(d, alpha=step)
            value = float(total())
            for p, d in zip(params, direction):
                p.sub_(d, alpha=step)
        return value

    h = 1e-5
    slope = (at(h) - at(-h)) / (2 * h)  # central difference of the directional derivative
    assert slope == pytest.approx(-norm.item(), rel=1e-4)
    assert at(1e-3) < loss.item()
