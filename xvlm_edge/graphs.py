"""The model cut into the graphs every backend runs: tensor-only `nn.Module`s with fixed input/output names.

Each graph takes and returns plain tensors (no `None`, no dicts), so the same module runs eagerly in the
torch backend and exports to ONNX unchanged; `INPUTS`/`OUTPUTS` name its tensors once, for both (NanoOWL's
`get_*_input_names`). The Python side wraps outputs in the small dataclasses below.

Image K/V are never copied per text (DESIGN.md section 2): `fusion`, `multimodal` and `nlvr` hand the fusion
layers B images plus an index (K,) from query row to image, so each cross-attention layer projects K/V once
per image; `cross_kv` projects a decoder's cross K/V once per image (or question) and `decoder_step` reads
them in place for every step and every beam (its rows come grouped by image).

Image masks are always in the official `image_atts` form (K, 1 + N) (`[CLS]` + patches). For Swin the graphs
drop column 0 and rebuild the pooled token inside the attention (`CrossContext.pooled`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from xvlm_edge.models.bert import BertLM, CrossContext
from xvlm_edge.models.xvlm import XVLM

# -- what the graphs return, in the Python API -----------------------------------------------------------


@dataclass
class ImageEncoding:
    """image_embeds (B, 1 + N, C) `[CLS, patches]`; image_feat (B, E) normalised ITC feature, or None."""

    image_embeds: torch.Tensor
    image_feat: torch.Tensor | None = None


@dataclass
class TextEncoding:
    """text_embeds (K, T, hidden) after the text-only layers; text_feat (K, E) ITC feature, or None."""

    text_embeds: torch.Tensor
    text_feat: torch.Tensor | None = None


@dataclass
class FusionOutput:
    """cls (K, hidden) fused [CLS]; itm_logits (K, 2) and bbox (K, 4) sigmoid cxcywh when the heads exist."""

    cls: torch.Tensor
    itm_logits: torch.Tensor | None = None
    bbox: torch.Tensor | None = None


@dataclass
class CrossKV:
    """Cross-attention K/V of every decoder fusion layer: (L, B, heads, S, d) each, S = keys per image."""

    k: torch.Tensor
    v: torch.Tensor


@dataclass
class DecoderOutput:
    """logits (K, vocab) at the last new position (or (K, t, vocab)); the self-attention cache
    (L, K, heads, P + t, d) each, including the past it was given."""

    logits: torch.Tensor
    cache_k: torch.Tensor
    cache_v: torch.Tensor


# -- the graphs --------------------------------------------------------------------------------------------


class VisionGraph(nn.Module):
    """pixels (B, 3, R, R) -> image_embeds (B, 1 + N, C) [, image_feat (B, E) with ITC]."""

    INPUTS = ("pixels",)

    def __init__(self, model: XVLM) -> None:
        super().__init__()
        self.model = model
        self.itc = "itc" in model.config.heads
        self.OUTPUTS = ("image_embeds", "image_feat") if self.itc else ("image_embeds",)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        embeds = self.model.encode_image(pixels)
        return (embeds, self.model.image_features(embeds)) if self.itc else (embeds,)


class TextGraph(nn.Module):
    """ids, atts (K, T) -> text_embeds (K, T, hidden) [, text_feat (K, E) with ITC]. Text-only layers."""

    INPUTS = ("text_ids", "text_atts")

    def __init__(self, model: XVLM) -> None:
        super().__init__()
        self.model = model
        self.itc = "itc" in model.config.heads
        self.OUTPUTS = ("text_embeds", "text_feat") if self.itc else ("text_embeds",)

    def forward(self, text_ids: torch.Tensor, text_atts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        embeds = self.model.encode_text(text_ids, text_atts)
        return (embeds, self.model.text_features(embeds)) if self.itc else (embeds,)


class FusionGraph(nn.Module):
    """Fusion layers over K texts, each reading image `image_index[k]` under mask `image_atts[k]`.

    text_embeds (K, T, hidden), text_atts (K, T), image_embeds (B, 1+N, C), image_index (K,),
    image_atts (K, 1+N) -> cls (K, hidden) [, itm_logits (K, 2)] [, bbox (K, 4)].
    """

    INPUTS = ("text_embeds", "text_atts", "image_embeds", "image_index", "image_atts")

    def __init__(self, model: XVLM) -> None:
        super().__init__()
        self.model = model
        heads = model.config.heads
        self.itm, self.bbox = "itm" in heads, "bbox" in heads
        self.OUTPUTS = ("cls", *(("itm_logits",) if self.itm else ()), *(("bbox",) if self.bbox else ()))

    def forward(
        self,
        text_embeds: torch.Tensor,
        text_atts: torch.Tensor,
        image_embeds: torch.Tensor,
        image_index: torch.Tensor,
        image_atts: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        context = self.model.image_context(image_embeds, image_atts, image_index)
        cross = self.model.fuse(text_embeds, text_atts, context)  # (K, T, hidden)
        out = [cross[:, 0]]
        if self.itm:
            out.append(self.model.itm_logits(cross))
        if self.bbox:
            out.append(self.model.predict_bbox(cross))
        return tuple(out)


class MultimodalGraph(nn.Module):
    """All text layers from ids with image cross-attention (the VQA question encoder).

    text_ids, text_atts (K, T), image_embeds (B, 1+N, C), image_index (K,), image_atts (K, 1+N) -> states (K, T, hidden).
    """

    INPUTS = ("text_ids", "text_atts", "image_embeds", "image_index", "image_atts")
    OUTPUTS = ("states",)

    def __init__(self, model: XVLM) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        text_ids: torch.Tensor,
        text_atts: torch.Tensor,
        image_embeds: torch.Tensor,
        image_index: torch.Tensor,
        image_atts: torch.Tensor,
    ) -> tuple[torch.Tensor]:
        context = self.model.image_context(image_embeds, image_atts, image_index)
        return (self.model.encode_multimodal(text_ids, text_atts, context),)


class NlvrGraph(nn.Module):
    """NLVR2: K statements over image pairs (left_index[k], right_index[k]) of B encoded images -> logits (K, 2)."""

    INPUTS = ("text_ids", "text_atts", "image_embeds", "left_index", "right_index")
    OUTPUTS = ("logits",)

    def __init__(self, model: XVLM) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        text_ids: torch.Tensor,
        text_atts: torch.Tensor,
        image_embeds: torch.Tensor,
        left_index: torch.Tensor,
        right_index: torch.Tensor,
    ) -> tuple[torch.Tensor]:
        # shape[0], not len(): the ONNX tracer keeps a size symbolic, but len() becomes a constant (K baked in)
        ones = torch.ones(left_index.shape[0], image_embeds.shape[1], dtype=torch.long, device=image_embeds.device)
        left = self.model.image_context(image_embeds, ones, left_index)
        right = self.model.image_context(image_embeds, ones, right_index)
        return (self.model.nlvr_logits(text_ids, text_atts, left, right),)


class CrossKVGraph(nn.Module):
    """A decoder's cross-attention K/V, projected once per image (or question): states (B, S, C) ->
    k, v (L, B, heads, S, d). A caption reads the whole Swin image, whose [CLS] is the mean of the patches,
    so the [CLS] K/V are the pooled token's and nothing is rebuilt per step (DESIGN section 2)."""

    INPUTS = ("states",)
    OUTPUTS = ("cross_k", "cross_v")

    def __init__(self, decoder: BertLM) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.decoder.bert.cross_kv(states)
        return torch.stack([k for k, _ in kv.values()]), torch.stack([v for _, v in kv.values()])


