"""Image-text retrieval: the official `Retrieval.py::evaluation`, ITC top-k then ITM re-ranking.

Each image is compared with every text by ITC similarity (no temperature); its k most similar texts are
re-scored by the raw positive ITM logit, and likewise each text's k most similar images. Everything else
stays at -100, as in the official score matrices. Unlike the official loop, an (image, text) pair asked
for by both directions is fused once, each candidate text is cut to the longest in its chunk instead of
`max_tokens`, and the image K/V are projected once per image, not once per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xvlm_edge.graphs import TEXT_CHUNK, ImageEncoding, TextEncoding
from xvlm_edge.runtime import Runtime

#: Official value of the score matrices outside the re-ranked top-k.
UNSCORED = -100.0


@dataclass
class RetrievalScores:
    """i2t (I, T) and t2i (T, I): the raw ITM logit for re-ranked pairs, -100 elsewhere; sims (I, T) ITC."""

    i2t: torch.Tensor
    t2i: torch.Tensor
    sims: torch.Tensor

    def ranked_texts(self, image: int) -> list[tuple[int, float]]:
        """(text index, score) of the re-ranked texts of `image`, best first."""
        return _ranked(self.i2t[image])

    def ranked_images(self, text: int) -> list[tuple[int, float]]:
        return _ranked(self.t2i[text])


def _ranked(row: torch.Tensor) -> list[tuple[int, float]]:
    order = torch.argsort(row, descending=True, stable=True)
    return [(int(i), float(row[i])) for i in order if row[i] > UNSCORED]


def retrieval_scores(
    runtime: Runtime, images: ImageEncoding, texts: TextEncoding, text_atts: torch.Tensor, k: int, chunk: int = TEXT_CHUNK
) -> RetrievalScores:
    """The official score matrices for I encoded images and T encoded texts, re-ranking the top `k`."""
    sims = images.image_feat @ texts.text_feat.T  # (I, T)
    num_images, num_texts = sims.shape
    top_texts = sims.topk(min(k, num_texts), dim=1).indices  # (I, k)
    top_images = sims.T.topk(min(k, num_images), dim=1).indices  # (T, k)
    i2t_pairs = torch.stack([torch.arange(num_images).repeat_interleave(top_texts.shape[1]), top_texts.flatten()], 1)
    t2i_pairs = torch.stack([top_images.flatten(), torch.arange(num_texts).repeat_interleave(top_images.shape[1])], 1)
    pairs, where = torch.unique(torch.cat([i2t_pairs, t2i_pairs]), dim=0, return_inverse=True)  # (P, 2) (image, text)
    scores = itm_scores(runtime, images.image_embeds, texts.text_embeds, text_atts, pairs[:, 0], pairs[:, 1], chunk)
    i2t = torch.full((num_images, num_texts), UNSCORED)
    t2i = torch.full((num_texts, num_images), UNSCORED)
    n = len(i2t_pairs)
    i2t[i2t_pairs[:, 0], i2t_pairs[:, 1]] = scores[where[:n]]
    t2i[t2i_pairs[:, 1], t2i_pairs[:, 0]] = scores[where[n:]]
    return RetrievalScores(i2t, t2i, sims)


def itm_scores(
    runtime: Runtime,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_atts: torch.Tensor,
    image_rows: torch.Tensor,
    text_rows: torch.Tensor,
    chunk: int = TEXT_CHUNK,
) -> torch.Tensor:
    """Raw positive ITM logit (P,) of pairs (image_rows[p], text_rows[p]); image K/V once per image per chunk."""
    out = []
    for start in range(0, len(text_rows), chunk):
        texts, images = text_rows[start : start + chunk], image_rows[start : start + chunk]
        atts = text_atts[texts]
        width = int(atts.sum(1).max())  # right padding: later columns are pads for every row of the chunk
        fused = runtime.fusion(text_embeds[texts, :width], atts[:, :width], image_embeds, images)
        out.append(fused.itm_logits[:, 1])
    return torch.cat(out) if out else torch.zeros(0)
