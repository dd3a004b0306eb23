"""The accuracy gate: task metrics of a quantized runtime against the fp32 torch reference, and the verdict.

Measured on an eval set of images (the user's, or `quantize.synthetic_images`) and fixed phrases, through the
public task code (`api.Model`), so what is gated is what a user gets:
- caption: fraction of images whose caption token ids are identical (and the mean per-position agreement);
- ground: mean IoU of the boxes; match: agreement of the `check` verdict (p >= the checkpoint's
  `check_threshold`, what a user is told) and the mean |dp|;
- answer: fraction of identical generated answers; nlvr: verdict agreement;
- vision: mean cosine of the image embeddings (every model has it).
An export whose metrics fall below `Thresholds` raises AccuracyGateError, unless forced.

The reference's outputs are collected once (`collect`) and compared with each candidate's (`compare`), and a
candidate can be run on only the tasks of the metrics in question: the INT8 plan search re-measures one
change at a time. `METRIC_GRAPHS` says which graphs each metric runs through, the suspects when it fails.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch

from xvlm_edge.errors import EngineError

log = logging.getLogger(__name__)

#: Phrases of the eval set: the grounding, matching and NLVR statements, and the VQA questions' subjects.
EVAL_PHRASES = ("a red square", "the circle on the left", "a blue shape in the corner", "two objects on a plain background")
EVAL_QUESTIONS = ("what color is the square?", "how many shapes are there?")


@dataclass(frozen=True)
class Thresholds:
    """Least acceptable value of each metric (the issue's acceptance numbers for caption and ground)."""

    caption_agreement: float = 0.95
    ground_iou: float = 0.9
    itm_agreement: float = 0.95
    answer_agreement: float = 0.95
    nlvr_agreement: float = 0.95
    vision_cosine: float = 0.99


class AccuracyGateError(EngineError):
    """The quantized export lost more accuracy than the thresholds allow; `metrics` and `failures` say how."""

    def __init__(self, metrics: dict[str, float], failures: list[str]) -> None:
        super().__init__(
            "INT8 export refused by the accuracy gate: " + "; ".join(failures),
            hint="recalibrate on representative images (--calibration DIR), exclude sensitive layers (--exclude), or --force",
        )
        self.metrics = metrics
        self.failures = failures


def box_iou(a: list[float], b: list[float]) -> float:
    """IoU of two [x1, y1, x2, y2] boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


#: The task that measures each metric.
METRIC_TASK = {
    "vision_cosine": "vision",
    "caption_agreement": "caption",
    "caption_token_agreement": "caption",
    "ground_iou": "ground",
    "itm_agreement": "match",
    "itm_mean_abs_diff": "match",
    "answer_agreement": "answer",
    "nlvr_agreement": "nlvr",
}
#: The graphs each task runs through (the gate's tasks: cached captions, open-ended answers).
TASK_GRAPHS = {
    "vision": ("vision",),
    "caption": ("vision", "caption_cross_kv", "caption_step"),
    "ground": ("vision", "text", "fusion"),
    "match": ("vision", "text", "fusion"),
    "answer": ("vision", "multimodal", "answer_cross_kv", "answer_step"),
    "nlvr": ("vision", "nlvr"),
}
#: The head each task needs (`vision` runs on every model).
_TASK_HEAD = {"caption": "caption", "ground": "bbox", "match": "itm", "answer": "vqa", "nlvr": "nlvr"}


def gate_tasks(heads) -> tuple[str, ...]:
    """The gate's tasks for a model with `heads`."""
    return ("vision", *(task for task, head in _TASK_HEAD.items() if head in heads))


def collect(model, images: list[np.ndarray], tasks: tuple[str, ...]) -> dict:
    """What `model` (an `api.Model`) gives on `images` for each of `tasks`, as the gate compares it."""
    out: dict = {}
    if "vision" in tasks:
        out["vision"] = model._encode_images(images).image_embeds.flatten(1)
    if "caption" in tasks:
        out["caption"] = [c.token_ids for c in model.caption(images)]
    if "ground" in tasks:
        out["ground"] = [[b.xyxy for b in model.ground(image, list(EVAL_PHRASES))] for image in images]
    if "match" in tasks:
        out["match"] = np.array([model.match(image, list(EVAL_PHRASES)) for image in images])
    if "answer" in tasks:
        out["answer"] = [[a.text for a in model.answer(image, list(EVAL_QUESTIONS))] for image in images]
    if "nlvr" in tasks:
        pairs = zip(images[::2], images[1::2])
        out["nlvr"] = [[v.verdict for v in model.nlvr(left, right, list(EVAL_PHRASES))] for left, right in pairs]
    return out


def compare(reference: dict, candidate: dict, check_threshold: float) -> dict[str, float]:
    """The gate's metrics for every task both `collect` results have."""
    metrics: dict[str, float] = {}
    if "vision" in candidate:
        metrics["vision_cosine"] = float(torch.nn.functional.cosine_similarity(reference["vision"], candidate["vision"]).mean())
    if "caption" in candidate:
        pairs = list(zip(reference["caption"], candidate["caption"]))
        metrics["caption_agreement"] = float(np.mean([r == c for r, c in pairs]))
        metrics["caption_token_agreement"] = float(np.mean([np.mean([x == y for x, y in zip(r, c)]) for r, c in pairs]))
    if "ground" in candidate:
        ious = [box_iou(r, c) for rs, cs in zip(reference["ground"], candidate["ground"]) for r, c in zip(rs, cs)]
        metrics["ground_iou"] = float(np.mean(ious))
    if "match" in candidate:
        ref_p, cand_p = reference["match"], candidate["match"]
        metrics["itm_agreement"] = float(np.mean((ref_p >= check_threshold) == (cand_p >= check_threshold)))
        metrics["itm_mean_abs_diff"] = float(np.abs(ref_p - cand_p).mean())
    for task in ("answer", "nlvr"):
        if task in candidate:
            agree = [r == c for rs, cs in zip(reference[task], candidate[task]) for r, c in zip(rs, cs)]
            metrics[f"{task}_agreement"] = float(np.mean(agree))
    return metrics


def measure(reference, candidate, images: list[np.ndarray]) -> dict[str, float]:
    """Metrics of `candidate` against `reference` (two `api.Model`s of one checkpoint) on `images`."""
    tasks = gate_tasks(reference.config.heads)
    metrics = compare(collect(reference, images, tasks), collect(candidate, images, tasks), reference.config.check_threshold)
    return {"eval_images": float(len(images)), **metrics}


def failures(metrics: dict[str, float], thresholds: Thresholds) -> list[str]:
    """One line per metric below its threshold."""
    out = []
    for name, least in asdict(thresholds).items():
        if name in metrics and metrics[name] < least:
            out.append(f"{name} {metrics[name]:.4f} < {least}")
    return out


def gate(metrics: dict[str, float], thresholds: Thresholds, force: bool) -> dict:
    """The gate's record for the manifest; raises AccuracyGateError on failure unless `force`."""
    failed = failures(metrics, thresholds)
    if failed and not force:
        raise AccuracyGateError(metrics, failed)
    if failed:
        log.warning("accuracy gate FAILED but forced: %s", "; ".join(failed))
    return {"metrics": metrics, "thresholds": asdict(thresholds), "passed": not failed, "forced": bool(failed), "failures": failed}


__all__ = [
    "METRIC_TASK",
    "TASK_GRAPHS",
    "AccuracyGateError",
    "Thresholds",
    "box_iou",
    "collect",
    "compare",
    "failures",
    "gate",
    "gate_tasks",
    "measure",
]
