"""Task-level parity with the official X-VLM on the fixtures in $XVLM_REFERENCE_DIR.

Tasks run through graphs and the torch runtime, fed the fixture's own pixel values and token ids, so any
fixture set in the same format passes: dimensions, k_test, caption settings and the answer list all come
from the directory (its checkpoints' yamls and inputs.json). Token ids, top-k ids and strings must be
exact; scores follow the fixture README section 7 (1e-5; 1e-4 pixels for boxes in original-image pixels,
which are normalised boxes times image sides of ~100).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import xvlm_edge
from xvlm_edge.checkpoint import Checkpoint, convert_official
from xvlm_edge.runtime import Runtime, create_runtime
from xvlm_edge.tasks.caption import generate_captions, pad_ids
from xvlm_edge.tasks.ground import ground_phrases, to_original_xywh
from xvlm_edge.tasks.nlvr import nlvr_logits
from xvlm_edge.tasks.retrieve import UNSCORED, retrieval_scores
from xvlm_edge.tasks.vqa import question_states, rank_answers

ATOL = 1e-5
ATOL_PIXELS = 1e-4


@pytest.fixture(scope="module")
def ref(reference_dir: Path) -> dict:
    def load(p: str):
        return torch.load(reference_dir / p, map_location="cpu", weights_only=True)

    return {
        "dir": reference_dir,
        "inputs": load("inputs/inputs.pt"),
        "meta": json.loads((reference_dir / "inputs/inputs.json").read_text()),
        "pixels": load("expected/preprocess.pt")["pixel_values_swin"],
        "load": load,
    }


def _runtime(ref: dict, section: str) -> tuple[Checkpoint, Runtime]:
    checkpoint = convert_official(ref["dir"] / "checkpoints" / f"{section}.th")
    return checkpoint, create_runtime(checkpoint.model, backend="torch")


def _close(name: str, actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= atol, f"{name}: max abs error {err:.3g} > {atol}"


@pytest.mark.parametrize(("beams", "ids_key", "text_key", "score_key"), [
    (1, "greedy_ids", "greedy_text", "greedy_logprobs"),
    (None, "beam3_ids", "beam3_text", "beam3_sequence_scores"),
])  # fmt: skip
def test_caption(ref: dict, beams: int | None, ids_key: str, text_key: str, score_key: str) -> None:
    checkpoint, runtime = _runtime(ref, "swin_captioning")
    expected = ref["load"]("expected/swin_captioning.pt")
    settings = checkpoint.config.tasks  # prompt, max/min length and beams from the checkpoint's yaml
    assert checkpoint.tokenizer.caption_prompt_ids(settings.caption_prompt).tolist() == expected["prompt_ids"].tolist()
    images = runtime.vision(ref["pixels"]).image_embeds
    captions = generate_captions(
        runtime, checkpoint.tokenizer, images, prompt=settings.caption_prompt, max_length=settings.caption_max_length,
        min_length=settings.caption_min_length, num_beams=settings.caption_num_beams if beams is None else beams,
    )  # fmt: skip
    assert pad_ids(captions, expected[ids_key].shape[1], checkpoint.tokenizer.pad_id).tolist() == expected[ids_key].tolist()
    assert [c.text for c in captions] == expected[text_key]
    _close(score_key, torch.tensor([c.logprob for c in captions]), expected[score_key])


def test_vqa_rank_answer(ref: dict) -> None:
    checkpoint, runtime = _runtime(ref, "swin_vqa")
    inp, expected = ref["inputs"], ref["load"]("expected/swin_vqa.pt")
    images = runtime.vision(ref["pixels"][inp["vqa_image_index"]]).image_embeds
    atts = inp["vqa_questions_atts"]
    states = question_states(runtime, images, inp["vqa_questions_ids"], atts, torch.arange(len(images)))
    _close("question_states", states, expected["question_states"])
    top_ids, top_probs, _ = rank_answers(
        runtime, states, atts, inp["vqa_answers_ids"], inp["vqa_answers_atts"], checkpoint.config.tasks.vqa_k_test, checkpoint.tokenizer.pad_id
    )
    assert top_ids.tolist() == expected["topk_ids"].tolist()
    _close("topk_probs", top_probs, expected["topk_probs"])
    answer_list = ref["meta"]["texts"]["vqa_answers"]["answer_list"]
    assert [answer_list[int(row[p.argmax()])] for row, p in zip(top_ids, top_probs)] == expected["pred_answer"]


def test_nlvr_logits(ref: dict) -> None:
    _, runtime = _runtime(ref, "swin_nlvr")
    inp, expected = ref["inputs"], ref["load"]("expected/swin_nlvr.pt")
    pairs = inp["nlvr_image_pairs"]
    images = runtime.vision(ref["pixels"]).image_embeds  # each image once; pairs read them by index
    logits = nlvr_logits(runtime, images, inp["nlvr_ids"], inp["nlvr_atts"], pairs[:, 0], pairs[:, 1])
    _close("cls_logits", logits, expected["cls_logits"])


def test_retrieval_score_matrices(ref: dict) -> None:
    checkpoint, runtime = _runtime(ref, "swin_retrieval")
    inp, expected = ref["inputs"], ref["load"]("expected/swin_retrieval.pt")
    images = runtime.vision(ref["pixels"])
    ids, atts = inp["retrieval_eval_text_ids"], inp["retrieval_eval_text_atts"]  # padded to max_tokens, as official
    scores = retrieval_scores(runtime, images, runtime.text(ids, atts), atts, checkpoint.config.tasks.retrieval_k_test)
    for name, actual in (("official_eval_score_i2t", scores.i2t), ("official_eval_score_t2i", scores.t2i)):
        wanted = expected[name]
        assert torch.equal(actual == UNSCORED, wanted == UNSCORED), f"{name}: re-ranked pairs differ"
        _close(name, actual, wanted)


def test_grounding_boxes(ref: dict) -> None:
    _, runtime = _runtime(ref, "swin_bbox")
    inp, expected = ref["inputs"], ref["load"]("expected/swin_bbox.pt")
    sizes = [(image["width"], image["height"]) for image in ref["meta"]["images"]]
    index = inp["grounding_image_index"]
    images = runtime.vision(ref["pixels"]).image_embeds  # each image once; phrases read them by index
    texts = [g["text"] for g in ref["meta"]["grounding"]]
    boxes = ground_phrases(runtime, images, inp["grounding_ids"], inp["grounding_atts"], index, sizes, texts)
    _close("predict_bbox", torch.tensor([b.raw_cxcywh for b in boxes]), expected["predict_bbox"])
    # The official boxes are not clipped to the image; ours are (Box.clipped), so compare the unclipped mapping.
    raw = torch.tensor([b.raw_cxcywh for b in boxes], dtype=torch.float64)
    xywh = torch.stack([to_original_xywh(box, *sizes[int(i)]) for box, i in zip(raw, index)])
    _close("pred_box_orig_xywh", xywh, expected["pred_box_orig_xywh"], ATOL_PIXELS)
    for box, official in zip(boxes, expected["pred_box_orig_xywh"].tolist()):  # inside the image: exactly the official box
        if not box.clipped:
            x, y, w, h = official
            assert max(abs(a - b) for a, b in zip(box.xyxy, [x, y, x + w, y + h])) <= ATOL_PIXELS


def test_public_api_from_image_files(ref: dict) -> None:
    """End to end through `xvlm_edge.load`: files -> preprocess -> text cleaning -> tasks, as a user calls it."""
    root, meta = ref["dir"], ref["meta"]
    files = [root / "inputs/images" / image["file"] for image in meta["images"]]
    captioner = xvlm_edge.load(root / "checkpoints/swin_captioning.th")
    assert captioner.info["backend"] == "torch" and captioner.info["requested"] == "auto"
    expected = ref["load"]("expected/swin_captioning.pt")
    assert [c.text for c in captioner.caption(files)] == expected["beam3_text"]
    assert [c.text for c in captioner.caption(files, num_beams=1)] == expected["greedy_text"]

    vqa = xvlm_edge.load(root / "checkpoints/swin_vqa.th")
    answer_list = meta["texts"]["vqa_answers"]["answer_list"]
    questions = [q["question"] for q in meta["vqa"]]
    images = [files[q["image"]] for q in meta["vqa"]]
    answers = vqa.answer(images, questions, answer_list)
    assert [a.text for a in answers] == ref["load"]("expected/swin_vqa.pt")["pred_answer"]
