"""Image-text matching: the ITM probability, and `check`, a verdict against a calibrated threshold."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xvlm_edge.runtime import Runtime


@dataclass
class Verdict:
    """verdict: whether the statement holds; score: the probability it was judged on."""

    verdict: bool
    score: float
    threshold: float


def match_probabilities(
    runtime: Runtime, image_embeds: torch.Tensor, text_ids: torch.Tensor, text_atts: torch.Tensor, image_index: torch.Tensor
) -> torch.Tensor:
    """ITM probability (K,) that text k describes image `image_index[k]` (softmax of the ITM head, class 1)."""
    embeds = runtime.text(text_ids, text_atts).text_embeds
    logits = runtime.fusion(embeds, text_atts, image_embeds, image_index).itm_logits
    return logits.softmax(-1)[:, 1]


def verdicts(probabilities: torch.Tensor, threshold: float) -> list[Verdict]:
    """`check`: true when the ITM probability is at or above the checkpoint's `check_threshold`."""
    return [Verdict(bool(p >= threshold), float(p), threshold) for p in probabilities]
