"""The X-VLM training losses as pure functions, and the pretraining forward that combines them.

Each loss follows the official implementation (github.com/zengyan-97/X-VLM, `models/xvlm.py::XVLMBase`
and `models/model_{pretrain,captioning,vqa,nlvr}.py`) closely enough to reproduce its values on the
fixtures in $XVLM_REFERENCE_DIR within 1e-5 (tests/test_losses_parity.py). Where we differ on purpose,
the docstring says so and why:

* `gather_with_grad` sums the gradient over ranks in backward. The official `AllGather` hands each rank
  only its own slice of the gradient of its own copy of the loss, so after DDP averages gradients the
  ITC term is scaled by 1/world_size; ours gives the gradient of the global-batch loss on any world size.
  It also pads to the largest rank, because region batches have a different number of texts per rank.
* `bbox_losses` guards degenerate boxes per row (the official code zeroes the GIoU of the whole batch
  and prints), and never divides by zero boxes.

Shapes: K texts (= boxes in a region batch), B images, T tokens, M masked positions, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from xvlm_edge.models.bert import CrossContext
from xvlm_edge.models.xvlm import XVLM

# -- distributed feature gathering ------------------------------------------------------------------------


class _GatherWithGrad(torch.autograd.Function):
    """all_gather of (n_r, ...) rows of every rank -> (sum n_r, ...); backward sums over ranks, keeps ours."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        counts = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
        dist.all_gather(counts, torch.tensor([len(x)], device=x.device))
        counts = [int(c) for c in counts]
        longest = max(counts)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: len(x)] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.counts, ctx.rank, ctx.longest = counts, rank, longest
        return torch.cat([p[:n] for p, n in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # every rank's loss depends on our rows
        start = sum(ctx.counts[: ctx.rank])
        return grad[start : start + ctx.counts[ctx.rank]]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Rows of every rank concatenated in rank order, differentiable; identity without torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


# -- image-text contrastive (ITC) -------------------------------------------------------------------------


def contrastive_loss(
    image_feat: torch.Tensor, text_feat: torch.Tensor, temp: torch.Tensor, idx: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE over the features of every rank (official `get_contrastive_loss`).

    image_feat, text_feat: (K, D) L2-normalised, row k of each is a positive pair. `idx` (K,): rows with
    equal idx are all positives (several captions of one image), as soft labels `pos / pos.sum(1)`.
    """
    image_all, text_all = gather_with_grad(image_feat), gather_with_grad(text_feat)
    logits = image_all @ text_all.t() / temp  # (K_all, K_all)
    if idx is None:
        labels = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    idx_all = gather_with_grad(idx.view(-1, 1))
    positives = torch.eq(idx_all, idx_all.t()).to(logits.dtype)  # (K_all, K_all)
    labels = positives / positives.sum(1, keepdim=True)
    loss_i2t = -torch.sum(F.log_softmax(logits, dim=1) * labels, dim=1).mean()
    loss_t2i = -torch.sum(F.log_softmax(logits.t(), dim=1) * labels, dim=1).mean()
    return (loss_i2t + loss_t2i) / 2


# -- image-text matching (ITM) with hard negatives --------------------------------------------------------


@torch.no_grad()
def sample_hard_negatives(
    image_feat: torch.Tensor, text_feat: torch.Tensor, temp: torch.Tensor, idx: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative image for each text (K,), negative text for each image (K,)), local to this rank.

    Drawn from softmax(similarity / temp) + 1e-5 with positives zeroed, one `torch.multinomial` call per
    row on the default generator: all image draws first, then all text draws. That is the official loop,
    and the order matters: it is what makes a seeded run reproduce the official ITM loss exactly.
    """
    sim_i2t = image_feat @ text_feat.t() / temp
    sim_t2i = text_feat @ image_feat.t() / temp
    weights_i2t = F.softmax(sim_i2t, dim=1) + 1e-5
    weights_t2i = F.softmax(sim_t2i, dim=1) + 1e-5
    if idx is None:
        weights_i2t.fill_diagonal_(0)
        weights_t2i.fill_diagonal_(0)
    else:
        same = torch.eq(idx.view(-1, 1), idx.view(1, -1))
        weights_i2t.masked_fill_(same, 0)
        weights_t2i.masked_fill_(same, 0)
    image_for_text = [torch.multinomial(weights_t2i[k], 1).item() for k in range(len(weights_t2i))]
    text_for_image = [torch.multinomial(weights_i2t[k], 1).item() for k in range(len(weights_i2t))]
    device = image_feat.device
    return torch.tensor(image_for_text, device=device), torch.tensor(text_for_image, device=device)


def matching_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """CE of the ITM head: (K, 2) matched pairs labelled 1, (2K, 2) hard negatives labelled 0."""
    logits = torch.cat([pos_logits, neg_logits])
    labels = torch.cat([torch.ones(len(pos_logits)), torch.zeros(len(neg_logits))]).long().to(logits.device)
    return F.cross_entropy(logits, labels)


def select_rows(context: CrossContext, rows: torch.Tensor) -> CrossContext:
    """The image context of query rows `rows` of `context`: an index into the same per-image states.

    Nothing is copied: the returned context reads the same states through a composed index, so hard
    negatives cost no extra K/V projection (DESIGN.md section 2).
    """
    index = rows if context.index is None else context.index[rows]
    return CrossContext(context.states, context.atts[rows], index, pooled=context.pooled)


# -- masked language modelling, boxes ---------------------------------------------------------------------


def mlm_loss(logits: torch.Tensor, masked_ids: torch.Tensor) -> torch.Tensor:
    """(K, M, V) logits at the masked positions vs (K, M) original ids; -100 (padding) is ignored."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), masked_ids.reshape(-1), ignore_index=-100)


def box_cxcywh_to_xyxy(box: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = box.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def generalized_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Row-wise GIoU of (K, 4) xyxy boxes (the diagonal of DETR's pairwise `generalized_box_iou`)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    wh = (torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area1 + area2 - inter
    iou = inter / union
    hull = (torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    area = hull[:, 0] * hull[:, 1]
    return iou - (area - union) / area


def bbox_losses(
    pred: torch.Tensor, target: torch.Tensor, is_image: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, 1 - GIoU) of (K, 4) normalised cxcywh boxes, each summed and divided by the number of boxes.

    `is_image` (K,) marks whole-image captions of a region batch: they carry no box and are masked out,
    and the divisor counts only the real boxes (official `get_bbox_loss`). A row whose target or prediction
    is degenerate (a negative side, or both boxes of zero area) gets GIoU loss 0 instead of NaN.
    """
    l1 = F.l1_loss(pred, target, reduction="none")  # (K, 4)
    boxes1, boxes2 = box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target)
    # Degenerate: a negative side, or both areas 0 (then union = hull = 0 and GIoU is 0/0).
    valid = (pred[:, 2:] >= 0).all(1) & (target[:, 2:] >= 0).all(1)
    valid &= pred[:, 2] * pred[:, 3] + target[:, 2] * target[:, 3] > 0
    unit = pred.new_tensor([0.0, 0.0, 1.0, 1.0]).expand_as(boxes1)  # stands in for invalid rows: no NaN grads
    giou = 1 - generalized_iou(torch.where(valid[:, None], boxes1, unit), torch.where(valid[:, None], boxes2, unit))
    giou = torch.where(valid, giou, torch.zeros_like(giou))
    if is_image is None:
        num_boxes = torch.tensor(float(len(target)), dtype=pred.dtype, device=pred.device)
    else:
        keep = (1 - is_image).to(pred.dtype)
        num_boxes = keep.sum()
        l1 = l1 * keep[:, None]
        giou = giou * keep
    num_boxes = num_boxes.clamp(min=1)
    return l1.sum() / num_boxes, giou.sum() / num_boxes


def attention_mass_loss(weights: torch.Tensor, box_patches: torch.Tensor, is_image: torch.Tensor | None = None) -> torch.Tensor:
    """-log of the attention mass (K, N) on the patches of the phrase's box (K, N), averaged over the real boxes.

    The L1/GIoU losses reach the attend head's weights only through their mean position, which two objects on
    either side of the target satisfy as well as the target; this one asks for the object itself, whichever
    of its patches the weights then prefer (the L1 on the centre decides that)."""
    mass = (weights * box_patches.to(weights.dtype)).sum(-1).clamp(min=1e-6)
    keep = torch.ones_like(mass) if is_image is None else (1 - is_image).to(mass.dtype)
    return -(mass.log() * keep).sum() / keep.sum().clamp(min=1)


# -- fine-tuning losses -----------------------------------------------------------------------------------


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
    """Teacher-forced LM loss: logits (K, T, V) at t predict targets[:, t + 1]; -100 is ignored.

    The targets are the caption ids with padding and the prompt tokens set to -100
    (`caption_targets`), so the prompt is read but never predicted (official `model_captioning.py`).
    Label smoothing is the official one (`LabelSmoothSoftmaxCEV1`, used by the official `xbert.py`): the
    smoothed target is q = eps / V for every class except the target, which gets 1 - eps (not
    1 - eps + eps / V as in `F.cross_entropy(label_smoothing=eps)`, which misses the fixture by 2e-3).
    So the loss per token is (1 - eps - eps / V) * nll + eps * mean_c(-log p_c).
    """
    wide = torch.promote_types(logits.dtype, torch.float32)  # fp16/bf16 logits: softmax in fp32
    logprobs = F.log_softmax(logits[:, :-1].to(wide), dim=-1)  # (K, T - 1, V)
    targets = targets[:, 1:]
    keep = targets != -100
    nll = -logprobs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]  # (K, T - 1)
    vocab = logprobs.shape[-1]
    eps = label_smoothing
    per_token = (1 - eps - eps / vocab) * nll - eps * logprobs.mean(-1)
    return per_token[keep].sum() / keep.sum().clamp(min=1)


def caption_targets(ids: torch.Tensor, pad_id: int, prompt_length: int) -> torch.Tensor:
    """Caption ids with padding and the first `prompt_length` tokens ([CLS] + the prompt) set to -100."""
    targets = ids.masked_fill(ids == pad_id, -100)
    targets[:, :prompt_length] = -100
    return targets


def answer_loss(
    logits: torch.Tensor, answer_ids: torch.Tensor, pad_id: int, weights: torch.Tensor, num_images: int
) -> torch.Tensor:
    """VQA generative answer loss: per answer, the summed token CE; weighted; divided by the image count.

    logits (A, T, V) of the decoder on answers `[CLS] answer [SEP] [PAD]..` (A = sum of k answers per
    question); weights (A,) (official `model_vqa.py`: `(weights * loss).sum() / image.size(0)`).
    """
    targets = answer_ids.masked_fill(answer_ids == pad_id, -100)[:, 1:]
    per_token = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
    )
    per_answer = per_token.view(len(logits), -1).sum(1)  # (A,)
    return (weights * per_answer).sum() / num_images


