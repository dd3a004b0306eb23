"""The official MLM text masking (`TextMaskingGenerator` in X-VLM's `dataset/pretrain_dataset.py`), on token ids.

The official rule, reproduced here with a NumPy generator instead of the global `random` module:
- `n_pred = min(max_masks, max(1, round(len(tokens) * mask_prob)))`, counting [CLS] (and [SEP] with `add_eos`);
- candidate positions are shuffled; position 0 ([CLS]) is never masked, padding is never a candidate;
- from each candidate, with probability `skipgram_prb` a span of 2..`skipgram_size` tokens is taken, else one
  token; with `whole_word` the span grows to whole words (a `##` piece joins the word before it);
- candidates are taken until `n_pred` positions are chosen; if the last span overshoots, a random `n_pred` of
  the chosen positions are kept (as official, so a word can then be cut);
- each chosen position becomes [MASK] with probability 0.8, a random token with 0.1, and stays with 0.1.

One deliberate difference: the random token is drawn from the non-special ids. The official draws from the
whole vocabulary, which can put a [PAD] or [CLS] inside attended text; with a tiny domain vocab that is not rare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from xvlm_edge.errors import InputError, TextError
from xvlm_edge.tokenizer import Tokenizer

IGNORE_INDEX = -100  # masked_ids padding: ignored by cross-entropy, as the official `PAD_mask`


@dataclass(frozen=True)
class MaskedText:
    """One text for MLM, padded as the official `preprocess`: ids/atts to `max_tokens`, positions to `max_masks`."""

    text_ids: torch.Tensor  # (L,) int64
    text_atts: torch.Tensor  # (L,) int64
    text_ids_masked: torch.Tensor  # (L,) int64
    masked_pos: torch.Tensor  # (M,) int64, padded with 0
    masked_ids: torch.Tensor  # (M,) int64, padded with -100


class TextMasker:
    """Chooses MLM positions and replacements; every draw comes from the generator passed in."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        mask_prob: float = 0.25,
        max_masks: int = 8,
        skipgram_prb: float = 0.2,
        skipgram_size: int = 3,
        whole_word: bool = True,
    ) -> None:
        if not 0.0 < mask_prob <= 1.0:
            msg = f"mask_prob must be in (0, 1], got {mask_prob}"
            raise InputError(msg)
        if max_masks < 1:
            msg = f"max_masks must be at least 1, got {max_masks}"
            raise InputError(msg)
        if not 0.0 <= skipgram_prb <= 1.0 or skipgram_size < 1:
            msg = f"need 0 <= skipgram_prb <= 1 and skipgram_size >= 1, got {skipgram_prb}, {skipgram_size}"
            raise InputError(msg)
        self.mask_prob = mask_prob
        self.max_masks = max_masks
        self.skipgram_prb = skipgram_prb
        self.skipgram_size = skipgram_size
        self.whole_word = whole_word
        self.mask_id = tokenizer.mask_id
        specials = {tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id}
        self._random_ids = np.array([i for i in range(len(tokenizer)) if i not in specials], dtype=np.int64)
        if len(self._random_ids) == 0:
            msg = "the vocabulary has only special tokens; MLM needs at least one ordinary token"
            raise InputError(msg)

    def __call__(
        self, ids: Sequence[int], is_piece: Sequence[bool], rng: np.random.Generator
    ) -> tuple[list[int], list[int]]:
        """`ids` = [CLS] + tokens (no padding); `is_piece[i]` marks `##` continuations.

        Returns the masked ids (same length) and the sorted masked positions (at most `max_masks`).
        """
        n = len(ids)
        if n < 2:
            msg = "MLM needs [CLS] and at least one token"
            raise TextError(msg)
        n_pred = min(self.max_masks, max(1, round(n * self.mask_prob)))
        chosen: set[int] = set()
        for pos in rng.permutation(np.arange(1, n)).tolist():
            if len(chosen) >= n_pred:
                break
            if pos in chosen:
                continue
            span = 1
            if self.skipgram_prb > 0 and self.skipgram_size >= 2 and rng.random() < self.skipgram_prb:
                span = int(rng.integers(2, self.skipgram_size + 1))
            start, end = pos, pos + span
            if self.whole_word:
                while start > 0 and is_piece[start]:
                    start -= 1
                while end < n and is_piece[end]:
                    end += 1
            chosen.update(range(start, min(end, n)))
        positions = sorted(chosen)
        if len(positions) > n_pred:
            positions = sorted(rng.choice(positions, size=n_pred, replace=False).tolist())

        masked = list(ids)
        for pos in positions:
            if rng.random() < 0.8:
                masked[pos] = self.mask_id
            elif rng.random() < 0.5:
                masked[pos] = int(self._random_ids[rng.integers(len(self._random_ids))])
        return masked, positions


def encode_masked(
    text: str,
    tokenizer: Tokenizer,
    masker: TextMasker,
    rng: np.random.Generator,
    *,
    max_tokens: int = 40,
    add_eos: bool = False,
) -> MaskedText:
    """Tokenise a cleaned text as `[CLS] X` (or `[CLS] X [SEP]` with `add_eos`), mask it, pad it (official layout)."""
    if max_tokens < 2 + add_eos:
        msg = f"max_tokens={max_tokens} leaves no room for text"
        raise InputError(msg)
    pieces = tokenizer.tokenize(text)
    if not pieces:
        msg = f"text {text!r} has no tokens"
        raise TextError(msg)
    piece_ids = tokenizer.encode([text]).input_ids[0, 1:].tolist()
    if len(piece_ids) != len(pieces):  # pragma: no cover - both come from the same Rust encode
        msg = "tokenize and encode disagree on the number of pieces"
        raise TextError(msg)
    keep = max_tokens - 1 - add_eos
    ids = [tokenizer.cls_id, *piece_ids[:keep]] + ([tokenizer.sep_id] if add_eos else [])
    is_piece = [False, *(p.startswith("##") for p in pieces[:keep])] + ([False] if add_eos else [])
    masked, positions = masker(ids, is_piece, rng)

    n, n_pad = len(ids), max_tokens - len(ids)
    text_ids = torch.tensor(ids + [tokenizer.pad_id] * n_pad, dtype=torch.int64)
    text_atts = torch.tensor([1] * n + [0] * n_pad, dtype=torch.int64)
    text_ids_masked = torch.tensor(masked + [tokenizer.pad_id] * n_pad, dtype=torch.int64)
    m_pad = masker.max_masks - len(positions)
    masked_pos = torch.tensor(positions + [0] * m_pad, dtype=torch.int64)
    masked_ids = torch.tensor([ids[p] for p in positions] + [IGNORE_INDEX] * m_pad, dtype=torch.int64)
    return MaskedText(text_ids, text_atts, text_ids_masked, masked_pos, masked_ids)
