"""CLIP ViT image encoder as X-VLM uses it: the last `local_attn_depth` layers see only a box.

Radford et al. 2021 (openai/CLIP, via Hugging Face's CLIPVisionModel) with X-VLM's change: for region
texts, the hidden states entering the last `local_attn_depth` layers are copied once per box and run
with a self-attention mask that hides the patches outside the box. The full images run alongside, so
one call returns both the box copies and the full-image tokens. Attribute names follow the official keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xvlm_edge.config import ClipVitConfig
from xvlm_edge.models.layers import Mlp


class ClipAttention(nn.Module):
    def __init__(self, config: ClipVitConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.k_proj = nn.Linear(config.width, config.width)
        self.v_proj = nn.Linear(config.width, config.width)
        self.q_proj = nn.Linear(config.width, config.width)
        self.out_proj = nn.Linear(config.width, config.width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        heads = lambda t: t.view(b, n, self.num_heads, -1).transpose(1, 2)  # noqa: E731  (B, h, N, d)
        out = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)), mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class ClipEncoderLayer(nn.Module):
    def __init__(self, config: ClipVitConfig) -> None:
        super().__init__()
        self.self_attn = ClipAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.mlp = Mlp(config.width, config.intermediate_size, config.hidden_act)
        self.layer_norm2 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class ClipEncoder(nn.Module):
    def __init__(self, config: ClipVitConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ClipEncoderLayer(config) for _ in range(config.num_layers))


class ClipVisionTransformer(nn.Module):
    """Pixels (B, 3, R, R) -> tokens (B, 1 + N, width): `[class token, patches]` after `post_layernorm`."""

    def __init__(self, config: ClipVitConfig) -> None:
        super().__init__()
        self.config = config
        num_tokens = config.grid**2 + 1
        self.patch_embed = nn.Conv2d(3, config.width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(config.width))
        self.pos_embed = nn.Embedding(num_tokens, config.width)
        self.pre_layrnorm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)  # sic: the official key
        self.encoder = ClipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # (B, N, C)
        cls = self.class_embedding.expand(len(pixels), 1, -1).to(patches.dtype)
        return self.pre_layrnorm(torch.cat([cls, patches], dim=1) + self.pos_embed.weight)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self._embed(pixels)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)

    def forward_boxes(
        self, pixels: torch.Tensor, idx_to_group_img: torch.Tensor, image_atts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Box copies (K, 1+N, C) under `image_atts` (K, 1+N) in the local layers, and full images (B, 1+N, C)."""
        x = self._embed(pixels)
        layers = self.encoder.layers
        local_from = len(layers) - self.config.local_attn_depth
        for layer in layers[:local_from]:
            x = layer(x)
        num_boxes = len(idx_to_group_img)
        x = torch.cat([x[idx_to_group_img], x], dim=0)  # (K + B, 1+N, C)
        keep = torch.cat([image_atts.to(x.dtype), x.new_ones(x.shape[0] - num_boxes, x.shape[1])])
        mask = ((1.0 - keep) * -10000.0)[:, None, None, :]  # (K + B, 1, 1, 1+N): the official additive mask
        for layer in layers[local_from:]:
            x = layer(x, mask)
        x = self.post_layernorm(x)
        return x[:num_boxes], x[num_boxes:]
