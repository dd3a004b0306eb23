"""Image-text matching: the ITM probability, and `check`, a verdict against a calibrated threshold."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xvlm_edge.graphs import TEXT_CHUNK
from xvlm_edge.runtime import Runtime
from xvlm_edge.tasks.batching import gather_images, row_chunks, trim


@dataclass
class Verdict:
    """Whether a statement holds.

    verdict: `probability >= threshold` (`check`), or the classifier's argmax (`nlvr`, threshold 0.5).
    probability: in [0, 1], the model's probability that the statement is true of the image(s): the ITM
    head's softmax, class "match" (`check`), or the NLVR2 head's softmax, class "true" (`nlvr`).
    threshold: the probability the verdict was judged against.
    """

    verdict: bool
    probability: float
    threshold: float

    @property
    def score(self) -> float:
        """The same number as `probability` (every result's `score` is a probability in [0, 1])."""
        return self.probability


def match_logits(
    runtime: Runtime,
    image_embeds: torch.Tensor,
    text_ids: torch.Tensor,
    text_atts: torch.Tensor,
    image_index: torch.Tensor,
    chunk: int = TEXT_CHUNK,
) -> torch.Tensor:
    """ITM logits (K, 2) (no match, match) of text k against image `image_index[k]`, `chunk` texts per call."""
    out = []
    for rows in row_chunks(image_index, chunk):
        ids, atts = trim(text_ids[rows], text_atts[rows])
        embeds = runtime.text(ids, atts).text_embeds
        images, index = gather_images(image_embeds, image_index[rows])
        out.append(runtime.fusion(embeds, atts, images, index).itm_logits.cpu())
    return torch.cat(out)


def match_probabilities(
    runtime: Runtime,
    image_embeds: torch.Tensor,
    text_ids: torch.Tensor,
    text_atts: torch.Tensor,
    image_index: torch.Tensor,
    chunk: int = TEXT_CHUNK,
) -> torch.Tensor:
    """ITM probability (K,) that text k describes image `image_index[k]` (softmax of the ITM head, class 1)."""
    return match_logits(runtime, image_embeds, text_ids, text_atts, image_index, chunk).softmax(-1)[:, 1]


def verdicts(probabilities: torch.Tensor, threshold: float) -> list[Verdict]:
    """`check`: true when the ITM probability is at or above `threshold` (by default the checkpoint's `check_threshold`)."""
    return [Verdict(bool(p >= threshold), float(p), threshold) for p in probabilities]
