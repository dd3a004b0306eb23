"""Image-text retrieval: the official `Retrieval.py::evaluation`, ITC top-k then ITM re-ranking.

Each image is compared with every text by ITC similarity (no temperature); its k most similar texts are
re-scored by the raw positive ITM logit, and likewise each text's k most similar images. Everything else
stays at -100, as in the official score matrices. Unlike the official loop, an (image, text) pair asked
for by both directions is fused once, each candidate text is cut to the longest in its chunk instead of
`max_tokens`, and the image K/V are projected once per image per call, not once per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xvlm_edge.graphs import TEXT_CHUNK, ImageEncoding, TextEncoding
from xvlm_edge.runtime import Runtime
from xvlm_edge.tasks.batching import gather_images, row_chunks, trim

#: Official value of the score matrices outside the re-ranked top-k.
UNSCORED = -100.0


@dataclass(frozen=True)
class Ranked:
    """One re-ranked candidate: a text of an image, or an image of a text.

    index: the candidate's position in the texts (images) the caller passed; repeated inputs keep their own.
    probability: in [0, 1], the ITM head's softmax, class "match": how likely the pair matches.
    logit: the raw positive ITM logit, the official retrieval score; candidates are ranked by it.
    """

    index: int
    probability: float
    logit: float


@dataclass
class RetrievalScores:
    """The official matrices: i2t (I, T) and t2i (T, I) hold the raw positive ITM logit for re-ranked pairs
    and -100 elsewhere; sims (I, T) the ITC similarities. probs (I, T): the ITM probability (softmax, class
    "match") of every pair re-ranked in either direction, NaN for pairs never fused."""

    i2t: torch.Tensor
    t2i: torch.Tensor
    sims: torch.Tensor
    probs: torch.Tensor

    def ranked_texts(self, image: int) -> list[Ranked]:
        """The re-ranked texts of `image`, best (highest ITM logit) first."""
        return _ranked(self.i2t[image], self.probs[image])

    def ranked_images(self, text: int) -> list[Ranked]:
        """The re-ranked images of `text`, best first."""
        return _ranked(self.t2i[text], self.probs[:, text])


def _ranked(logits: torch.Tensor, probs: torch.Tensor) -> list[Ranked]:
    order = torch.argsort(logits, descending=True, stable=True)
    return [Ranked(int(i), float(probs[i]), float(logits[i])) for i in order if logits[i] > UNSCORED]


def encode_texts(runtime: Runtime, text_ids: torch.Tensor, text_atts: torch.Tensor, chunk: int = TEXT_CHUNK) -> TextEncoding:
    """The text graph over T tokenised texts of one width, `chunk` texts per call."""
    parts = [runtime.text(text_ids[start : start + chunk], text_atts[start : start + chunk]) for start in range(0, len(text_ids), chunk)]
    return TextEncoding(torch.cat([p.text_embeds for p in parts]), torch.cat([p.text_feat for p in parts]))


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
    pairs, where = torch.unique(torch.cat([i2t_pairs, t2i_pairs]), dim=0, return_inverse=True)  # (P, 2) (image, text), by image
    logits = itm_logits(runtime, images.image_embeds, texts.text_embeds, text_atts, pairs[:, 0], pairs[:, 1], chunk)
    scores = logits[:, 1]
    i2t = torch.full((num_images, num_texts), UNSCORED)
    t2i = torch.full((num_texts, num_images), UNSCORED)
    n = len(i2t_pairs)
    i2t[i2t_pairs[:, 0], i2t_pairs[:, 1]] = scores[where[:n]]
    t2i[t2i_pairs[:, 1], t2i_pairs[:, 0]] = scores[where[n:]]
    probs = torch.full((num_images, num_texts), float("nan"))
    probs[pairs[:, 0], pairs[:, 1]] = logits.softmax(-1)[:, 1]
    return RetrievalScores(i2t, t2i, sims, probs)


def itm_logits(
    runtime: Runtime,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_atts: torch.Tensor,
    image_rows: torch.Tensor,
    text_rows: torch.Tensor,
    chunk: int = TEXT_CHUNK,
) -> torch.Tensor:
    """ITM logits (P, 2) of pairs (image_rows[p], text_rows[p]); each call reads its images' K/V once."""
    out = []
    for rows in row_chunks(image_rows, chunk):
        texts = text_rows[rows]
        embeds, atts = trim(text_embeds[texts], text_atts[texts])
        images, index = gather_images(image_embeds, image_rows[rows])
        out.append(runtime.fusion(embeds, atts, images, index).itm_logits.cpu())
    return torch.cat(out) if out else torch.zeros(0, 2)
