"""The accuracy gate: task metrics of a quantized runtime against the fp32 torch reference, and the verdict.

Measured on an eval set of images (the user's, or `quantize.synthetic_images`) and fixed phrases, through the
public task code (`api.Model`), so what is gated is what a user gets:
- caption: fraction of images whose caption token ids are identical (and the mean per-position agreement);
- ground: mean IoU of the boxes; match: agreement of the ITM decision (p >= 0.5) and the mean |dp|;
- answer: fraction of identical generated answers; nlvr: verdict agreement;
- vision: mean cosine of the image embeddings (every model has it).
An export whose metrics fall below `Thresholds` raises AccuracyGateError, unless forced.
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


def measure(reference, candidate, images: list[np.ndarray]) -> dict[str, float]:
    """Metrics of `candidate` against `reference` (two `api.Model`s of one checkpoint) on `images`."""
    heads = set(reference.config.heads)
    metrics: dict[str, float] = {"eval_images": float(len(images))}
    ref_enc = reference._encode_images(images).image_embeds.flatten(1)
    cand_enc = candidate._encode_images(images).image_embeds.flatten(1)
    metrics["vision_cosine"] = float(torch.nn.functional.cosine_similarity(ref_enc, cand_enc).mean())
    if "caption" in heads:
        ref, cand = reference.caption(images), candidate.caption(images)
        metrics["caption_agreement"] = float(np.mean([r.token_ids == c.token_ids for r, c in zip(ref, cand)]))
        per_token = [np.mean([x == y for x, y in zip(r.token_ids, c.token_ids)]) for r, c in zip(ref, cand)]
        metrics["caption_token_agreement"] = float(np.mean(per_token))
    if "bbox" in heads:
        ious = []
        for image in images:
            for r, c in zip(reference.ground(image, list(EVAL_PHRASES)), candidate.ground(image, list(EVAL_PHRASES))):
                ious.append(box_iou(r.xyxy, c.xyxy))
        metrics["ground_iou"] = float(np.mean(ious))
    if "itm" in heads:
        ref_p = np.array([reference.match(i, list(EVAL_PHRASES)) for i in images])
        cand_p = np.array([candidate.match(i, list(EVAL_PHRASES)) for i in images])
        metrics["itm_agreement"] = float(np.mean((ref_p >= 0.5) == (cand_p >= 0.5)))
        metrics["itm_mean_abs_diff"] = float(np.abs(ref_p - cand_p).mean())
    if "vqa" in heads:
        agree = []
        for image in images:
            ref_a = reference.answer(image, list(EVAL_QUESTIONS))
            cand_a = candidate.answer(image, list(EVAL_QUESTIONS))
            agree += [r.text == c.text for r, c in zip(ref_a, cand_a)]
        metrics["answer_agreement"] = float(np.mean(agree))
    if "nlvr" in heads:
        agree = []
        for left, right in zip(images[::2], images[1::2]):
            ref_v = reference.nlvr(left, right, list(EVAL_PHRASES))
            cand_v = candidate.nlvr(left, right, list(EVAL_PHRASES))
            agree += [r.verdict == c.verdict for r, c in zip(ref_v, cand_v)]
        metrics["nlvr_agreement"] = float(np.mean(agree))
    return metrics


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


__all__ = ["AccuracyGateError", "Thresholds", "box_iou", "failures", "gate", "measure"]
