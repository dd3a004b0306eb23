"""Task behaviour on random tiny models: every fast path against its reference, batching, errors.

Random weights make the outputs meaningless but deterministic, which is all these checks need: the
KV-cached decoder must produce the ids of the uncached one (the official cost model), a batch must give
what one-by-one calls give, and shared image K/V must give what one call per phrase gives. Float
tolerances are 1e-5: the paths differ only in summation order and batch composition.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from xvlm_edge.api import Model
from xvlm_edge.checkpoint import Checkpoint
from xvlm_edge.config import LAYOUT_HEADS, get_preset
from xvlm_edge.errors import (
    BackendUnavailableError,
    CheckpointError,
    InputError,
    TextError,
)
from xvlm_edge.graphs import build_graphs
from xvlm_edge.models.xvlm import XVLM
from xvlm_edge.runtime import create_runtime, full_image_atts
from xvlm_edge.tasks.caption import generate_captions
from xvlm_edge.tasks.match import verdicts
from xvlm_edge.tasks.retrieve import itm_logits, retrieval_scores
from xvlm_edge.tokenizer import Tokenizer

ATOL = 1e-5


def _model(layout: str, seed: int = 0, **changes) -> Model:
    torch.manual_seed(seed)
    config = dataclasses.replace(get_preset("tiny", LAYOUT_HEADS[layout]), **changes)
    model = XVLM(config).eval()
    for p in model.parameters():  # spread the weights so that logits are not nearly tied
        p.data.add_(torch.randn_like(p) * 0.05)
    return Model(Checkpoint(model, TOKENIZER, config), create_runtime(model, backend="torch"))


TOKENIZER = Tokenizer.default()


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(40 + 9 * i, 57 + 5 * i, 3), dtype=np.uint8) for i in range(count)]


@pytest.fixture(scope="module")
def captioner() -> Model:
    return _model("captioning")


@pytest.fixture(scope="module")
def pretrain() -> Model:
    return _model("pretrain")


@pytest.mark.parametrize("beams", [1, 3])
def test_cached_decoding_equals_uncached(captioner: Model, beams: int) -> None:
    encoded = captioner._encode_images(_images(3))
    settings = captioner.config.tasks
    kwargs = {"prompt": settings.caption_prompt, "max_length": 12, "min_length": 7, "num_beams": beams}
    runs = [generate_captions(captioner.runtime, TOKENIZER, encoded.image_embeds, **kwargs, cached=c) for c in (True, False)]
    assert [c.token_ids for c in runs[0]] == [c.token_ids for c in runs[1]]
    assert np.allclose([c.logprob for c in runs[0]], [c.logprob for c in runs[1]], atol=ATOL)
    assert [c.truncated for c in runs[0]] == [c.truncated for c in runs[1]]
    prompt = len(TOKENIZER.caption_prompt_ids(settings.caption_prompt))
    for caption in runs[0]:
        assert caption.token_ids[:prompt] == TOKENIZER.caption_prompt_ids(settings.caption_prompt).tolist()
        assert len(caption.token_ids) <= 12
        # min_length counts the prompt: no eos before position 7
        assert TOKENIZER.sep_id not in caption.token_ids[: 7 if beams > 1 else prompt]


def test_caption_batch_equals_one_by_one(captioner: Model) -> None:
    images = _images(3, seed=1)
    batch = captioner.caption(images, max_length=10)
    single = [captioner.caption(image, max_length=10) for image in images]
    assert [c.token_ids for c in batch] == [c.token_ids for c in single]
    assert [c.text for c in batch] == [c.text for c in single]


def test_grounding_shared_kv_equals_separate_calls(pretrain: Model) -> None:
    image = _images(1)[0]
    phrases = ["the red bike on the left", "a dog", "two people crossing the wide street"]
    together = pretrain.ground(image, phrases)
    for phrase, box in zip(phrases, together):
        alone = pretrain.ground(image, phrase)
        assert alone.text == box.text == phrase
        assert np.allclose(alone.xyxy, box.xyxy, atol=1e-3)  # pixels
        assert np.allclose(alone.cxcywh, box.cxcywh, atol=ATOL)
    height, width = image.shape[:2]
    for box in together:
        cx, cy, w, h = box.cxcywh
        assert np.allclose(box.xyxy, [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])


def test_rerank_with_shared_kv_equals_official_copies(pretrain: Model) -> None:
    """Fusion with one image's K/V for all candidates == the official path (image repeated per text, K/V
    projected per copy, texts padded to max_tokens)."""
    runtime = pretrain.runtime
    image = pretrain._encode_images(_images(1)).image_embeds
    texts = ["a man riding a bike", "dogs", "a wooden bench in front of a tree", "a cat on a table"]
    ours = TOKENIZER.encode(texts, max_length=pretrain.config.max_tokens)
    padded = TOKENIZER.encode(texts, max_length=pretrain.config.max_tokens, padding="max_length")
    embeds = runtime.text(ours.input_ids, ours.attention_mask).text_embeds
    shared = itm_logits(runtime, image, embeds, ours.attention_mask, torch.zeros(4, dtype=torch.long), torch.arange(4))[:, 1]
    copies = image.expand(4, -1, -1).contiguous()
    official = runtime.fusion(
        runtime.text(padded.input_ids, padded.attention_mask).text_embeds, padded.attention_mask, copies, torch.arange(4),
    ).itm_logits[:, 1]  # fmt: skip
    assert torch.allclose(shared, official, atol=1e-4)


def test_retrieve_matrices_and_ranking(pretrain: Model) -> None:
    images = _images(3)
    texts = ["a bike", "two dogs playing", "a bench", "a cat", "people"]
    found = pretrain.retrieve(images, texts, k=2)
    assert found.scores.i2t.shape == (3, 5) and found.scores.t2i.shape == (5, 3)
    assert ((found.scores.i2t > -100).sum(1) == 2).all() and ((found.scores.t2i > -100).sum(1) == 2).all()
    for i, ranked in enumerate(found.texts_for_image):  # re-ranked = the ITC top-k, ordered by ITM score
        assert {r.index for r in ranked} == set(found.scores.sims[i].topk(2).indices.tolist())
        assert [r.logit for r in ranked] == sorted((r.logit for r in ranked), reverse=True)
        assert [r.logit for r in ranked] == [float(found.scores.i2t[i, r.index]) for r in ranked]
    # The same pair scored from both directions agrees.
    both = (found.scores.i2t > -100) & (found.scores.t2i.T > -100)
    assert torch.allclose(found.scores.i2t[both], found.scores.t2i.T[both])


def test_retrieval_scores_direct_matches_per_pair(pretrain: Model) -> None:
    runtime = pretrain.runtime
    images = runtime.vision(torch.from_numpy(np.stack([_pixels(pretrain, a) for a in _images(2)])))
    coded = TOKENIZER.encode(["a bike", "two dogs", "a bench"])
    texts = runtime.text(coded.input_ids, coded.attention_mask)
    scores = retrieval_scores(runtime, images, texts, coded.attention_mask, k=3)
    for i in range(2):
        for t in range(3):
            one = runtime.fusion(texts.text_embeds[t : t + 1], coded.attention_mask[t : t + 1], images.image_embeds[i : i + 1], torch.tensor([0]))
            assert abs(float(one.itm_logits[0, 1]) - float(scores.i2t[i, t])) < ATOL


def _pixels(model: Model, array: np.ndarray) -> np.ndarray:
    from xvlm_edge.preprocess import to_pixel_values

    return to_pixel_values(array, model.config.vision.image_res)


def test_match_and_check_threshold(pretrain: Model) -> None:
    image = _images(1)[0]
    probs = pretrain.match(image, ["a bike", "a dog"])
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert pretrain.match(image, "a bike") == pytest.approx(probs[0], abs=ATOL)
    verdict = pretrain.check(image, "a bike")
    assert verdict.score == pytest.approx(probs[0], abs=ATOL)
    assert verdict.threshold == pretrain.config.check_threshold
    assert verdict.verdict == (verdict.score >= verdict.threshold)
    # At the threshold the verdict is true; just below it, false.
    p = torch.tensor([0.5, 0.5 - 1e-6, 0.9])
    assert [v.verdict for v in verdicts(p, 0.5)] == [True, False, True]
    strict = _model("pretrain", check_threshold=1.0)
    assert strict.check(image, "a bike").verdict is False
    lenient = _model("pretrain", check_threshold=0.0)
    assert lenient.check(image, "a bike").verdict is True


def test_vqa_rank_batch_and_open_ended() -> None:
    vqa = _model("vqa")
    images = _images(2)
    answers = ["red", "blue", "two", "on the table", "skateboard"]
    batch = vqa.answer(images, ["what color is it?", "how many?"], answers, k=3)
    single = [vqa.answer(img, q, answers, k=3) for img, q in zip(images, ["what color is it?", "how many?"])]
    for b, s in zip(batch, single):
        assert b.text == s.text and [a.text for a in b.candidates] == [a.text for a in s.candidates]
        assert len(b.candidates) == 3 and abs(sum(a.share for a in b.candidates) - 1) < 1e-5
        assert b.text in answers
    free = vqa.answer(images[0], "what is this?")
    assert isinstance(free.text, str) and free.candidates == []


def test_nlvr_verdict() -> None:
    nlvr = _model("nlvr")
    left, right = _images(2)
    verdict = nlvr.nlvr(left, right, "the left image shows a dog")
    assert 0.0 <= verdict.score <= 1.0 and verdict.verdict == (verdict.score > 0.5)
    assert len(nlvr.nlvr(left, right, ["one", "two dogs"])) == 2


def test_missing_head_names_head_and_layout(captioner: Model) -> None:
    with pytest.raises(CheckpointError, match=r"needs the bbox head.*'pretrain' or 'bbox'"):
        captioner.ground(_images(1)[0], "a dog")
    with pytest.raises(CheckpointError, match=r"`answer` needs the vqa head.*'vqa'"):
        captioner.answer(_images(1)[0], "what?")
    with pytest.raises(CheckpointError, match="caption head"):
        _model("nlvr").caption(_images(1)[0])


def test_bad_inputs(pretrain: Model) -> None:
    image = _images(1)[0]
    with pytest.raises(TextError):
        pretrain.match(image, "?!")
    with pytest.raises(InputError, match="texts is an empty list"):
        pretrain.match(image, [])
    with pytest.raises(InputError, match="images is an empty list"):
        pretrain.retrieve([], ["a"])
    with pytest.raises(InputError):
        pretrain.ground(np.zeros((4, 4), dtype=np.float64) + 2.0, "a")


def test_unknown_or_missing_backends_refused() -> None:
    model = XVLM(get_preset("tiny", LAYOUT_HEADS["bbox"])).eval()
    with pytest.raises(BackendUnavailableError, match="unknown backend"):
        create_runtime(model, backend="jax")
    with pytest.raises(BackendUnavailableError, match="runs an exported checkpoint directory"):
        create_runtime(model, backend="tensorrt")
    with pytest.raises(BackendUnavailableError, match="unknown precision"):
        create_runtime(model, precision="int3")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="CUDA"):
            create_runtime(model, precision="fp16")
        with pytest.raises(BackendUnavailableError, match="cuda"):
            create_runtime(model, device="cuda")
    runtime = create_runtime(model)
    assert runtime.info["requested"] == "auto" and runtime.info["backend"] == "torch" and "reason" in runtime.info


def test_graphs_are_tensor_only() -> None:
    """Every graph takes and returns tensors only, in its declared order (what ONNX export needs)."""
    torch.manual_seed(0)
    for layout in ("pretrain", "captioning", "vqa", "nlvr"):
        model = XVLM(get_preset("tiny", LAYOUT_HEADS[layout])).eval()
        for name, graph in build_graphs(model).items():
            assert len(graph.INPUTS) == len(set(graph.INPUTS)), name
            assert graph.OUTPUTS, name
    model = XVLM(get_preset("tiny", LAYOUT_HEADS["pretrain"])).eval()
    graphs = build_graphs(model)
    res = model.config.vision.image_res
    with torch.no_grad():
        outputs = graphs["vision"](torch.randn(2, 3, res, res))
        assert all(isinstance(t, torch.Tensor) for t in outputs) and len(outputs) == len(graphs["vision"].OUTPUTS)
        ids = torch.tensor([[101, 2000, 2001], [101, 2002, 0]])
        embeds, _ = graphs["text"](ids, (ids > 0).long())
        fused = graphs["fusion"](embeds, (ids > 0).long(), outputs[0], torch.tensor([1, 0]), full_image_atts(2, outputs[0].shape[1]))
        assert [t.shape[-1] for t in fused] == [model.config.text.hidden_size, 2, 4]
