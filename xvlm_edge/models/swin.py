"""Swin Transformer image encoder as X-VLM uses it: shifted windows, relative-position bias, mean-pooled [CLS].

Follows Liu et al. 2021 (microsoft/Swin-Transformer) with the X-VLM change that the encoder returns
`[mean of patches, patches]` instead of class logits. Attribute names follow the official checkpoint keys.
Derived buffers (`relative_position_index`, `attn_mask`) are rebuilt, never saved.
"""

from __future__ import annotations

import torch
from torch import nn

from xvlm_edge.config import SwinConfig
from xvlm_edge.models.layers import Mlp


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/w * W/w, w*w, C) non-overlapping windows, row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_order(resolution: int, window: int, shift: int) -> torch.Tensor:
    """(H*W,) the grid token each position of the shifted windows reads: `x[:, order]` on row-major tokens
    (B, H*W, C) is `window_partition(torch.roll(x, (-shift, -shift), (1, 2)), window)` flattened.

    One gather instead of a roll (four slices, two concatenations) and a 6-D permute each way: the same
    values, and on the exported INT8 Swin-B graph the slices alone were 12 ms of 260."""
    grid = torch.arange(resolution * resolution).view(1, resolution, resolution, 1)
    rolled = torch.roll(grid, (-shift, -shift), dims=(1, 2))
    return window_partition(rolled, window).flatten()


def relative_position_index(window: int) -> torch.Tensor:
    """(w*w, w*w) index into the (2w-1)^2 bias table for every (query, key) pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # (w*w, w*w, 2)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shifted_window_mask(resolution: int, window: int, shift: int) -> torch.Tensor:
    """(nW, w*w, w*w) additive mask (-100) that stops shifted windows from mixing wrapped-around regions."""
    region = torch.zeros(1, resolution, resolution, 1)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bands:
        for cols in bands:
            region[:, rows, cols, :] = label
            label += 1
    labels = window_partition(region, window).squeeze(-1)  # (nW, w*w)
    differs = labels[:, None, :] != labels[:, :, None]
    return differs.float() * -100.0


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative-position bias."""

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.dim, self.window, self.num_heads = dim, window, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B*nW, w*w, C). Every size but the window count comes from the module, not from `x.shape`: an
        export then reshapes by constants instead of computing each shape at run time."""
        n, c, heads = self.window**2, self.dim, self.num_heads
        d = c // heads

        def split_heads(t: torch.Tensor) -> torch.Tensor:  # (B*nW, w*w, C) -> (B*nW*heads, w*w, d)
            return t.reshape(-1, n, heads, d).transpose(1, 2).reshape(-1, n, d)

        # Three channel slices and explicit bmm (not a 5-D permute, indexing and 4-D `@`): the same arithmetic,
        # in ops an export lowers whole (`@` on 4-D tensors exports as expand copies and bmm).
        qkv = self.qkv(x)
        q, k, v = (split_heads(qkv[..., i * c : (i + 1) * c]) for i in range(3))
        attn = torch.bmm(q * self.scale, k.transpose(1, 2)).view(-1, heads, n, n)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1)[None]  # (1, heads, w*w, w*w)
        if mask is None:
            attn = attn + bias
        else:  # bias and mask summed first: constants of an export, folded into one Add
            attn = attn.view(-1, len(mask), heads, n, n) + (bias[None] + mask[None, :, None])
        out = torch.bmm(attn.reshape(-1, n, n).softmax(dim=-1), v)  # (B*nW*heads, w*w, d)
        return self.proj(out.view(-1, heads, n, d).transpose(1, 2).reshape(-1, n, c))


class SwinBlock(nn.Module):
    """Pre-norm block: (shifted) window attention then MLP, each with a residual."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, shift: int, config: SwinConfig):
        super().__init__()
        if resolution <= window:  # the whole stage fits in one window: no partition, no shift
            window, shift = resolution, 0
        self.dim, self.resolution, self.window, self.shift = dim, resolution, window, shift
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio), "gelu")
        mask = shifted_window_mask(resolution, window, shift) if shift else None
        self.register_buffer("attn_mask", mask, persistent=False)
        # (H*W,) token orders grid -> shifted windows and back; None when the stage is one window
        order = window_order(resolution, window, shift) if window < resolution else None
        self.register_buffer("window_tokens", order, persistent=False)
        self.register_buffer("grid_tokens", None if order is None else torch.argsort(order), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H*W, C) row-major tokens."""
        h = self.norm1(x)
        if self.window_tokens is not None:
            h = h.index_select(1, self.window_tokens)  # shifted windows, consecutive
        h = self.attn(h.reshape(-1, self.window**2, self.dim), self.attn_mask)
        h = h.reshape(-1, self.resolution**2, self.dim)
        if self.grid_tokens is not None:
            h = h.index_select(1, self.grid_tokens)  # back to the grid
        x = x + h
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token: (B, H*W, C) -> (B, H/2*W/2, 2C)."""

    def __init__(self, dim: int, resolution: int, config: SwinConfig) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim, eps=config.layer_norm_eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        half = self.resolution // 2
        # The official channel order is the four neighbours (row, col) = (0,0), (1,0), (0,1), (1,1): column
        # parity major. One permute gives it (strided slices and a concatenation export outside XNNPACK).
        x = x.view(b, half, 2, half, 2, c).permute(0, 1, 3, 4, 2, 5)  # (B, H/2, W/2, col parity, row parity, C)
        return self.reduction(self.norm(x.reshape(b, half * half, 4 * c)))


