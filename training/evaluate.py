"""Evaluate a checkpoint on held-out scenes through the public API: what users run is what is measured.

    python -m training.synthetic --out data/synth-eval --num-scenes 1000 --seed 1
    python -m training.paper --out data/paper-eval --num-scenes 500 --seed 3
    python -m training.evaluate --model runs/tiny_synthetic/model --data data/synth-eval data/paper-eval --json eval.json

Every number goes through `xvlm_edge.load(...)` and its tasks (`retrieve`, `ground`, `check`, `caption`, `answer`)
on the image files, so decoding, the served resize and the served `check` comparison (`p >= check_threshold`)
are the ones users get; `--backend`/`--precision` measure an export the same way. Metrics per data directory:
- retrieval: text->image and image->text R@1 / R@5 of `Model.retrieve` (ITC top k re-ranked by ITM, the
  official procedure) over the directory's scenes as the gallery, each scene's text its canonical caption,
  which other scenes may share (`same_text_r1`, and the `r1_ceiling` that sharing sets);
- grounding: Acc@IoU>=0.5 and mean IoU of `Model.ground` over every region phrase (each names one object),
  in pixels of the original image;
- check: accuracy of `Model.check` verdicts, overall, balanced (the mean of the true and the false statements'
  accuracies) and per statement kind (`synthetic.CHECK_KINDS`);
- caption: BLEU-4 and CIDEr-D (pycocoevalcap) against all of a scene's captions, and `faithful`: the share of
  captions whose every colour+shape pair is in the scene;
- vqa: exact match of `Model.answer`, overall and per question type.
A task whose head the checkpoint lacks is reported as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from training.synthetic import COLORS, PLURALS, SHAPES
from xvlm_edge.text import pre_caption

#: Shape words (singular and plural) -> the shape they name.
_SHAPE_WORDS = {s: s for s in SHAPES} | {p: s for s, p in PLURALS.items()}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _by_image(records: list[dict], names: Sequence[str]) -> dict[str, list[dict]]:
    """Records grouped by image, in the order of `names` (images without records are left out)."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["image"], []).append(record)
    return {n: groups[n] for n in names if n in groups}


def recall_at(ranks: torch.Tensor, k: int) -> float:
    return float((ranks < k).double().mean())


def retrieval(api, paths: Sequence[str], texts: Sequence[str], k: int) -> dict:
    """R@1/R@5 both ways of `Model.retrieve` with scene i's text the i-th; see the module docstring."""
    scores = api.retrieve(list(paths), list(texts), k=k).scores
    truth = torch.arange(len(paths))
    rank_i2t = (scores.i2t > scores.i2t.gather(1, truth[:, None])).sum(1)  # texts scored above the true one
    rank_t2i = (scores.t2i > scores.t2i.gather(1, truth[:, None])).sum(1)
    return {
        "txt_r1": recall_at(rank_i2t, 1), "txt_r5": recall_at(rank_i2t, 5),
        "img_r1": recall_at(rank_t2i, 1), "img_r5": recall_at(rank_t2i, 5),
        "img_r1_same_text": same_text_r1(scores.t2i, texts), "txt_r1_same_text": same_text_r1(scores.i2t, texts),
        "r1_ceiling": float(np.mean([1 / texts.count(t) for t in texts])), "gallery": len(paths), "k_test": k,
    }  # fmt: skip


def same_text_r1(scores: torch.Tensor, texts: Sequence[str]) -> float:
    """Share of queries (rows) whose top-scored item (column) has the same canonical text as the query's own item."""
    top = scores.argmax(1).tolist()
    return float(np.mean([texts[j] == texts[i] for i, j in enumerate(top)]))


def box_iou_xyxy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def grounding(api, root: Path, regions: dict[str, list[dict]]) -> dict:
    """Acc@0.5 and mean IoU of `Model.ground` over the first phrase of every region element."""
    predicted, truth = [], []
    for name, records in regions.items():
        elems = [e for r in records for e in r["elems"]]
        phrases = [e["caption"][0] if isinstance(e["caption"], list) else e["caption"] for e in elems]
        predicted += [box.xyxy for box in api.ground(str(root / name), phrases)]
        truth += [[x, y, x + w, y + h] for x, y, w, h in (e["bb"] for e in elems)]
    iou = box_iou_xyxy(torch.tensor(predicted, dtype=torch.float64), torch.tensor(truth, dtype=torch.float64))
    return {"acc_iou50": float((iou >= 0.5).double().mean()), "mean_iou": float(iou.mean()), "phrases": len(truth)}


