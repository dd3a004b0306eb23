"""The model cut into the graphs every backend runs, and the catalogue that names them.

The catalogue (`catalogue(heads)`, `GraphSpec`) is the one owner of what a graph is: its name, kind, input
and output tensor names, dynamic axes, the size relations between them, and the chunk limits the API
feeds. The ONNX exporter, the TensorRT profile builder, every runtime and the tasks read it; nobody parses
a graph name out of a string.

Each graph module takes and returns plain tensors (no `None`, no dicts), so the same module runs eagerly
in the torch backend and exports to ONNX unchanged; its `spec` names its tensors once, for both (NanoOWL's
`get_*_input_names`). The Python side wraps outputs in the small dataclasses below.

Image K/V are never copied per text (DESIGN.md section 2): `fusion`, `multimodal` and `nlvr` hand the fusion
layers B images plus an index (K,) from query row to image, so each cross-attention layer projects K/V once
per image; `cross_kv` projects a decoder's cross K/V once per image (or question) and `decoder_step` reads
them in place for every step and every beam (its rows come grouped by image).

Image masks are always in the official `image_atts` form (K, 1 + N) (`[CLS]` + patches). For Swin the graphs
drop column 0 and rebuild the pooled token inside the attention (`CrossContext.pooled`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from xvlm_edge.models.bert import BertLM, CrossContext
from xvlm_edge.models.xvlm import XVLM

# -- the catalogue -------------------------------------------------------------------------------------------

#: Chunk limits: the most one graph call of a task carries. Tasks chunk their inputs to them, and the TensorRT
#: profiles are sized from them (`export/tensorrt.py::EngineLimits`), so no call the API makes falls outside
#: an engine built with the defaults.
IMAGE_CHUNK = 16  # images per vision call, and images (VQA: questions) per decoder call
TEXT_CHUNK = 128  # text rows per text / fusion / multimodal / nlvr call (texts, phrases, statements)
DECODER_ROWS = 128  # decoder rows per call: images x beams, or questions x candidate answers (VQA ranking)
MAX_TOKENS = 40  # tokens per text or question (the official checkpoints' max_tokens)
MAX_DECODER_TOKENS = 40  # cached + new tokens of one decoder row (official captions stop at 20, answers at 11)

#: Graph kinds. Encoders read images and text rows; a decoder has one graph of each other kind.
ENCODER, CROSS_KV, STEP, SCORE = "encoder", "cross_kv", "step", "score"
DECODER_KINDS = (CROSS_KV, STEP, SCORE)
#: Decoders and the head that carries each: `caption_*` reads image tokens, `answer_*` VQA question states.
DECODER_HEADS = {"caption": "caption", "answer": "vqa"}

#: Size relations every call honours (the TensorRT profiles hold them at min, opt and max):
#: - `total = past + new`: a decoder's self-attention mask spans its cached and its new tokens;
#: - decoder rows come grouped by image (question): B groups of r = rows / B consecutive rows (beams,
#:   candidate answers) read image b's cross K/V in place, so `rows` is a multiple of `images`;
#: - a caption decoder's keys (`keys`, `cross_tokens`, its cross_kv `tokens`) are the image's 1 + N tokens.
AXIS_RELATIONS = ("total = past + new", "rows = images x r (grouped by image)", "caption keys = 1 + N image tokens")

_ROWS_TOKENS = {0: "rows", 1: "tokens"}
#: Dynamic axes by tensor name; a name means the same tensor in every graph that has it, except where
#: `_graph_axes` says otherwise (a decoder's `text_ids` are its new tokens, `states` differ per graph).
_AXES: dict[str, dict[int, str]] = {
    "pixels": {0: "images"},
    "image_embeds": {0: "images"},
    "image_feat": {0: "images"},
    "text_ids": _ROWS_TOKENS,
    "text_atts": _ROWS_TOKENS,
    "text_embeds": _ROWS_TOKENS,
    "text_feat": {0: "rows"},
    "image_index": {0: "rows"},
    "image_atts": {0: "rows"},
    "cls": {0: "rows"},
    "itm_logits": {0: "rows"},
    "bbox": {0: "rows"},
    "left_index": {0: "rows"},
    "right_index": {0: "rows"},
    "states": _ROWS_TOKENS,
    "logits": {0: "rows"},
    "cross_k": {1: "images", 3: "keys"},
    "cross_v": {1: "images", 3: "keys"},
    "cross_atts": {0: "rows", 1: "cross_tokens"},
    "self_atts": {0: "rows", 1: "total"},
    "cache_k": {1: "rows", 3: "past"},
    "cache_v": {1: "rows", 3: "past"},
    "new_cache_k": {1: "rows", 3: "total"},
    "new_cache_v": {1: "rows", 3: "total"},
}


@dataclass(frozen=True)
class GraphSpec:
    """One graph of the catalogue: what every backend, exporter and engine builder agrees on.

    `axes` maps each tensor with a dynamic dimension to {dim: axis name}; equal names are equal sizes
    within one call. `decoder` is "caption" or "answer" for decoder graphs, None for encoders.
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    axes: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    decoder: str | None = None


