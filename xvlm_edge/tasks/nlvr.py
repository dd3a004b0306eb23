"""NLVR2: is a statement true of a pair of images? The official `model_nlvr` classifier."""

from __future__ import annotations

import torch

from xvlm_edge.graphs import TEXT_CHUNK
from xvlm_edge.runtime import Runtime
from xvlm_edge.tasks.batching import gather_images, row_chunks
from xvlm_edge.tasks.match import Verdict


def nlvr_logits(
    runtime: Runtime,
    image_embeds: torch.Tensor,
    text_ids: torch.Tensor,
    text_atts: torch.Tensor,
    left_index: torch.Tensor,
    right_index: torch.Tensor,
    chunk: int = TEXT_CHUNK,
) -> torch.Tensor:
    """Logits (K, 2) (false, true) of K statements over image pairs (left_index[k], right_index[k])."""
    out = []
    for rows in row_chunks(torch.stack([left_index, right_index], 1), chunk):
        images, left, right = gather_images(image_embeds, left_index[rows], right_index[rows])
        out.append(runtime.nlvr(text_ids[rows], text_atts[rows], images, left, right).cpu())
    return torch.cat(out)


def nlvr_verdicts(logits: torch.Tensor) -> list[Verdict]:
    """The official prediction is the argmax; the probability is the softmax probability of "true"."""
    probs = logits.softmax(-1)[:, 1]
    return [Verdict(bool(row[1] > row[0]), float(p), 0.5) for row, p in zip(logits, probs)]
