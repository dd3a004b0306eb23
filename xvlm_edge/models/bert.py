"""BERT text encoder, fusion encoder and language-model heads, split at `fusion_layer`.

Layers below `fusion_layer` only see the text; layers from it on also cross-attend to a `CrossContext`
(image patches, box-restricted; or question states for the VQA decoder). One stack runs in three modes,
as the official `xbert.py` does: text (the lower layers), fusion (the upper layers, from text embeddings)
and full (all layers, from ids). Decoders run the same stack causally with a self-attention KV cache.
Attribute names follow the official keys without the `bert.` prefix of the pretraining layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xvlm_edge.concepts import box_cross_attention
from xvlm_edge.config import TextConfig
from xvlm_edge.models.layers import ACTIVATIONS

#: Additive self-attention mask value of the official BERT (`(1 - mask) * -10000`).
SELF_MASK_VALUE = -10000.0


@dataclass
class CrossContext:
    """What a fusion layer cross-attends to.

    states: (B, S, C) per-image tokens, projected to K/V once per image (or None when `kv` is given).
    atts: (K, S) 1 where query row k may look (with `pooled`: the patch mask, S = N patches).
    index: (K,) image of each query row, or None when the rows are grouped by image: image b owns rows
        b*r .. b*r + r - 1, r = K / B (r = 1: row k uses image k), read without a per-row copy.
    pooled: prepend the masked-mean token (the Swin concept token) built from `states` and `atts`.
    kv: per fusion layer, K/V already projected from `states` (`BertModel.cross_kv`), so that a decoder
        projects them once per image and reuses them for every step and beam.
    """

    states: torch.Tensor | None
    atts: torch.Tensor
    index: torch.Tensor | None = None
    pooled: bool = False
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None


class BertEmbeddings(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, past_length: int = 0) -> torch.Tensor:
        positions = torch.arange(past_length, past_length + input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0] + self.position_embeddings(positions)
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    """query/key/value projections; `kv_width` differs from the hidden size for cross-attention."""

    def __init__(self, config: TextConfig, kv_width: int) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // max(1, config.num_heads)  # a config with 0 heads is refused elsewhere, with its reason
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(kv_width, config.hidden_size)
        self.value = nn.Linear(kv_width, config.hidden_size)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, H*d) -> (B, H, L, d)."""
        return x.view(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

    def project_kv(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.key(states)), self.heads(self.value(states))


class BertSelfOutput(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: TextConfig, kv_width: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(config, kv_width)
        self.output = BertSelfOutput(config)


class BertIntermediate(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertOutput(BertSelfOutput):
    """The feed-forward's second half: intermediate -> hidden, residual, LayerNorm."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__(config)
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)


class BertLayer(nn.Module):
    def __init__(self, config: TextConfig, cross_width: int | None) -> None:
        super().__init__()
        self.attention = BertAttention(config, config.hidden_size)
        self.crossattention = None if cross_width is None else BertAttention(config, cross_width)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(
        self,
        x: torch.Tensor,
        self_mask: torch.Tensor,
        context: CrossContext | None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        cross_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (K, T, hidden); self_mask additive (K, 1, T or 1, P+T); returns the new x and this step's K/V."""
        attn = self.attention.self
        k, v = attn.project_kv(x)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        q = attn.heads(attn.query(x))
        # The scale is a Python constant: left to SDPA, the ONNX export computes 1/sqrt(d) from the tensor's
        # shape at every call (Shape, Gather, Cast, Sqrt, Div per layer)
        out = _merge_heads(F.scaled_dot_product_attention(q, k, v, self_mask, scale=attn.head_dim**-0.5))
        x = self.attention.output(out, x)
        if self.crossattention is not None:
            if context is None:
                raise ValueError("a fusion layer needs a cross-attention context")
            cross = self.crossattention.self
            ck, cv = cross.project_kv(context.states) if cross_kv is None else cross_kv  # once per image
            out = box_cross_attention(cross.heads(cross.query(x)), ck, cv, context.index, context.atts, pooled=context.pooled)
            x = self.crossattention.output(_merge_heads(out), x)
        return self.output(self.intermediate(x), x), (k, v)


class BertEncoder(nn.Module):
    def __init__(self, layers: list[BertLayer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)


class BertModel(nn.Module):
    """Embeddings + a stack of layers; layers >= `fusion_layer` carry cross-attention of `cross_width`.

    `num_layers` / `fusion_layer` / `cross_width` override the text config for the NLVR2 stack (fusion
    layers doubled, one per image) and the VQA answer decoder (fusion from layer 0 over question states).
    """

    def __init__(
        self,
        config: TextConfig,
        cross_width: int,
        *,
        num_layers: int | None = None,
        fusion_layer: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.num_layers = config.num_layers if num_layers is None else num_layers
        self.fusion_layer = config.fusion_layer if fusion_layer is None else fusion_layer
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(
            [BertLayer(config, cross_width if i >= self.fusion_layer else None) for i in range(self.num_layers)]
        )

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        context: CrossContext | list[CrossContext] | None = None,
        layers: range | None = None,
        causal: bool = False,
        past: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Run `layers` (default all) from ids (int) or embeddings (float).

        attention_mask: (K, P + T) 1/0 over cached and new tokens. A list of contexts is cycled over the
        fusion layers (NLVR2: layer l attends to image `(l - fusion_layer) % 2`). Returns the hidden
        states and, per layer run, the self-attention K/V including `past` (the decoder cache).
        """
        past_length = 0 if past is None else past[0][0].shape[2]
        x = self.embeddings(hidden, past_length) if not hidden.is_floating_point() else hidden
        mask = extended_attention_mask(attention_mask, x.shape[1], causal, x.dtype)
        layers = range(self.num_layers) if layers is None else layers
        cache = []
        for j, i in enumerate(layers):
            ctx = context
            if isinstance(context, list):
                ctx = context[(i - self.fusion_layer) % len(context)]
            fused = i >= self.fusion_layer
            cross_kv = ctx.kv[i] if fused and ctx.kv is not None else None
            x, kv = self.encoder.layer[i](x, mask, ctx if fused else None, None if past is None else past[j], cross_kv)
            cache.append(kv)
        return x, cache

    def cross_kv(self, states: torch.Tensor, layers: range | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention K/V of every fusion layer in `layers`, projected once from (B, S, C) states."""
        layers = self.fusion_layers() if layers is None else layers
        return {i: self.encoder.layer[i].crossattention.self.project_kv(states) for i in layers if i >= self.fusion_layer}

    def text_layers(self) -> range:
        return range(self.fusion_layer)

    def fusion_layers(self) -> range:
        return range(self.fusion_layer, self.num_layers)


class LMHead(nn.Module):
    """Official `cls.predictions`: transform then a decoder tied to the word embeddings (passed in)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.act = ACTIVATIONS[config.hidden_act]
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        x = self.transform.LayerNorm(self.act(self.transform.dense(x)))
        return F.linear(x, word_embeddings, self.bias)


class BertLM(nn.Module):
    """A BERT stack with its LM head: the captioning decoder and the VQA answer decoder."""

    def __init__(self, bert: BertModel) -> None:
        super().__init__()
        self.bert = bert
        self.head = LMHead(bert.config)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden, self.bert.embeddings.word_embeddings.weight)


def extended_attention_mask(mask: torch.Tensor, new_tokens: int, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """(K, P + T) 1/0 -> additive (K, 1, 1 or T, P + T); a causal mask lets new token t see cached + <= t."""
    keep = mask[:, None, None, :].to(dtype)
    if causal:
        total = mask.shape[1]
        rows = torch.arange(total - new_tokens, total, device=mask.device)[:, None]
        keep = keep * (torch.arange(total, device=mask.device)[None, :] <= rows).to(dtype)
    return (1.0 - keep) * SELF_MASK_VALUE


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(K, H, T, d) -> (K, T, H*d)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)
