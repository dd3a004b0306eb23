"""Parts shared by every encoder: activations, the transformer MLP, and the official head MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's sigmoid approximation of GELU; CLIP weights were trained with it, so it is not swappable."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": F.gelu, "quick_gelu": quick_gelu}


class Mlp(nn.Module):
    """fc1 -> activation -> fc2, the feed-forward of Swin and CLIP blocks (keys `fc1`, `fc2`)."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def build_head(dim: int, out: int) -> nn.Sequential:
    """Official `build_mlp`: Linear(d, 2d) -> LayerNorm -> GELU -> Linear(2d, out); keys `.0 .1 .3`."""
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(), nn.Linear(2 * dim, out))