def check_accuracy(api, root: Path, checks: dict[str, list[dict]]) -> dict:
    """Accuracy of `Model.check` (the checkpoint's threshold, the served comparison) overall, balanced, per kind."""
    right, labels, kinds = [], [], []
    for name, records in checks.items():
        verdicts = api.check(str(root / name), [r["statement"] for r in records])
        right += [v.verdict == bool(r["label"]) for v, r in zip(verdicts, records)]
        labels += [bool(r["label"]) for r in records]
        kinds += [r.get("type", "count") for r in records]
    right_a, labels_a = np.array(right), np.array(labels)
    by_kind = {k: {"accuracy": float(right_a[[x == k for x in kinds]].mean()), "statements": kinds.count(k)} for k in sorted(set(kinds))}
    return {
        "accuracy": float(right_a.mean()),
        "balanced_accuracy": float((right_a[labels_a].mean() + right_a[~labels_a].mean()) / 2),
        "threshold": api.config.check_threshold,
        "statements": len(right),
        "by_kind": by_kind,
    }


def check_probabilities(api, root: Path, num_scenes: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(`Model.match` probability, label) of every `check.jsonl` statement about the first `num_scenes` scenes."""
    root = Path(root)
    names = [r["image"] for r in read_jsonl(root / "captions.jsonl")]
    names = names[:num_scenes] if num_scenes else names
    probs, labels = [], []
    for name, records in _by_image(read_jsonl(root / "check.jsonl"), names).items():
        probs += api.match(str(root / name), [r["statement"] for r in records])
        labels += [bool(r["label"]) for r in records]
    return torch.tensor(probs, dtype=torch.float64), torch.tensor(labels)


def calibrate_check_threshold(api, root: Path, num_scenes: int = 0) -> tuple[float, float]:
    """(threshold, accuracy): the cut with the best accuracy of the served verdict `p >= threshold` on held-out
    statements, probabilities from `Model.match`, the path `Model.check` serves.

    Candidates are the midpoints between consecutive distinct probabilities (and 0.5), so the chosen cut never
    sits on a calibration sample; ties go to the candidate closest to 0.5.
    """
    probs, labels = check_probabilities(api, root, num_scenes)
    ordered = probs.unique()  # sorted
    candidates = torch.cat([ordered.new_tensor([0.5]), (ordered[1:] + ordered[:-1]) / 2])
    accuracy = ((probs[None] >= candidates[:, None]) == labels[None]).double().mean(1)
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


def named_pairs(caption: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a caption names: a colour word directly followed by a shape word."""
    words = pre_caption(caption).split()
    return {(a, _SHAPE_WORDS[b]) for a, b in pairwise(words) if a in COLORS and b in _SHAPE_WORDS}


def faithfulness(predictions: Sequence[str], scenes: Sequence[dict]) -> dict:
    """Share of captions naming only colour+shape pairs present in their scene (`faithful`), and naming at least one."""
    named = [named_pairs(p) for p in predictions]
    present = [{(o["color"], o["shape"]) for o in s["objects"]} for s in scenes]
    return {
        "faithful": float(np.mean([n <= p for n, p in zip(named, present)])),
        "names_a_pair": float(np.mean([bool(n) for n in named])),
    }


def exact_match_by_type(hits: Sequence[bool], types: Sequence[str]) -> dict[str, dict[str, float]]:
    """VQA exact match per question type (colour, count, shape, ...) and how many questions each has."""
    out: dict[str, dict[str, float]] = {}
    for kind in sorted(set(types)):
        mine = [h for h, t in zip(hits, types) if t == kind]
        out[kind] = {"exact_match": float(np.mean(mine)), "questions": len(mine)}
    return out


def evaluate_directory(api, data_dir: str | Path, *, num_scenes: int = 0, k_test: int = 16, vqa_questions: int = 0) -> dict:
    """Every metric of the module docstring on one data directory (`training.synthetic` / `training.paper`)."""
    root = Path(data_dir)
    captions = read_jsonl(root / "captions.jsonl")
    captions = captions[:num_scenes] if num_scenes else captions
    names = [r["image"] for r in captions]
    paths = [str(root / n) for n in names]
    heads = set(api.config.heads)
    result: dict = {"data": str(root), "scenes": len(names)}

    def skipped(head: str) -> dict:
        return {"skipped": f"the checkpoint has no {head!r} head (heads: {sorted(heads)})"}

    texts = [r["caption"][0] for r in captions]
    result["retrieval"] = retrieval(api, paths, texts, min(k_test, len(paths))) if {"itc", "itm"} <= heads else skipped("itc/itm")
    result["grounding"] = grounding(api, root, _by_image(read_jsonl(root / "regions.jsonl"), names)) if "bbox" in heads else skipped("bbox")
    result["check"] = check_accuracy(api, root, _by_image(read_jsonl(root / "check.jsonl"), names)) if "itm" in heads else skipped("itm")
    if "caption" in heads:
        predicted = [c.text for c in api.caption(paths)]
        scenes = {s["image"]: s for s in read_jsonl(root / "scenes.jsonl")}
        result["caption"] = caption_metrics(predicted, [r["caption"] for r in captions]) | faithfulness(predicted, [scenes[n] for n in names])
    else:
        result["caption"] = skipped("caption")
    if "vqa" in heads:
        qa = [r for r in read_jsonl(root / "vqa.jsonl") if r["image"] in set(names)]
        qa = qa[:vqa_questions] if vqa_questions else qa
        answers = api.answer([str(root / r["image"]) for r in qa], [r["question"] for r in qa])
        hits = [a.text.strip() in {x.strip().lower() for x in r["answer"]} for a, r in zip(answers, qa)]
        types = [r.get("type", "other") for r in qa]
        result["vqa"] = {"exact_match": float(np.mean(hits)), "questions": len(qa), "by_type": exact_match_by_type(hits, types)}
    else:
        result["vqa"] = skipped("vqa")
    return result


def evaluate(
    model_dir: str | Path,
    data_dirs: str | Path | Sequence[str | Path],
    *,
    backend: str = "torch",
    precision: str = "fp32",
    num_scenes: int = 0,
    k_test: int = 16,
    vqa_questions: int = 0,
    threads: int | None = None,
) -> dict:
    """`evaluate_directory` on each data directory, with the model loaded as users load it."""
    import xvlm_edge

    api = xvlm_edge.load(model_dir, backend=backend, precision=precision, threads=threads)
    dirs = [data_dirs] if isinstance(data_dirs, (str, Path)) else list(data_dirs)
    sets = {Path(d).name: evaluate_directory(api, d, num_scenes=num_scenes, k_test=k_test, vqa_questions=vqa_questions) for d in dirs}
    return {"model": str(model_dir), "backend": backend, "precision": precision, "heads": sorted(api.config.heads), "sets": sets}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory (xvlm_edge format)")
    parser.add_argument("--data", required=True, nargs="+", help="held-out directories (training.synthetic, training.paper)")
    parser.add_argument("--backend", default="torch", help="xvlm_edge.load backend (an export is measured as it is served)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--json", type=Path, help="write the metrics here as JSON")
    parser.add_argument("--num-scenes", type=int, default=0, help="evaluate the first N scenes of each directory only (0: all)")
    parser.add_argument("--k-test", type=int, default=16, help="ITM re-ranking depth for retrieval")
    parser.add_argument("--vqa-questions", type=int, default=0, help="VQA on the first N questions only (0: all)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: xvlm_edge.load's choice)")
    args = parser.parse_args(argv)
    result = evaluate(
        args.model, args.data, backend=args.backend, precision=args.precision,
        num_scenes=args.num_scenes, k_test=args.k_test, vqa_questions=args.vqa_questions, threads=args.threads,
    )  # fmt: skip
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