def decoder_graph(decoder: str, kind: str) -> str:
    """The name of a decoder's graph of `kind` ("caption", "step" -> "caption_step"): composed here only."""
    if decoder not in DECODER_HEADS or kind not in DECODER_KINDS:
        raise KeyError(f"no decoder graph {decoder!r}/{kind!r}: decoders {sorted(DECODER_HEADS)}, kinds {DECODER_KINDS}")
    return f"{decoder}_{kind}"


def _spec(name: str, kind: str, inputs: tuple[str, ...], outputs: tuple[str, ...], decoder: str | None = None) -> GraphSpec:
    axes = {n: dict(_AXES[n]) for n in (*inputs, *outputs) if n in _AXES}
    if kind == CROSS_KV:
        axes["states"] = {0: "images", 1: "tokens"}
    if kind in (STEP, SCORE):
        axes["text_ids"] = {0: "rows", 1: "new"}
    if kind == SCORE:
        axes["logits"] = {0: "rows", 1: "new"}
    return GraphSpec(name, kind, inputs, outputs, axes, decoder)


def catalogue(heads: Iterable[str]) -> dict[str, GraphSpec]:
    """Every graph a checkpoint with `heads` has, by name (the heads decide which exist and what they output)."""
    heads = set(heads)
    itc = ("image_feat",) if "itc" in heads else ()
    specs = [_spec("vision", ENCODER, ("pixels",), ("image_embeds", *itc))]
    if heads & {"itc", "itm", "bbox"}:
        specs.append(_spec("text", ENCODER, ("text_ids", "text_atts"), ("text_embeds", *(("text_feat",) if itc else ()))))
    image_query = ("image_embeds", "image_index", "image_atts")
    if heads & {"itm", "bbox"}:
        fused = ("cls", *(("itm_logits",) if "itm" in heads else ()), *(("bbox",) if "bbox" in heads else ()))
        specs.append(_spec("fusion", ENCODER, ("text_embeds", "text_atts", *image_query), fused))
    if heads & {"vqa", "mlm"}:
        specs.append(_spec("multimodal", ENCODER, ("text_ids", "text_atts", *image_query), ("states",)))
    if "nlvr" in heads:
        specs.append(_spec("nlvr", ENCODER, ("text_ids", "text_atts", "image_embeds", "left_index", "right_index"), ("logits",)))
    for decoder, head in DECODER_HEADS.items():
        if head not in heads:
            continue
        specs.append(_spec(decoder_graph(decoder, CROSS_KV), CROSS_KV, ("states",), ("cross_k", "cross_v"), decoder))
        for kind in (STEP, SCORE):
            # The extended cache is `new_cache_*`: ONNX graphs and TensorRT engines bind by name, and an
            # output may not share its name with an input.
            step_io = ("text_ids", "self_atts", "cache_k", "cache_v", "cross_k", "cross_v", "cross_atts")
            specs.append(_spec(decoder_graph(decoder, kind), kind, step_io, ("logits", "new_cache_k", "new_cache_v"), decoder))
    return {s.name: s for s in specs}


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


class Graph(nn.Module):
    """A graph module: its catalogue entry (`spec`) names the tensors it takes and returns, in order."""

    def __init__(self, spec: GraphSpec) -> None:
        super().__init__()
        self.spec = spec

    @property
    def INPUTS(self) -> tuple[str, ...]:
        return self.spec.inputs

    @property
    def OUTPUTS(self) -> tuple[str, ...]:
        return self.spec.outputs


class VisionGraph(Graph):
    """pixels (B, 3, R, R) -> image_embeds (B, 1 + N, C) [, image_feat (B, E) with ITC]."""

    def __init__(self, spec: GraphSpec, model: XVLM) -> None:
        super().__init__(spec)
        self.model = model
        self.itc = "image_feat" in spec.outputs

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        embeds = self.model.encode_image(pixels)
        return (embeds, self.model.image_features(embeds)) if self.itc else (embeds,)


