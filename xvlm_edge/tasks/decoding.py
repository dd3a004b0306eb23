"""Greedy and beam-search decoding with the official semantics, over a KV-cached step (or its uncached oracle).

* `greedy` is the OSCAR `_generate_no_beam_search` loop the official captioner calls: argmax each step,
  finished rows get `[PAD]`, an unfinished row gets eos written into its last position at `max_length`, and
  the score is the mean log-probability of the tokens generated while the row was unfinished.
* `beam_search` is Hugging Face 4.12 `generate(num_beams=n)` (`BeamSearchScorer`, `BeamHypotheses`):
  length_penalty 1.0 (score = sum logprob / len, len counting the prompt but not eos), early_stopping False,
  `MinLengthLogitsProcessor` (eos logprob -inf while the length, prompt included, is below min_length), 2n
  candidates per step, an eos candidate kept only if it ranks in the top n, stop at `max_length` or when every
  image has n finished hypotheses that no open beam can beat.

Both talk to a `StepDecoder`. `CachedDecoder` keeps the self-attention K/V of past tokens and reads
per-image cross K/V projected once (`graphs.CrossKVGraph`), so a step feeds one token per row.
`UncachedDecoder` is the reference: every step re-runs the whole prefix and re-projects the image K/V for
every row, as the official code without a cache does. Tests and the benchmark check they give equal ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from xvlm_edge.graphs import CrossKV
from xvlm_edge.runtime import Runtime


class StepDecoder(Protocol):
    def start(self, ids: torch.Tensor, cross_index: torch.Tensor) -> torch.Tensor:
        """Feed the prompt (R, P) of rows reading states `cross_index` (R,); next-token logits (R, vocab)."""

    def step(self, new_ids: torch.Tensor) -> torch.Tensor:
        """Feed one new token per row (R, 1); next-token logits (R, vocab)."""

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` (R',) of the state, in that order (beam selection; prompt expansion)."""


