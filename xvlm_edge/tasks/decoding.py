"""Greedy and beam-search decoding with the official semantics, over a KV-cached step (or its uncached oracle).

* `greedy` is the OSCAR `_generate_no_beam_search` loop the official captioner calls: argmax each step,
  finished rows get `[PAD]`, an unfinished row gets eos written into its last position at `max_length`, and
  the score is the mean log-probability of the tokens generated while the row was unfinished.
* `beam_search` is Hugging Face 4.12 `generate(num_beams=n)` (`BeamSearchScorer`, `BeamHypotheses`):
  length_penalty 1.0 (score = sum logprob / len, len counting the prompt but not eos), early_stopping False,
  `MinLengthLogitsProcessor` (eos logprob -inf while the length, prompt included, is below min_length), 2n
  candidates per step, an eos candidate kept only if it ranks in the top n, stop at `max_length` or when every
  image has n finished hypotheses that no open beam can beat.

Both talk to a `StepDecoder`. A runtime's `DecoderState` (`runtime/base.py`) keeps the self-attention K/V of
past tokens and the per-image cross K/V projected once (`graphs.CrossKVGraph`) on the runtime's device, so a
step feeds one token per row. `UncachedDecoder` is the reference: every step re-runs the whole prefix and
re-projects the image K/V for every row, as the official code without a cache does. Tests and the benchmark
check they give equal ids. The bookkeeping is tensor ops on the logits' device; only finished hypotheses
(a few per image) go through Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from xvlm_edge.runtime import Runtime


class StepDecoder(Protocol):
    def start(self, ids: torch.Tensor, cross_index: torch.Tensor) -> torch.Tensor:
        """Feed the prompt (R, P) of rows reading states `cross_index` (R,); next-token logits (R, vocab)."""

    def feed(self, new_ids: torch.Tensor) -> torch.Tensor:
        """Feed one new token per row (R, 1); next-token logits (R, vocab)."""

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` (R',) of the state, in that order (beam selection; prompt expansion)."""


class UncachedDecoder:
    """The reference: the whole prefix re-run at every step, image K/V re-projected for every row, and the
    LM head applied at every position, as the official forward without a cache does (`generate` then
    keeps the last position)."""

    def __init__(self, runtime: Runtime, decoder: str, states: torch.Tensor, cross_atts: torch.Tensor) -> None:
        self.runtime, self.decoder = runtime, decoder
        self.states, self.cross_atts = states, cross_atts  # (B, S, C), (B, S)

    def start(self, ids: torch.Tensor, cross_index: torch.Tensor) -> torch.Tensor:
        self.ids, self.index = ids, cross_index
        return self._run()

    def feed(self, new_ids: torch.Tensor) -> torch.Tensor:
        self.ids = torch.cat([self.ids, new_ids.to(self.ids.device)], dim=1)
        return self._run()

    def reorder(self, rows: torch.Tensor) -> None:
        rows = rows.cpu()
        self.ids, self.index = self.ids[rows], self.index[rows]

    def _run(self) -> torch.Tensor:
        index = self.index.cpu()
        state = self.runtime.decoder(self.decoder, self.states[index], self.cross_atts[index])  # one copy per row
        return state.start(self.ids, torch.arange(len(self.ids)), every_position=True)[:, -1]


@dataclass
class Generated:
    """One decoded sequence: ids (prompt included, eos appended when it fits), its score, and whether it
    stopped at `max_length` without generating eos (`truncated`)."""

    ids: torch.Tensor
    score: float
    truncated: bool = False


