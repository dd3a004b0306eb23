"""Evaluate a checkpoint on held-out synthetic scenes: retrieval, grounding, check, and (with those heads) caption/VQA.

    python -m training.synthetic --out data/synth-eval --num-scenes 1000 --seed 1
    python -m training.evaluate --model runs/tiny_synthetic/model --data data/synth-eval --json eval.json

Metrics (the held-out scenes are the retrieval gallery):
- text->image and image->text R@1 / R@5 with the official procedure: ITC similarity, then the top `k` re-ranked
  by the ITM positive logit (`Retrieval.py::evaluation`); the text of a scene is its canonical caption, which
  other scenes may share (see `retrieval`: the same-text R@1 and the ceiling that sharing sets);
- grounding Acc@IoU>=0.5 over every region description (`regions.jsonl`, first phrase of each element), boxes
  compared in pixels of the original image;
- `check` accuracy: ITM probability > the checkpoint's `check_threshold` vs the statement's label;
- caption BLEU-4 and CIDEr-D (pycocoevalcap, the COCO caption evaluation code) and VQA exact match, when the
  checkpoint has a `caption` / `vqa` head; otherwise reported as null with the reason.
Images go through the same resize as training without augmentation (`training.data`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from training import data as D
from xvlm_edge.checkpoint import load_directory
from xvlm_edge.config import ModelConfig
from xvlm_edge.models.xvlm import XVLM
from xvlm_edge.text import pre_caption
from xvlm_edge.tokenizer import Tokenizer


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_pixels(root: Path, names: Sequence[str], res: int) -> torch.Tensor:
    """(N, 3, res, res) CLIP-normalised, the training transform without augmentation."""
    images = [D.to_tensor(D.resize(D.decode_image((root / n).read_bytes()), res, res)) for n in names]
    return torch.stack(images)


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer.encode([pre_caption(t) for t in texts], max_length=max_tokens)
    return enc.input_ids, enc.attention_mask


@torch.no_grad()
def encode_images(model: XVLM, pixels: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    return torch.cat([model.encode_image(pixels[i : i + chunk]) for i in range(0, len(pixels), chunk)])


@torch.no_grad()
def itm_scores(model: XVLM, images: torch.Tensor, image_index: torch.Tensor, text_embeds: torch.Tensor,
               text_atts: torch.Tensor, chunk: int = 256) -> torch.Tensor:  # fmt: skip
    """ITM logits (K, 2) of text k with image image_index[k]; images are projected once and indexed."""
    out = []
    for i in range(0, len(image_index), chunk):
        rows = slice(i, i + chunk)
        context = model.image_context(images, index=image_index[rows])
        out.append(model.itm_logits(model.fuse(text_embeds[rows], text_atts[rows], context)))
    return torch.cat(out)


def recall_at(ranks: torch.Tensor, k: int) -> float:
    return float((ranks < k).double().mean())


@torch.no_grad()
def retrieval(model: XVLM, images: torch.Tensor, text_ids: torch.Tensor, text_atts: torch.Tensor, k: int,
              texts: Sequence[str] | None = None) -> dict:  # fmt: skip
    """Official `Retrieval.py` scoring: ITC for all pairs, ITM logit for each query's top k, -100 elsewhere.

    R@K counts the scene's own image (text). Synthetic scenes can share a canonical caption ("three green
    diamonds"), which caps R@1 below 1 for any model; given `texts`, `*_r1_same_text` also counts a top-1 whose
    caption is the same text, and `r1_ceiling` is the best R@1 a model that only reads the text can reach.
    """
    n = len(images)
    text_embeds = model.encode_text(text_ids, text_atts)
    sim = model.image_features(images) @ model.text_features(text_embeds).t()  # (N images, N texts)
    k = min(k, n)
    score_i2t = torch.full_like(sim, -100.0)
    top = sim.topk(k, dim=1).indices  # (N, k) texts per image
    image_index = torch.arange(n).repeat_interleave(k)
    score_i2t.scatter_(1, top, itm_scores(model, images, image_index, text_embeds[top.flatten()], text_atts[top.flatten()])[:, 1].view(n, k))
    score_t2i = torch.full_like(sim.t(), -100.0)
    top = sim.t().topk(k, dim=1).indices  # (N, k) images per text
    text_rows = torch.arange(n).repeat_interleave(k)
    logits = itm_scores(model, images, top.flatten(), text_embeds[text_rows], text_atts[text_rows])[:, 1]
    score_t2i.scatter_(1, top, logits.view(n, k))
    truth = torch.arange(n)
    rank_i2t = (score_i2t > score_i2t.gather(1, truth[:, None])).sum(1)  # texts scored above the true one
    rank_t2i = (score_t2i > score_t2i.gather(1, truth[:, None])).sum(1)
    result = {
        "txt_r1": recall_at(rank_i2t, 1), "txt_r5": recall_at(rank_i2t, 5),
        "img_r1": recall_at(rank_t2i, 1), "img_r5": recall_at(rank_t2i, 5),
        "gallery": n, "k_test": k,
    }  # fmt: skip
    if texts is not None:
        result["img_r1_same_text"] = same_text_r1(score_t2i, texts)
        result["txt_r1_same_text"] = same_text_r1(score_i2t, texts)
        result["r1_ceiling"] = float(np.mean([1 / texts.count(t) for t in texts]))
    return result


def same_text_r1(scores: torch.Tensor, texts: Sequence[str]) -> float:
    """Share of queries (rows) whose top-scored item (column) has the same canonical text as the query's own item."""
    top = scores.argmax(1).tolist()
    return float(np.mean([texts[j] == texts[i] for i, j in enumerate(top)]))


