"""Image captioning: the official `model_captioning.XVLM.generate`, with a KV-cached decoder."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xvlm_edge.runtime import Runtime, full_image_atts
from xvlm_edge.tasks.decoding import UncachedDecoder, beam_search, greedy
from xvlm_edge.tokenizer import Tokenizer


@dataclass
class Caption:
    """One caption.

    text: the caption without the prompt. token_ids: prompt + generated ids (eos included when it fits).
    probability: in (0, 1], `exp(logprob)`, the model's per-token confidence in this caption.
    logprob: the decoder's own score, <= 0. Greedy (`num_beams=1`): the mean log-probability of the
    generated tokens (eos included). Beam search: Hugging Face's length-normalised beam score, the sum of
    the generated tokens' log-probabilities (eos included) divided by the sequence length (prompt counted,
    eos not); it ranks the beams, and is the official `sequences_scores`.
    truncated: decoding reached `max_length` before generating eos, so the caption may be cut off (greedy
    then writes eos in the last position, as the official decoder does).
    """

    text: str
    token_ids: list[int]
    probability: float
    logprob: float
    truncated: bool

    @property
    def score(self) -> float:
        """The same number as `probability` (every result's `score` is a probability in [0, 1])."""
        return self.probability


def generate_captions(
    runtime: Runtime,
    tokenizer: Tokenizer,
    image_embeds: torch.Tensor,
    *,
    prompt: str,
    max_length: int,
    min_length: int,
    num_beams: int,
    cached: bool = True,
) -> list[Caption]:
    """Captions of B encoded images (B, 1 + N, C). `num_beams=1` is the official greedy path.

    The decoded text is `decode(ids, skip_special_tokens=True)[len(prompt):]`, exactly as the official
    `_get_captions` cuts the prompt off by characters.
    """
    prompt_ids = tokenizer.caption_prompt_ids(prompt)[None].expand(len(image_embeds), -1)  # (B, P)
    atts = full_image_atts(len(image_embeds), image_embeds.shape[1])
    if cached:
        decoder = runtime.decoder("caption", image_embeds, atts)
    else:
        decoder = UncachedDecoder(runtime, "caption", image_embeds, atts)
    eos, pad = tokenizer.sep_id, tokenizer.pad_id
    if num_beams == 1:
        ids, scores, truncated = greedy(decoder, prompt_ids, max_length, eos, pad)
        sequences = [(row[: _length(row, pad, len(prompt_ids[0]))], float(s), bool(t)) for row, s, t in zip(ids, scores, truncated)]
    else:
        found = beam_search(
            decoder, prompt_ids, num_beams=num_beams, max_length=max_length, min_length=min_length, eos_id=eos, pad_id=pad
        )
        sequences = [(g.ids, g.score, g.truncated) for g in found]
    return [
        Caption(tokenizer.decode(ids)[len(prompt) :], ids.tolist(), math.exp(logprob), logprob, truncated)
        for ids, logprob, truncated in sequences
    ]


def _length(row: torch.Tensor, pad_id: int, prompt_length: int) -> int:
    """Length of a greedy row without its trailing pads (pads only follow eos, never inside the prompt)."""
    generated = row[prompt_length:]
    pads = (generated == pad_id).nonzero()
    return prompt_length + (int(pads[0]) if len(pads) else len(generated))


def pad_ids(captions: list[Caption], width: int, pad_id: int) -> torch.Tensor:
    """Token ids of several captions as one (B, width) tensor padded with `pad_id` (the official batch output)."""
    out = torch.full((len(captions), width), pad_id, dtype=torch.long)
    for i, caption in enumerate(captions):
        out[i, : len(caption.token_ids)] = torch.tensor(caption.token_ids[:width])
    return out
