"""Visual question answering: the official `rank_answer` over an answer list, or open-ended generation.

The question is encoded with image cross-attention (all text layers); the answer decoder cross-attends to
the question states, projected once per question (`CrossKVGraph`). Ranking follows `model_vqa.rank_answer`:
softmax of the decoder's first step over the whole vocabulary, the k answers whose first token is most
probable, each re-scored as log p(first token) minus the summed LM loss of its tokens after [CLS] (the
official loss counts the first token again; kept, since the checkpoints were evaluated that way), a
softmax over the k, sorted. The re-scoring reuses the cached [CLS] step instead of re-running it.

The within-k softmax (`share`) is how the official model ranks, but it is not a probability of the answer:
one candidate always gets 1.0, whatever the model thinks of it. Each candidate also reports its own
sequence probability, P(answer tokens, [SEP] | image, question) = exp(minus its summed LM loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xvlm_edge.graphs import DECODER_ROWS, IMAGE_CHUNK, TEXT_CHUNK
from xvlm_edge.runtime import Runtime
from xvlm_edge.tasks.batching import gather_images, row_chunks
from xvlm_edge.tasks.decoding import greedy
from xvlm_edge.tokenizer import Tokenizer


@dataclass(frozen=True)
class RankedAnswer:
    """One candidate answer of a ranked question.

    probability: in [0, 1], the model's probability of generating exactly this answer (its tokens and
    [SEP]) for the question: exp of the summed token log-probabilities.
    share: in [0, 1], the official ranking score, a softmax over the k re-scored candidates of
    log p(first token) + the summed token log-probabilities; the shares of the k candidates sum to 1 and
    candidates are ordered by it (a lone candidate's share is 1.0).
    """

    text: str
    probability: float
    share: float


@dataclass
class Answer:
    """The answer to one question.

    text: the answer (the candidate with the largest share, or the generated text).
    probability: in [0, 1]. Ranked: the chosen candidate's sequence probability (`RankedAnswer.probability`).
    Open-ended: exp of the mean log-probability of the generated tokens ([SEP] included).
    share: the chosen candidate's within-k softmax (the official ranking score); None when open-ended.
    candidates: the k re-scored candidates, largest share first; empty when open-ended.
    """

    text: str
    probability: float
    share: float | None
    candidates: list[RankedAnswer]

    @property
    def score(self) -> float:
        """The same number as `probability` (every result's `score` is a probability in [0, 1])."""
        return self.probability


def question_states(
    runtime: Runtime,
    image_embeds: torch.Tensor,
    question_ids: torch.Tensor,
    question_atts: torch.Tensor,
    image_index: torch.Tensor,
    chunk: int = TEXT_CHUNK,
) -> torch.Tensor:
    """(Q, T, hidden) question states over images `image_index` (Q,), `chunk` questions per call."""
    out = []
    for rows in row_chunks(image_index, chunk):
        images, index = gather_images(image_embeds, image_index[rows])
        out.append(runtime.multimodal(question_ids[rows], question_atts[rows], images, index))
    return torch.cat(out)


def rank_answers(
    runtime: Runtime,
    states: torch.Tensor,
    question_atts: torch.Tensor,
    answer_ids: torch.Tensor,
    answer_atts: torch.Tensor,
    k: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official `rank_answer`: topk_ids (Q, k) into the answer list and their shares (Q, k) (the official
    `topk_probs`), largest share first, plus each candidate's summed token log-probability (Q, k).

    Questions go to the decoder in groups that keep questions x k within `DECODER_ROWS` rows.
    """
    k = min(k, len(answer_ids))
    step = max(1, min(IMAGE_CHUNK, DECODER_ROWS // k))
    parts = [_rank(runtime, states[s : s + step], question_atts[s : s + step], answer_ids, answer_atts, k, pad_id) for s in range(0, len(states), step)]
    ids, shares, logprobs = zip(*parts)
    return torch.cat(ids), torch.cat(shares), torch.cat(logprobs)


def _rank(
    runtime: Runtime, states: torch.Tensor, question_atts: torch.Tensor, answer_ids: torch.Tensor, answer_atts: torch.Tensor, k: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    num_questions = len(states)
    decoder = runtime.decoder("answer", states, question_atts)
    questions = torch.arange(num_questions)
    start = answer_ids[:1, :1].expand(num_questions, 1)  # the answers' [CLS] starts decoding
    first_logits = decoder.start(start, questions).cpu()  # (Q, V)
    first_probs = first_logits.softmax(-1)[:, answer_ids[:, 1]]  # (Q, A)
    topk_probs, topk_ids = first_probs.topk(k, dim=1)

    rows = questions.repeat_interleave(k)  # (Q*k,): question q's k candidates, consecutive (grouped by question)
    ids, atts = answer_ids[topk_ids.flatten()], answer_atts[topk_ids.flatten()]  # (Q*k, L)
    width = int(atts.sum(1).max())
    ids, atts = ids[:, :width], atts[:, :width]
    logits = first_logits[rows][:, None]  # (Q*k, 1, V): the [CLS] step (cached) predicted token 1
    if width > 2:  # positions 1..L-2 predict tokens 2..L-1
        decoder.reorder(rows)
        rest = decoder.feed(ids[:, 1 : width - 1], self_atts=atts[:, : width - 1], every_position=True)
        logits = torch.cat([logits, rest.cpu()], dim=1)  # (Q*k, L-1, V)
    targets = ids[:, 1:]  # (Q*k, L-1)
    token_logprobs = F.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
    answer_logprob = (token_logprobs * (targets != pad_id)).sum(1).view(num_questions, k)  # = -(official summed LM loss)
    total = topk_probs.log() + answer_logprob
    shares, rerank = total.softmax(-1).topk(k, dim=1)
    return torch.gather(topk_ids, 1, rerank), shares, torch.gather(answer_logprob, 1, rerank)


def generate_answers(
    runtime: Runtime, tokenizer: Tokenizer, states: torch.Tensor, question_atts: torch.Tensor, max_new_tokens: int
) -> list[Answer]:
    """Open-ended answers: greedy decoding from [CLS] with the answer decoder until [SEP], `IMAGE_CHUNK`
    questions per decoder."""
    found = []
    for s in range(0, len(states), IMAGE_CHUNK):
        decoder = runtime.decoder("answer", states[s : s + IMAGE_CHUNK], question_atts[s : s + IMAGE_CHUNK])
        prompt = torch.full((len(states[s : s + IMAGE_CHUNK]), 1), tokenizer.cls_id, dtype=torch.long)
        ids, logprobs, _ = greedy(decoder, prompt, 1 + max_new_tokens, tokenizer.sep_id, tokenizer.pad_id)
        found += [Answer(tokenizer.decode(row), math.exp(float(lp)), None, []) for row, lp in zip(ids, logprobs)]
    return found


def ranked_answers(candidates: list[str], top_ids: torch.Tensor, shares: torch.Tensor, logprobs: torch.Tensor) -> list[Answer]:
    """`Answer`s from `rank_answers`' output over the answer strings `candidates`."""
    found = []
    for row_ids, row_shares, row_logprobs in zip(top_ids.tolist(), shares.tolist(), logprobs.tolist()):
        ranked = [RankedAnswer(candidates[i], math.exp(lp), share) for i, share, lp in zip(row_ids, row_shares, row_logprobs)]
        found.append(Answer(ranked[0].text, ranked[0].probability, ranked[0].share, ranked))
    return found