def nlvr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """NLVR2: (K, 2) logits of the classification head vs (K,) true/false labels."""
    return F.cross_entropy(logits, labels)


# -- the pretraining forward ------------------------------------------------------------------------------


@dataclass
class PretrainLosses:
    """The losses of one pretraining batch; bbox/giou are None on an image-text batch."""

    itc: torch.Tensor
    itm: torch.Tensor
    mlm: torch.Tensor
    bbox: torch.Tensor | None = None
    giou: torch.Tensor | None = None
    attend: torch.Tensor | None = None  # the attend box head's attention mass off the object (region batches)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in vars(self).items() if v is not None}


def pretrain_losses(
    model: XVLM,
    images: torch.Tensor,
    text_ids: torch.Tensor,
    text_atts: torch.Tensor,
    text_ids_masked: torch.Tensor,
    masked_pos: torch.Tensor,
    masked_ids: torch.Tensor,
    *,
    idx_to_group_img: torch.Tensor | None = None,
    image_atts: torch.Tensor | None = None,
    target_bbox: torch.Tensor | None = None,
    is_image: torch.Tensor | None = None,
    image_embeds: torch.Tensor | None = None,
) -> PretrainLosses:
    """Official `model_pretrain.XVLM.forward`: ITC, ITM, MLM and, for region batches, bbox + GIoU.

    Image-text batch (no `idx_to_group_img`): text k describes image k. Region batch: text k describes
    box `image_atts[k]` of image `idx_to_group_img[k]` (whole-image captions have all-ones masks and
    `is_image` 1); ITC/ITM/MLM see the box concept, the bbox head sees the full image. The computation
    order (and so the RNG order of the hard-negative draw) is the official one. `image_embeds` (B, 1+N, C):
    the already encoded images of an image-text batch (multi-task steps share one encoding with
    `scene_task_losses`).
    """
    regions = idx_to_group_img is not None
    if regions:
        image_embeds, full = model.encode_boxes(images, idx_to_group_img, image_atts)
        context = model.box_context(image_embeds, full, idx_to_group_img, image_atts)
    else:
        image_embeds = model.encode_image(images) if image_embeds is None else image_embeds
        context = model.image_context(image_embeds)
    text_embeds = model.encode_text(text_ids, text_atts)
    image_feat, text_feat = model.image_features(image_embeds), model.text_features(text_embeds)

    itc = contrastive_loss(image_feat, text_feat, model.temp)

    image_neg, text_neg = sample_hard_negatives(image_feat, text_feat, model.temp)
    cross_pos = model.fuse(text_embeds, text_atts, context)
    rows = torch.arange(len(text_embeds), device=text_embeds.device)
    cross_neg = model.fuse(
        torch.cat([text_embeds, text_embeds[text_neg]]),
        torch.cat([text_atts, text_atts[text_neg]]),
        select_rows(context, torch.cat([image_neg, rows])),
    )
    itm = matching_loss(model.itm_logits(cross_pos), model.itm_logits(cross_neg))

    hidden = model.encode_multimodal(text_ids_masked, text_atts, context)
    mlm = mlm_loss(model.mlm_logits(hidden, masked_pos), masked_ids)
    if not regions:
        return PretrainLosses(itc, itm, mlm)

    full_context = model.image_context(full, index=idx_to_group_img)
    cross = model.fuse(text_embeds, text_atts, full_context)
    if model.config.box_head == "cls":
        bbox, giou = bbox_losses(model.predict_bbox(cross), target_bbox, is_image)
        return PretrainLosses(itc, itm, mlm, bbox, giou)
    phrase, weights, patches = model.bbox_head.attend(cross, text_atts, full_context)
    bbox, giou = bbox_losses(model.bbox_head.box(phrase, weights, patches), target_bbox, is_image)
    return PretrainLosses(itc, itm, mlm, bbox, giou, attention_mass_loss(weights, image_atts[:, 1:], is_image))