def box_iou_xyxy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@torch.no_grad()
def grounding(model: XVLM, tokenizer: Tokenizer, images: torch.Tensor, sizes: torch.Tensor, records: list[dict],
              image_of: dict[str, int], max_tokens: int) -> dict:  # fmt: skip
    phrases, index, truth = [], [], []
    for record in records:
        for elem in record["elems"]:
            captions = elem["caption"] if isinstance(elem["caption"], list) else [elem["caption"]]
            phrases.append(captions[0])
            index.append(image_of[record["image"]])
            x, y, w, h = elem["bb"]
            truth.append([x, y, x + w, y + h])
    index_t = torch.tensor(index)
    ids, atts = encode_texts(tokenizer, phrases, max_tokens)
    preds = []
    for i in range(0, len(phrases), 256):
        rows = slice(i, i + 256)
        fused = model.fuse(model.encode_text(ids[rows], atts[rows]), atts[rows], model.image_context(images, index=index_t[rows]))
        preds.append(model.predict_bbox(fused))
    cx, cy, w, h = torch.cat(preds).double().unbind(-1)  # normalised to the squashed image = to the original
    wh = sizes[index_t].double()  # (K, 2) original width, height
    pred = torch.stack([(cx - w / 2) * wh[:, 0], (cy - h / 2) * wh[:, 1], (cx + w / 2) * wh[:, 0], (cy + h / 2) * wh[:, 1]], 1)
    iou = box_iou_xyxy(pred, torch.tensor(truth, dtype=torch.float64))
    return {"acc_iou50": float((iou >= 0.5).double().mean()), "mean_iou": float(iou.mean()), "phrases": len(phrases)}


@torch.no_grad()
def check_accuracy(model: XVLM, tokenizer: Tokenizer, images: torch.Tensor, records: list[dict], image_of: dict[str, int],
                   max_tokens: int, threshold: float) -> dict:  # fmt: skip
    ids, atts = encode_texts(tokenizer, [r["statement"] for r in records], max_tokens)
    index = torch.tensor([image_of[r["image"]] for r in records])
    probs = itm_scores(model, images, index, model.encode_text(ids, atts), atts).softmax(-1)[:, 1]
    labels = torch.tensor([bool(r["label"]) for r in records])
    return {"accuracy": float(((probs > threshold) == labels).float().mean()), "threshold": threshold, "statements": len(records)}