class CachedDecoder:
    """Self-attention KV cache + cross K/V projected once per image: a step costs one token per row."""

    def __init__(self, runtime: Runtime, decoder: str, cross: CrossKV, cross_atts: torch.Tensor) -> None:
        self.runtime, self.graph, self.decoder = runtime, f"{decoder}_step", decoder
        self.cross, self.cross_atts = cross, cross_atts  # (L, B, heads, S, d) x2, (B, S)

    def start(self, ids: torch.Tensor, cross_index: torch.Tensor) -> torch.Tensor:
        self.index = cross_index
        self.cache = self.runtime.empty_cache(self.decoder, len(ids))
        self.length = 0
        return self._run(ids)

    def step(self, new_ids: torch.Tensor) -> torch.Tensor:
        return self._run(new_ids)

    def reorder(self, rows: torch.Tensor) -> None:
        self.index = self.index[rows]
        self.cache = (self.cache[0][:, rows], self.cache[1][:, rows])  # (L, R', heads, P, d)

    def _run(self, ids: torch.Tensor) -> torch.Tensor:
        self.length += ids.shape[1]
        # All ones, as the official `prepare_inputs_for_generation`: pads after eos stay visible (finished rows only).
        self_atts = torch.ones(len(ids), self.length, dtype=torch.long)
        images, rows = self.cross.k.shape[1], len(self.index)
        if rows % images or not torch.equal(self.index, torch.arange(rows) // max(1, rows // images)):
            raise ValueError(f"the step graph reads image b from rows b*r .. b*r + r - 1; rows read images {self.index.tolist()}")
        out = self.runtime.decoder_step(self.graph, ids, self_atts, *self.cache, self.cross, self.cross_atts[self.index])
        self.cache = (out.cache_k, out.cache_v)
        return out.logits


class UncachedDecoder:
    """The reference: the whole prefix re-run at every step, image K/V re-projected for every row, and the
    LM head applied at every position, as the official forward without a cache does (`generate` then
    keeps the last position)."""

    def __init__(self, runtime: Runtime, decoder: str, states: torch.Tensor, cross_atts: torch.Tensor) -> None:
        self.runtime, self.graph, self.decoder = runtime, f"{decoder}_score", decoder
        self.states, self.cross_atts = states, cross_atts  # (B, S, C), (B, S)

    def start(self, ids: torch.Tensor, cross_index: torch.Tensor) -> torch.Tensor:
        self.ids, self.index = ids, cross_index
        return self._run()

    def step(self, new_ids: torch.Tensor) -> torch.Tensor:
        self.ids = torch.cat([self.ids, new_ids], dim=1)
        return self._run()

    def reorder(self, rows: torch.Tensor) -> None:
        self.ids, self.index = self.ids[rows], self.index[rows]

    def _run(self) -> torch.Tensor:
        rows = len(self.ids)
        cross = self.runtime.cross_kv(self.decoder, self.states[self.index])  # one copy per row, as official
        empty = self.runtime.empty_cache(self.decoder, rows)
        self_atts = torch.ones(rows, self.ids.shape[1], dtype=torch.long)
        out = self.runtime.decoder_step(self.graph, self.ids, self_atts, *empty, cross, self.cross_atts[self.index])
        return out.logits[:, -1]


@dataclass
class Generated:
    """One decoded sequence: ids (prompt included, eos appended when it fits) and its score."""

    ids: torch.Tensor
    score: float


def greedy(
    decoder: StepDecoder, prompt: torch.Tensor, max_length: int, eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """OSCAR greedy decoding of B rows from prompt (B, P); row b reads state b.

    Returns ids (B, max_length), padded with `pad_id`, and the mean log-probability (B,) of the tokens
    generated while each row was unfinished (eos included; a forced final eos counts the argmax it replaced).
    """
    ids = prompt
    rows = len(prompt)
    logits = decoder.start(prompt, torch.arange(rows))
    unfinished = torch.ones(rows, dtype=torch.long)
    logprobs, alive = [], []
    cur_len = prompt.shape[1]
    while cur_len < max_length:
        next_token = logits.argmax(-1)  # (B,)
        logprobs.append(F.log_softmax(logits, dim=-1).gather(-1, next_token[:, None])[:, 0])
        alive.append(unfinished)
        tokens = next_token * unfinished + pad_id * (1 - unfinished)
        ids = torch.cat([ids, tokens[:, None]], dim=1)
        unfinished = unfinished * (tokens != eos_id).long()
        cur_len += 1
        if unfinished.max() == 0 or cur_len == max_length:
            break
        logits = decoder.step(tokens[:, None])
    if cur_len == max_length:
        ids[:, -1] = torch.where(unfinished.bool(), torch.full_like(ids[:, -1], eos_id), ids[:, -1])
    mask = torch.stack(alive, 1).float()  # (B, steps)
    mean_logprob = (torch.stack(logprobs, 1) * mask).sum(1) / mask.sum(1)
    if ids.shape[1] < max_length:
        ids = torch.cat([ids, ids.new_full((rows, max_length - ids.shape[1]), pad_id)], dim=1)
    return ids, mean_logprob


class _Hypotheses:
    """HF 4.12 `BeamHypotheses`: the n best finished sequences of one image."""

    def __init__(self, num_beams: int, length_penalty: float) -> None:
        self.num_beams, self.length_penalty = num_beams, length_penalty
        self.beams: list[tuple[float, torch.Tensor]] = []
        self.worst_score = 1e9

    def add(self, hyp: torch.Tensor, sum_logprobs: float) -> None:
        score = sum_logprobs / (hyp.shape[-1] ** self.length_penalty)
        if len(self.beams) < self.num_beams or score > self.worst_score:
            self.beams.append((score, hyp))
            if len(self.beams) > self.num_beams:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float, cur_len: int) -> bool:
        if len(self.beams) < self.num_beams:
            return False
        return self.worst_score >= best_sum_logprobs / cur_len**self.length_penalty


def beam_search(
    decoder: StepDecoder,
    prompt: torch.Tensor,
    *,
    num_beams: int,
    max_length: int,
    min_length: int,
    eos_id: int,
    pad_id: int,
    length_penalty: float = 1.0,
) -> list[Generated]:
    """HF 4.12 beam search for B images from prompt (B, P); image b's beams read state b. One result per image.

    The prompt is run once per image and its cache copied to the beams (HF runs it once per beam; the
    rows are identical, so this changes nothing but the cost).
    """
    batch, n = len(prompt), num_beams
    logits = decoder.start(prompt, torch.arange(batch))  # (B, V)
    expand = torch.arange(batch).repeat_interleave(n)  # (B*n,)
    decoder.reorder(expand)
    logits = logits[expand]
    ids = prompt[expand]  # (B*n, P)
    beam_scores = torch.zeros(batch, n)
    beam_scores[:, 1:] = -1e9  # only the first beam is live at the start
    beam_scores = beam_scores.view(-1)
    hyps = [_Hypotheses(n, length_penalty) for _ in range(batch)]
    done = [False] * batch
    while True:
        cur_len = ids.shape[1]
        scores = F.log_softmax(logits, dim=-1)  # (B*n, V)
        if cur_len < min_length:
            scores[:, eos_id] = -float("inf")
        scores = scores + beam_scores[:, None]
        vocab = scores.shape[-1]
        top_scores, top_tokens = torch.topk(scores.view(batch, n * vocab), 2 * n, dim=1, largest=True, sorted=True)
        top_beams, top_tokens = top_tokens // vocab, top_tokens % vocab

        next_scores = torch.zeros(batch, n)
        next_tokens = torch.zeros(batch, n, dtype=torch.long)
        next_rows = torch.zeros(batch, n, dtype=torch.long)
        for b in range(batch):
            if done[b]:
                next_tokens[b] = pad_id  # HF pads finished images; their rows are never read again,
                next_rows[b] = torch.arange(b * n, (b + 1) * n)  # but stay in place: rows are grouped by image
                continue
            slot = 0
            for rank in range(2 * n):
                token, score, row = int(top_tokens[b, rank]), float(top_scores[b, rank]), b * n + int(top_beams[b, rank])
                if token == eos_id:
                    if rank < n:  # an eos outside the top n beams is not a hypothesis
                        hyps[b].add(ids[row].clone(), score)
                else:
                    next_scores[b, slot], next_tokens[b, slot], next_rows[b, slot] = top_scores[b, rank], token, row
                    slot += 1
                if slot == n:
                    break
            done[b] = done[b] or hyps[b].is_done(float(top_scores[b].max()), cur_len)

        beam_scores, rows, tokens = next_scores.view(-1), next_rows.view(-1), next_tokens.view(-1)
        ids = torch.cat([ids[rows], tokens[:, None]], dim=1)
        if all(done) or ids.shape[1] >= max_length:
            break
        decoder.reorder(rows)
        logits = decoder.step(tokens[:, None])

    results = []
    for b in range(batch):
        if not done[b]:
            for beam in range(n):
                hyps[b].add(ids[b * n + beam], float(beam_scores[b * n + beam]))
        score, best = sorted(hyps[b].beams, key=lambda item: item[0])[-1]  # noqa: FURB192 (HF takes the last of a stable sort; max takes the first on ties)
        if len(best) < max_length:
            best = torch.cat([best, best.new_tensor([eos_id])])
        results.append(Generated(best, score))
    return results
