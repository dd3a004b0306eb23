"""X-VLM: an image encoder, a BERT text/fusion encoder, and the task heads a checkpoint carries.

Zeng et al., "Multi-Grained Vision Language Pre-Training: Aligning Texts with Visual Concepts" (ICML 2022),
github.com/zengyan-97/X-VLM. One class covers the six official layouts: `config.heads` says which heads
exist, so a pretraining checkpoint and a VQA checkpoint are the same module with different parts.

Unlike the official code, image tokens are never copied per text: a fusion layer projects keys and values
once per image and each text reads its image through `CrossContext.index` (DESIGN.md section 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xvlm_edge.concepts import box_pool
from xvlm_edge.config import ModelConfig
from xvlm_edge.models.bert import BertLM, BertModel, CrossContext, LMHead
from xvlm_edge.models.box_head import AttendBoxHead
from xvlm_edge.models.clip_vit import ClipVisionTransformer
from xvlm_edge.models.layers import build_head
from xvlm_edge.models.swin import SwinTransformer


class XVLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        vision, text, heads = config.vision, config.text, set(config.heads)
        self.vision_encoder = SwinTransformer(vision) if vision.kind == "swin" else ClipVisionTransformer(vision)
        hidden = text.hidden_size

        if config.has_text_encoder:
            cross_layers = text.num_layers - text.fusion_layer
            # NLVR2 doubles every fusion layer, one copy per image, sharing cross-attention key/value.
            num_layers = text.fusion_layer + 2 * cross_layers if "nlvr" in heads else text.num_layers
            self.text_encoder = BertModel(text, vision.width, num_layers=num_layers)
            if "nlvr" in heads:
                self._share_nlvr_cross_kv()
        if "mlm" in heads:
            self.mlm_head = LMHead(text)
        if "itc" in heads:
            self.vision_proj = nn.Linear(vision.width, config.embed_dim)
            self.text_proj = nn.Linear(hidden, config.embed_dim)
            self.temp = nn.Parameter(torch.tensor(config.temp))
        if "itm" in heads:
            self.itm_head = build_head(hidden, 2)
        if "bbox" in heads and config.box_head != "cls":
            self.bbox_head = AttendBoxHead(hidden, vision.width, vision.grid, position=config.box_head == "attend_position")
        elif "bbox" in heads:
            self.bbox_head = build_head(hidden, 4)
        if "nlvr" in heads:
            self.cls_head = build_head(hidden, 2)
        if "vqa" in heads:
            # The answer decoder is initialised from the fusion layers and cross-attends to question states.
            self.answer_decoder = BertLM(BertModel(text, hidden, num_layers=config.vqa_decoder_layers, fusion_layer=0))
        if "caption" in heads:
            self.caption_decoder = BertLM(BertModel(text, vision.width))

    def _share_nlvr_cross_kv(self) -> None:
        layers = self.text_encoder.encoder.layer
        for i in range(self.config.text.fusion_layer, len(layers), 2):
            first, second = layers[i].crossattention.self, layers[i + 1].crossattention.self
            first.key, first.value = second.key, second.value

    # -- image ----------------------------------------------------------------------------------------

    @property
    def pools_boxes(self) -> bool:
        """Swin's box concept is a masked mean of shared patches; CLIP's box copies are real (local attention)."""
        return self.config.vision.kind == "swin"

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> (B, 1 + N, width) `[CLS, patches]`."""
        return self.vision_encoder(pixels)

    def image_context(
        self,
        image_embeds: torch.Tensor,
        image_atts: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> CrossContext:
        """What a fusion layer attends to: images (B, 1+N, C) seen by K texts through `index` under (K, 1+N) masks.

        For Swin the concept token is rebuilt from the patches under the mask, so full images and boxes
        share the per-image K/V. For CLIP, token 0 is a real class token and boxes come as their own rows.
        """
        # shape[0], not len(): torch.export specialises a dimension that len() reads (K baked in)
        rows = image_embeds.shape[0] if index is None else index.shape[0]
        if image_atts is None:
            image_atts = image_embeds.new_ones(rows, image_embeds.shape[1])
        if self.pools_boxes:
            return CrossContext(image_embeds[:, 1:], image_atts[:, 1:], index, pooled=True)
        return CrossContext(image_embeds, image_atts, index, pooled=False)

    def encode_boxes(
        self, pixels: torch.Tensor, idx_to_group_img: torch.Tensor, image_atts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Official `get_vision_embeds` with boxes: (box embeds (K, 1+N, C), full-image embeds (B, 1+N, C)).

        Swin box embeds are `[masked mean, patches]`, materialised here only because ITC reads token 0;
        the fusion path rebuilds the pooled token inside the attention from per-image K/V instead.
        """
        if self.pools_boxes:
            full = self.vision_encoder(pixels)
            pooled = box_pool(full[:, 1:], idx_to_group_img, image_atts[:, 1:])
            return torch.cat([pooled[:, None], full[idx_to_group_img, 1:]], dim=1), full
        return self.vision_encoder.forward_boxes(pixels, idx_to_group_img, image_atts)

    def box_context(self, box_embeds: torch.Tensor, full: torch.Tensor, idx_to_group_img: torch.Tensor,
                    image_atts: torch.Tensor) -> CrossContext:
        """Fusion context of K box texts: per-image patches for Swin, the per-box copies for CLIP."""
        if self.pools_boxes:
            return self.image_context(full, image_atts, idx_to_group_img)
        return self.image_context(box_embeds, image_atts)

    # -- text and fusion ------------------------------------------------------------------------------

    def encode_text(self, text_ids: torch.Tensor, text_atts: torch.Tensor) -> torch.Tensor:
        """Text-only layers: (K, T) ids -> (K, T, hidden)."""
        return self.text_encoder(text_ids, text_atts, layers=self.text_encoder.text_layers())[0]

    def fuse(self, text_embeds: torch.Tensor, text_atts: torch.Tensor, context: CrossContext) -> torch.Tensor:
        """Fusion layers over text embeddings: (K, T, hidden) -> (K, T, hidden)."""
        encoder = self.text_encoder
        return encoder(text_embeds, text_atts, context=context, layers=encoder.fusion_layers())[0]

    def encode_multimodal(
        self, text_ids: torch.Tensor, text_atts: torch.Tensor, context: CrossContext | list[CrossContext]
    ) -> torch.Tensor:
        """All layers from ids (MLM, VQA questions, NLVR2)."""
        return self.text_encoder(text_ids, text_atts, context=context)[0]

    # -- heads ----------------------------------------------------------------------------------------

    def image_features(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)

    def text_features(self, text_embeds: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(text_embeds[:, 0]), dim=-1)

    def itm_logits(self, cross_embeds: torch.Tensor) -> torch.Tensor:
        return self.itm_head(cross_embeds[:, 0])

    def predict_bbox(
        self, cross_embeds: torch.Tensor, text_atts: torch.Tensor | None = None, context: CrossContext | None = None
    ) -> torch.Tensor:
        """Normalised (cx, cy, w, h) of the squashed square image: from the fused [CLS] (official `cls` head),
        or from the phrase's attention over the patches of `context` (`attend` head: needs text_atts, context)."""
        if self.config.box_head != "cls":
            if text_atts is None or context is None:
                raise ValueError("the attend box head reads the fusion's text_atts and context; pass both")
            return self.bbox_head(cross_embeds, text_atts, context)
        return self.bbox_head(cross_embeds[:, 0]).sigmoid()

    def mlm_logits(self, hidden: torch.Tensor, masked_pos: torch.Tensor) -> torch.Tensor:
        """(K, T, hidden) at (K, M) positions -> (K, M, vocab)."""
        picked = torch.gather(hidden, 1, masked_pos[..., None].expand(-1, -1, hidden.shape[-1]))
        return self.mlm_head(picked, self.text_encoder.embeddings.word_embeddings.weight)

    def nlvr_logits(
        self, text_ids: torch.Tensor, text_atts: torch.Tensor, left: CrossContext, right: CrossContext
    ) -> torch.Tensor:
        return self.cls_head(self.encode_multimodal(text_ids, text_atts, [left, right])[:, 0])