class SwinStage(nn.Module):
    def __init__(self, dim: int, resolution: int, depth: int, num_heads: int, last: bool, config: SwinConfig):
        super().__init__()
        window = config.window_size
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, num_heads, window, 0 if i % 2 == 0 else window // 2, config)
            for i in range(depth)
        )
        self.downsample = None if last else PatchMerging(dim, resolution, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed(nn.Module):
    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, config.embed_dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(pixels).flatten(2).transpose(1, 2))  # (B, H*W, C)


def sincos_position_embedding(side: int, dim: int) -> torch.Tensor:
    """(side * side, dim) 2-D sine-cosine code of the patch grid, row-major: the first half of the channels
    encodes the row, the second the column (MAE's). The learned `ape` starts here: from step 0 every patch
    knows where it is, which a from-scratch box regression needs long before a random init learns it."""
    if dim % 4:
        raise ValueError(f"the sine-cosine position code needs channels divisible by 4, got {dim}")
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    pos = torch.arange(side, dtype=torch.float32)[:, None] * freqs  # (side, dim / 4)
    code = torch.cat([pos.sin(), pos.cos()], dim=1)  # (side, dim / 2)
    rows = code[:, None].expand(side, side, dim // 2)
    cols = code[None, :].expand(side, side, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(side * side, dim)


class SwinTransformer(nn.Module):
    """Pixels (B, 3, R, R) -> tokens (B, 1 + N, width): `[mean of patches, patches]` after the final norm."""

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        resolution = config.image_res // config.patch_size
        if config.ape:
            self.absolute_pos_embed = nn.Parameter(sincos_position_embedding(resolution, config.embed_dim)[None])
        last = len(config.depths) - 1
        stages = []
        for i, (depth, heads) in enumerate(zip(config.depths, config.num_heads, strict=True)):
            stages.append(SwinStage(config.embed_dim * 2**i, resolution // 2**i, depth, heads, i == last, config))
        self.layers = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)

    def forward_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> (B, N, width) final-grid patch tokens."""
        x = self.patch_embed(pixels)
        if self.config.ape:
            x = x + self.absolute_pos_embed
        for stage in self.layers:
            x = stage(x)
        return self.norm(x)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.forward_patches(pixels)
        return torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1)

