"""The `attend` box head: a phrase finds its object by attending over the image's patches.

The official head regresses (cx, cy, w, h) from the fused [CLS] alone, so the location has to travel from the
patches into one vector and out through an MLP. Trained from scratch on the synthetic domain, that path stays at
the mean box (training/README.md). Here the location never leaves the patch grid: the phrase (its fused [CLS]
plus the mean of its fused tokens, so that the query depends on the words) attends over its image's patches,
the centre is the attention-weighted mean of the known patch centres around the strongest patch, and only the
size is regressed, from the phrase and those patches. Official checkpoints have the `cls` head; this one is a
preset option.

Why only around the strongest patch: attention that leaks onto the rest of the image pulls a mean over all
patches toward the image centre. On the previous embedded model (2026-12-07, 470 held-out phrases) the centre
over all patches put the box at IoU >= 0.5 for 0.457 of phrases; read from the strongest patch's 3 x 3
neighbourhood, with the same weights, 0.613. The embedded model's objects span at most 3 patches of its 8 x 8
grid, so the neighbourhood holds the whole object.

`attend_position` adds one term to the scores: the phrase picks a direction on the grid, and each patch scores
its offset from the image centre along it (a linear function of position, zero at initialisation). A dot
product of the phrase with each patch cannot say "the leftmost cyan triangle": both cyan triangles match it
alike. Added to their matching scores, a direction that points left makes the leftmost one win the softmax,
whatever the other objects' positions. On the embedded model (150 held-out scenes, 470 phrases) the attend head
grounded 0.38 of the phrases with a superlative or a relation and 0.82 of the rest; with the direction alone
trained on frozen features, 0.77 and 0.80. Trained with the rest of the head on whole scenes
(training/finetune_grounding.py), it took the model's grounding of 1,000 held-out scenes from 0.704 to 0.868.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from xvlm_edge.concepts import group_index
from xvlm_edge.models.bert import CrossContext
from xvlm_edge.models.layers import build_head

#: Patches (Chebyshev distance on the grid) around the strongest one that the centre and size are read from.
NEIGHBOURHOOD = 1


def neighbours(grid: int, radius: int = NEIGHBOURHOOD) -> torch.Tensor:
    """(grid * grid, grid * grid) 0/1: patch j lies within `radius` rows and columns of patch i (row-major)."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    cells = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)
    return ((cells[:, None] - cells[None]).abs().amax(-1) <= radius).float()


def patch_centres(grid: int) -> torch.Tensor:
    """(grid * grid, 2) normalised (x, y) centres of the row-major patch grid."""
    steps = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    y, x = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)


class AttendBoxHead(nn.Module):
    def __init__(self, hidden: int, width: int, grid: int, *, position: bool = False) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(hidden)
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(width, hidden)
        self.size = build_head(hidden + width, 2)
        self.position = nn.Linear(hidden, 2) if position else None  # the phrase's direction on the grid
        if self.position is not None:
            nn.init.zeros_(self.position.weight)
            nn.init.zeros_(self.position.bias)
        self.register_buffer("centres", patch_centres(grid), persistent=False)
        self.register_buffer("near", neighbours(grid), persistent=False)

    def forward(self, cross: torch.Tensor, text_atts: torch.Tensor, context: CrossContext) -> torch.Tensor:
        """cross (K, T, hidden) fused text, text_atts (K, T), the fusion's context -> (K, 4) cxcywh in [0, 1]."""
        return self.box(*self.attend(cross, text_atts, context))

    def attend(self, cross: torch.Tensor, text_atts: torch.Tensor, context: CrossContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(phrase (K, hidden), its attention over its image's patches (K, N), those patches (K, N, width)).

        Training reads the weights too: the share of them on the named object's patches is a loss of its own
        (training/losses.py::attention_mass_loss)."""
        if context.states is None:
            raise ValueError("the attend box head needs the image's patch states in the context, not only K/V")
        patches, atts = (context.states, context.atts) if context.pooled else (context.states[:, 1:], context.atts[:, 1:])
        index = context.index
        if index is None:
            index = group_index(cross.shape[0], patches.shape[0], cross.device)
        phrase = self.summarize(cross, text_atts)
        return phrase, self.weigh(phrase, patches, index, atts), patches[index]

    @staticmethod
    def summarize(cross: torch.Tensor, text_atts: torch.Tensor) -> torch.Tensor:
        """The phrase (K, hidden): its fused [CLS] plus the mean of its fused words, so that it depends on them."""
        # the words' mask without [CLS]; not a [:, 1:] slice, which torch.export guards against one-word texts
        first = torch.arange(cross.shape[1], device=cross.device) == 0
        # unsqueezed while integer: XNNPACK takes a float reshape with one dynamic axis only (K and T here)
        words = text_atts.masked_fill(first, 0)[..., None].to(cross.dtype)  # (K, T, 1)
        return cross[:, 0] + (cross * words).sum(1) / words.sum(1).clamp(min=1)

    def weigh(self, phrase: torch.Tensor, patches: torch.Tensor, index: torch.Tensor, atts: torch.Tensor | None = None) -> torch.Tensor:
        """The attention (K, N) of phrase k over the patches (B, N, width) of its image `index[k]`, under `atts`
        (K, N) (None: every patch)."""
        normed = self.query_norm(phrase)
        query = self.query(normed)  # (K, hidden)
        keys = self.key(patches)[index]  # (K, N, hidden): projected once per image
        # products and sums, not einsum: its batched matmul needs a reshape over two dynamic axes (K, and T or
        # B), which XNNPACK (the lamp SDK's delegate) cannot take
        scores = (keys * query[:, None]).sum(-1) / math.sqrt(query.shape[-1])
        if self.position is not None:
            offsets = (self.centres - 0.5).to(scores.dtype)  # (N, 2): each patch's place relative to the centre
            scores = scores + (self.position(normed)[:, None] * offsets).sum(-1)
        if atts is not None:
            scores = scores.masked_fill(atts == 0, torch.finfo(scores.dtype).min)
        return scores.softmax(dim=-1)

    def box(self, phrase: torch.Tensor, weights: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """The centre is the weights' mean of the patch centres around the strongest patch (renormalised there);
        the size is regressed from the phrase and the same patches."""
        local = weights * self.near.to(weights.dtype)[weights.argmax(-1)]  # (K, N)
        local = local / local.sum(-1, keepdim=True)
        centre = local @ self.centres.to(weights.dtype)  # (K, 2)
        attended = (local[..., None] * patches).sum(1)
        size = self.size(torch.cat([phrase, attended], dim=-1)).sigmoid()
        return torch.cat([centre, size], dim=-1)