class DecoderStepGraph(nn.Module):
    """One autoregressive step of a causal decoder with a self-attention KV cache.

    text_ids (K, t) new tokens; self_atts (K, P + t) 1/0 over cached + new tokens; cache_k/cache_v
    (L, K, heads, P, d) (P may be 0); cross_k/cross_v (Lf, B, heads, S, d) from `CrossKVGraph`, the K rows
    grouped by image (or question): B groups of r = K / B rows (beams, candidate answers), so every row reads
    its image's K/V in place; cross_atts (K, S).
    -> logits (K, vocab) at the last new position (all t positions with `last_only=False`), and the
    cache (L, K, heads, P + t, d) extended by the new tokens.
    """

    INPUTS = ("text_ids", "self_atts", "cache_k", "cache_v", "cross_k", "cross_v", "cross_atts")
    #: The extended cache is `new_cache_*`: ONNX graphs and TensorRT engines bind by name, and an output may
    #: not share its name with an input.
    OUTPUTS = ("logits", "new_cache_k", "new_cache_v")

    def __init__(self, decoder: BertLM, last_only: bool = True) -> None:
        super().__init__()
        self.decoder = decoder
        self.last_only = last_only

    def forward(
        self,
        text_ids: torch.Tensor,
        self_atts: torch.Tensor,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        cross_atts: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bert = self.decoder.bert
        kv = {layer: (cross_k[j], cross_v[j]) for j, layer in enumerate(bert.fusion_layers())}
        context = CrossContext(None, cross_atts, None, kv=kv)  # index None: rows grouped by image
        past = [(cache_k[i], cache_v[i]) for i in range(len(cache_k))]
        hidden, cache = bert(text_ids, self_atts, context=context, causal=True, past=past)
        hidden = hidden[:, -1] if self.last_only else hidden  # (K, hidden) or (K, t, hidden)
        new_k = torch.stack([k for k, _ in cache])  # (L, K, heads, P + t, d)
        new_v = torch.stack([v for _, v in cache])
        return self.decoder.logits(hidden), new_k, new_v


def decoder_shape(decoder: BertLM) -> tuple[int, int, int]:
    """(layers, heads, head dim) of a decoder's self-attention cache."""
    config = decoder.bert.config
    return decoder.bert.num_layers, config.num_heads, config.hidden_size // config.num_heads


def build_graphs(model: XVLM) -> dict[str, nn.Module]:
    """Every graph the heads of `model` support, by name. The decoders exist in two flavours:
    `caption_*` over image patches, `answer_*` over VQA question states; `*_score` returns the logits of
    every position (the official `rank_answer` re-scoring, and the uncached reference decoder)."""
    heads = set(model.config.heads)
    graphs: dict[str, nn.Module] = {"vision": VisionGraph(model)}
    if heads & {"itc", "itm", "bbox"}:
        graphs["text"] = TextGraph(model)
    if heads & {"itm", "bbox"}:
        graphs["fusion"] = FusionGraph(model)
    if heads & {"vqa", "mlm"}:
        graphs["multimodal"] = MultimodalGraph(model)
    if "nlvr" in heads:
        graphs["nlvr"] = NlvrGraph(model)
    for name, head in (("caption", "caption"), ("answer", "vqa")):
        if head in heads:
            decoder = getattr(model, f"{name}_decoder")
            graphs[f"{name}_cross_kv"] = CrossKVGraph(decoder)
            graphs[f"{name}_step"] = DecoderStepGraph(decoder)
            graphs[f"{name}_score"] = DecoderStepGraph(decoder, last_only=False)
    return graphs
