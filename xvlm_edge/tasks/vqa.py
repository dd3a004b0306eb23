"""Visual question answering: the official `rank_answer` over an answer list, or open-ended generation.

The question is encoded with image cross-attention (all text layers); the answer decoder cross-attends to
the question states, projected once per question (`CrossKVGraph`). Ranking follows `model_vqa.rank_answer`:
softmax of the decoder's first step over the whole vocabulary, the k answers whose first token is most
probable, each re-scored as log p(first token) minus the summed LM loss of its tokens after [CLS] (the
official loss counts the first token again; kept, since the checkpoints were evaluated that way), a
softmax over the k, sorted. The re-scoring reuses the cached [CLS] step instead of re-running it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xvlm_edge.runtime import Runtime
from xvlm_edge.tasks.decoding import greedy
from xvlm_edge.tokenizer import Tokenizer


@dataclass
class Answer:
    """text: the answer; score: its probability among the ranked candidates (open-ended: mean token
    log-probability); candidates: (answer, probability) best first, empty when open-ended."""

    text: str
    score: float
    candidates: list[tuple[str, float]]


def question_states(
    runtime: Runtime, image_embeds: torch.Tensor, question_ids: torch.Tensor, question_atts: torch.Tensor, image_index: torch.Tensor
) -> torch.Tensor:
    """(Q, T, hidden) question states over images `image_index` (Q,)."""
    return runtime.multimodal(question_ids, question_atts, image_embeds, image_index)


def rank_answers(
    runtime: Runtime,
    states: torch.Tensor,
    question_atts: torch.Tensor,
    answer_ids: torch.Tensor,
    answer_atts: torch.Tensor,
    k: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Official `rank_answer`: (topk_ids (Q, k) into the answer list, topk_probs (Q, k)), best first."""
    num_questions, k = len(states), min(k, len(answer_ids))
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
    answer_logprob = (token_logprobs * (targets != pad_id)).sum(1)  # = -(official summed LM loss)
    total = (topk_probs.flatten().log() + answer_logprob).view(num_questions, k)
    probs, rerank = total.softmax(-1).topk(k, dim=1)
    return torch.gather(topk_ids, 1, rerank), probs


def generate_answers(
    runtime: Runtime, tokenizer: Tokenizer, states: torch.Tensor, question_atts: torch.Tensor, max_new_tokens: int
) -> list[Answer]:
    """Open-ended answers: greedy decoding from [CLS] with the answer decoder until [SEP]."""
    decoder = runtime.decoder("answer", states, question_atts)
    prompt = torch.full((len(states), 1), tokenizer.cls_id, dtype=torch.long)
    ids, logprobs = greedy(decoder, prompt, 1 + max_new_tokens, tokenizer.sep_id, tokenizer.pad_id)
    return [Answer(tokenizer.decode(row), float(lp), []) for row, lp in zip(ids, logprobs)]