class TextGraph(Graph):
    """ids, atts (K, T) -> text_embeds (K, T, hidden) [, text_feat (K, E) with ITC]. Text-only layers."""

    def __init__(self, spec: GraphSpec, model: XVLM) -> None:
        super().__init__(spec)
        self.model = model
        self.itc = "text_feat" in spec.outputs

    def forward(self, text_ids: torch.Tensor, text_atts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        embeds = self.model.encode_text(text_ids, text_atts)
        return (embeds, self.model.text_features(embeds)) if self.itc else (embeds,)


class FusionGraph(Graph):
    """Fusion layers over K texts, each reading image `image_index[k]` under mask `image_atts[k]`.

    text_embeds (K, T, hidden), text_atts (K, T), image_embeds (B, 1+N, C), image_index (K,),
    image_atts (K, 1+N) -> cls (K, hidden) [, itm_logits (K, 2)] [, bbox (K, 4)].
    """

    def __init__(self, spec: GraphSpec, model: XVLM) -> None:
        super().__init__(spec)
        self.model = model
        self.itm, self.bbox = "itm_logits" in spec.outputs, "bbox" in spec.outputs

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
            out.append(self.model.predict_bbox(cross, text_atts, context))
        return tuple(out)


class MultimodalGraph(Graph):
    """All text layers from ids with image cross-attention (the VQA question encoder).

    text_ids, text_atts (K, T), image_embeds (B, 1+N, C), image_index (K,), image_atts (K, 1+N) -> states (K, T, hidden).
    """

    def __init__(self, spec: GraphSpec, model: XVLM) -> None:
        super().__init__(spec)
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


class NlvrGraph(Graph):
    """NLVR2: K statements over image pairs (left_index[k], right_index[k]) of B encoded images -> logits (K, 2)."""

    def __init__(self, spec: GraphSpec, model: XVLM) -> None:
        super().__init__(spec)
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


class CrossKVGraph(Graph):
    """A decoder's cross-attention K/V, projected once per image (or question): states (B, S, C) ->
    k, v (L, B, heads, S, d). A caption reads the whole Swin image, whose [CLS] is the mean of the patches,
    so the [CLS] K/V are the pooled token's and nothing is rebuilt per step (DESIGN section 2)."""

    def __init__(self, spec: GraphSpec, decoder: BertLM) -> None:
        super().__init__(spec)
        self.decoder = decoder

    def forward(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.decoder.bert.cross_kv(states)
        return torch.stack([k for k, _ in kv.values()]), torch.stack([v for _, v in kv.values()])


class DecoderStepGraph(Graph):
    """Autoregressive steps of a causal decoder with a self-attention KV cache.

    text_ids (K, t) new tokens; self_atts (K, P + t) 1/0 over cached + new tokens; cache_k/cache_v
    (L, K, heads, P, d) (P may be 0); cross_k/cross_v (Lf, B, heads, S, d) from `CrossKVGraph`, the K rows
    grouped by image (or question): B groups of r = K / B rows (beams, candidate answers), so every row reads
    its image's K/V in place; cross_atts (K, S).
    -> logits (K, vocab) at the last new position (a STEP graph) or (K, t, vocab) at every new position (a
    SCORE graph), and the cache (L, K, heads, P + t, d) extended by the new tokens.
    """

    def __init__(self, spec: GraphSpec, decoder: BertLM) -> None:
        super().__init__(spec)
        self.decoder = decoder
        self.last_only = spec.kind == STEP

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


def decoder_shapes(graphs: dict[str, Graph]) -> dict[str, list[int]]:
    """{decoder: [layers, heads, head dim]} of every decoder `graphs` has: what an export's manifest records."""
    steps = {d: decoder_graph(d, STEP) for d in DECODER_HEADS}
    return {d: list(decoder_shape(graphs[s].decoder)) for d, s in steps.items() if s in graphs}


_ENCODERS = {"vision": VisionGraph, "text": TextGraph, "fusion": FusionGraph, "multimodal": MultimodalGraph, "nlvr": NlvrGraph}


def build_graphs(model: XVLM) -> dict[str, Graph]:
    """A module for every graph of `model`'s catalogue, by name. `*_score` returns the logits of every
    position (the official `rank_answer` re-scoring, and the uncached reference decoder)."""
    graphs: dict[str, Graph] = {}
    for name, spec in catalogue(model.config.heads).items():
        if spec.kind == ENCODER:
            graphs[name] = _ENCODERS[name](spec, model)
        else:
            decoder = getattr(model, f"{spec.decoder}_decoder")
            graphs[name] = CrossKVGraph(spec, decoder) if spec.kind == CROSS_KV else DecoderStepGraph(spec, decoder)
    return graphs