def greedy(
    decoder: StepDecoder, prompt: torch.Tensor, max_length: int, eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OSCAR greedy decoding of B rows from prompt (B, P); row b reads state b.

    Returns ids (B, max_length), padded with `pad_id`, the mean log-probability (B,) of the tokens
    generated while each row was unfinished (eos included; a forced final eos counts the argmax it replaced),
    and whether each row reached `max_length` without generating eos (B,) bool (its last id is then the
    forced eos), all on the CPU.
    """
    rows = len(prompt)
    logits = decoder.start(prompt, torch.arange(rows))
    ids = prompt.to(logits.device)
    unfinished = torch.ones(rows, dtype=torch.long, device=logits.device)
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
        logits = decoder.feed(tokens[:, None])
    truncated = unfinished.bool() if cur_len == max_length else torch.zeros_like(unfinished, dtype=torch.bool)
    if cur_len == max_length:
        ids[:, -1] = torch.where(truncated, torch.full_like(ids[:, -1], eos_id), ids[:, -1])
    mask = torch.stack(alive, 1).float()  # (B, steps)
    mean_logprob = (torch.stack(logprobs, 1) * mask).sum(1) / mask.sum(1)
    if ids.shape[1] < max_length:
        ids = torch.cat([ids, ids.new_full((rows, max_length - ids.shape[1]), pad_id)], dim=1)
    return ids.cpu(), mean_logprob.cpu(), truncated.cpu()


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
    device = logits.device
    expand = torch.arange(batch, device=device).repeat_interleave(n)  # (B*n,)
    decoder.reorder(expand)
    logits = logits[expand]
    ids = prompt.to(device)[expand]  # (B*n, P)
    beam_scores = torch.zeros(batch, n, device=device)
    beam_scores[:, 1:] = -1e9  # only the first beam is live at the start
    beam_scores = beam_scores.view(-1)
    own_rows = torch.arange(batch * n, device=device).view(batch, n)  # image b's rows: b*n .. b*n + n - 1
    rank = torch.arange(2 * n, device=device)
    hyps = [_Hypotheses(n, length_penalty) for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    while True:
        cur_len = ids.shape[1]
        scores = F.log_softmax(logits, dim=-1)  # (B*n, V)
        if cur_len < min_length:
            scores[:, eos_id] = -float("inf")
        scores = scores + beam_scores[:, None]
        vocab = scores.shape[-1]
        top_scores, top = torch.topk(scores.view(batch, n * vocab), 2 * n, dim=1, largest=True, sorted=True)  # (B, 2n)
        top_rows, top_tokens = own_rows[:, :1] + top // vocab, top % vocab
        is_eos = top_tokens == eos_id
        # An eos among an open image's top n candidates finishes a hypothesis; one ranked lower is dropped.
        finished = (is_eos & (rank < n) & ~done[:, None]).nonzero().tolist()
        if finished:
            finished_scores = top_scores.tolist()
            for b, r in finished:  # rank order within an image, as HF adds them
                hyps[b].add(ids[top_rows[b, r]].clone(), finished_scores[b][r])
        # The n best non-eos candidates are the next beams (among 2n there are at least n: a beam has one eos).
        keep = ~is_eos & (torch.cumsum(~is_eos, dim=1) <= n)
        next_scores, next_tokens, next_rows = (x[keep].view(batch, n) for x in (top_scores, top_tokens, top_rows))
        # HF pads finished images; their rows are never read again, but stay in place: rows are grouped by image.
        closed = done[:, None]
        next_scores = torch.where(closed, torch.zeros_like(next_scores), next_scores)
        next_tokens = torch.where(closed, torch.full_like(next_tokens, pad_id), next_tokens)
        next_rows = torch.where(closed, own_rows, next_rows)
        best = top_scores[:, 0].tolist()
        newly_done = [not d and hyps[b].is_done(best[b], cur_len) for b, d in enumerate(done.tolist())]
        done = done | torch.tensor(newly_done, device=device)

        beam_scores, rows, tokens = next_scores.view(-1), next_rows.view(-1), next_tokens.view(-1)
        ids = torch.cat([ids[rows], tokens[:, None]], dim=1)
        if bool(done.all()) or ids.shape[1] >= max_length:
            break
        decoder.reorder(rows)
        logits = decoder.feed(tokens[:, None])

    results = []
    final_scores = beam_scores.tolist()
    for b, finished_image in enumerate(done.tolist()):
        if not finished_image:
            for beam in range(n):
                hyps[b].add(ids[b * n + beam], final_scores[b * n + beam])
        score, best_ids = sorted(hyps[b].beams, key=lambda item: item[0])[-1]
        best_ids = best_ids.cpu()
        # A hypothesis closed by eos is stored without it and is at most max_length - 1 long; one that ran to
        # max_length was added at the end, open, and never generated eos.
        truncated = len(best_ids) >= max_length
        if not truncated:
            best_ids = torch.cat([best_ids, best_ids.new_tensor([eos_id])])
        results.append(Generated(best_ids, score, truncated))
    return results