@torch.no_grad()
def check_probabilities(model: XVLM, tokenizer: Tokenizer, root: Path, config: ModelConfig,
                        num_scenes: int = 0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(ITM match probability, label) of every `check.jsonl` statement about the first `num_scenes` scenes."""
    names = [r["image"] for r in read_jsonl(root / "captions.jsonl")]
    names = names[:num_scenes] if num_scenes else names
    image_of = {name: i for i, name in enumerate(names)}
    records = [r for r in read_jsonl(root / "check.jsonl") if r["image"] in image_of]
    images = encode_images(model, load_pixels(root, names, config.vision.image_res))
    ids, atts = encode_texts(tokenizer, [r["statement"] for r in records], config.max_tokens)
    index = torch.tensor([image_of[r["image"]] for r in records])
    probs = itm_scores(model, images, index, model.encode_text(ids, atts), atts).softmax(-1)[:, 1]
    return probs, torch.tensor([bool(r["label"]) for r in records])


def calibrate_check_threshold(model: XVLM, tokenizer: Tokenizer, root: Path, config: ModelConfig,
                              num_scenes: int = 0) -> tuple[float, float]:  # fmt: skip
    """(threshold, accuracy): the `probs > threshold` cut with the best accuracy on held-out statements.

    Candidates are the midpoints between consecutive sorted probabilities (and 0.5), so the chosen cut never
    sits on a calibration sample; ties go to the candidate closest to 0.5.
    """
    probs, labels = check_probabilities(model, tokenizer, Path(root), config, num_scenes)
    ordered = probs.double().sort().values
    candidates = torch.cat([ordered.new_tensor([0.5]), (ordered[1:] + ordered[:-1]) / 2])
    accuracy = ((probs.double()[None] > candidates[:, None]) == labels[None]).double().mean(1)
    best = accuracy.max()
    pick = torch.where(accuracy == best, (candidates - 0.5).abs(), torch.inf).argmin()
    return float(candidates[pick]), float(best)


def caption_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """BLEU-4 and CIDEr-D of pycocoevalcap on `pre_caption`-normalised, whitespace-tokenised text."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    res = {i: [pre_caption(p) if p.strip() else ""] for i, p in enumerate(predictions)}
    gts = {i: [pre_caption(r) for r in refs] for i, refs in enumerate(references)}
    with contextlib.redirect_stdout(sys.stderr):  # Bleu prints its ratio
        bleu, _ = Bleu(4).compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider_d": float(cider)}


def evaluate(
    model_dir: str | Path, data_dir: str | Path, *, num_scenes: int = 0, k_test: int = 16, vqa_questions: int = 0
) -> dict:
    checkpoint = load_directory(model_dir)
    model, tokenizer, config = checkpoint.model.eval(), checkpoint.tokenizer, checkpoint.config
    root = Path(data_dir)
    captions = read_jsonl(root / "captions.jsonl")
    if num_scenes:
        captions = captions[:num_scenes]
    names = [r["image"] for r in captions]
    image_of = {name: i for i, name in enumerate(names)}
    pixels = load_pixels(root, names, config.vision.image_res)
    sizes = torch.tensor([D.decode_image((root / n).read_bytes()).shape[1::-1] for n in names])  # (N, 2) w, h
    images = encode_images(model, pixels)
    max_tokens = config.max_tokens
    heads = set(config.heads)
    result: dict = {"model": str(model_dir), "data": str(data_dir), "scenes": len(names), "heads": sorted(heads)}

    if {"itc", "itm"} <= heads:
        texts = [r["caption"][0] for r in captions]
        ids, atts = encode_texts(tokenizer, texts, max_tokens)
        result["retrieval"] = retrieval(model, images, ids, atts, k_test, texts)
    if "bbox" in heads:
        regions = [r for r in read_jsonl(root / "regions.jsonl") if r["image"] in image_of]
        result["grounding"] = grounding(model, tokenizer, images, sizes, regions, image_of, max_tokens)
    if "itm" in heads:
        checks = [r for r in read_jsonl(root / "check.jsonl") if r["image"] in image_of]
        result["check"] = check_accuracy(model, tokenizer, images, checks, image_of, max_tokens, config.check_threshold)
    for task, head in (("caption", "caption"), ("vqa", "vqa")):
        if head not in heads:
            result[task] = {"skipped": f"the checkpoint has no {head!r} head (heads: {sorted(heads)})"}
    if "caption" in heads or "vqa" in heads:
        import xvlm_edge

        api = xvlm_edge.load(model_dir)
        if "caption" in heads:
            predicted = [c.text for c in api.caption([str(root / n) for n in names])]
            result["caption"] = caption_metrics(predicted, [r["caption"] for r in captions])
        if "vqa" in heads:
            qa = [r for r in read_jsonl(root / "vqa.jsonl") if r["image"] in image_of]
            qa = qa[:vqa_questions] if vqa_questions else qa
            answers = api.answer([str(root / r["image"]) for r in qa], [r["question"] for r in qa])
            hits = [a.text.strip() in {x.strip().lower() for x in r["answer"]} for a, r in zip(answers, qa)]
            result["vqa"] = {"exact_match": float(np.mean(hits)), "questions": len(qa),
                             "by_type": exact_match_by_type(hits, [r.get("type", "other") for r in qa])}
    return result


def exact_match_by_type(hits: Sequence[bool], types: Sequence[str]) -> dict[str, dict[str, float]]:
    """VQA exact match per question type (colour, count, shape, ...) and how many questions each has."""
    out: dict[str, dict[str, float]] = {}
    for kind in sorted(set(types)):
        mine = [h for h, t in zip(hits, types) if t == kind]
        out[kind] = {"exact_match": float(np.mean(mine)), "questions": len(mine)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory (xvlm_edge format)")
    parser.add_argument("--data", required=True, help="held-out synthetic directory (python -m training.synthetic)")
    parser.add_argument("--json", type=Path, help="write the metrics here as JSON")
    parser.add_argument("--num-scenes", type=int, default=0, help="evaluate the first N scenes only (0: all)")
    parser.add_argument("--k-test", type=int, default=16, help="ITM re-ranking depth for retrieval")
    parser.add_argument("--vqa-questions", type=int, default=0, help="VQA on the first N questions only (0: all)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = evaluate(args.model, args.data, num_scenes=args.num_scenes, k_test=args.k_test, vqa_questions=args.vqa_questions)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