@dataclass
class SceneTaskLosses:
    """The fine-tuning tasks trained beside pretraining on the same images (see `scene_task_losses`)."""

    caption: torch.Tensor
    vqa: torch.Tensor
    check: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(vars(self))


def scene_task_losses(
    model: XVLM,
    image_embeds: torch.Tensor,
    batch: dict[str, torch.Tensor],
    *,
    pad_id: int,
    prompt_length: int,
    label_smoothing: float,
) -> SceneTaskLosses:
    """Captioning LM, VQA answer generation and `check` ITM on B images (B, 1+N, C), one task row per image.

    - caption: the causal caption decoder over the image (`caption_loss`, prompt tokens not predicted);
    - vqa: question states from all text layers over the image, the answer decoder over them (`answer_loss`,
      one answer of weight 1 per question, divided by B as the official);
    - check: the ITM head on (image, statement), true statements labelled match (1), false non-match (0).
    """
    context = model.image_context(image_embeds)
    caption_ids, caption_atts = batch["caption_ids"], batch["caption_atts"]
    hidden, _ = model.caption_decoder.bert(caption_ids, caption_atts, context=context, causal=True)
    targets = caption_targets(caption_ids, pad_id, prompt_length)
    caption = caption_loss(model.caption_decoder.logits(hidden), targets, label_smoothing)

    question_atts = batch["question_atts"]
    states = model.encode_multimodal(batch["question_ids"], question_atts, context)
    answer_ids = batch["answer_ids"]
    hidden, _ = model.answer_decoder.bert(answer_ids, batch["answer_atts"], context=CrossContext(states, question_atts), causal=True)
    weights = torch.ones(len(answer_ids), dtype=hidden.dtype, device=hidden.device)
    vqa = answer_loss(model.answer_decoder.logits(hidden), answer_ids, pad_id, weights, len(answer_ids))

    statement_atts = batch["statement_atts"]
    fused = model.fuse(model.encode_text(batch["statement_ids"], statement_atts), statement_atts, context)
    check = F.cross_entropy(model.itm_logits(fused), batch["check_label"])
    return SceneTaskLosses(caption, vqa, check)
