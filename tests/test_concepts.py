"""Box -> patch mask (official rule), masked-mean concepts, and the K/V-once cross-attention identity."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from xvlm_edge.concepts import box_cross_attention, box_pool, box_to_patch_mask
from xvlm_edge.errors import InputError

# (role in the fixtures, patch size of the final grid): Swin-B merges to 32-pixel patches, CLIP uses 16.
ROLES = {"swin": 32, "clip_pretrain": 16, "clip_retrieval": 16}


def test_patch_masks_match_official_rule(reference_dir: Path) -> None:
    inputs = torch.load(reference_dir / "inputs/inputs.pt", weights_only=True)
    for role, patch in ROLES.items():
        expected = inputs[f"regions_image_atts_{role}"]
        res = math.isqrt(expected.shape[1] - 1) * patch
        boxes = inputs[f"regions_boxes_resized_xywh_{role}"]
        is_image = inputs["regions_is_image"].bool()
        masks = box_to_patch_mask(boxes[~is_image], res, patch)
        assert torch.equal(masks, expected[~is_image]), role
        assert expected[is_image].all(), "whole-image rows see every patch"


def test_patch_mask_edge_cases() -> None:
    masks = box_to_patch_mask(torch.tensor([[0.0, 0.0, 0.0, 0.0], [63.9, 63.9, 5.0, 5.0], [0.0, 0.0, 64.0, 64.0], [31.0, 0.0, 2.0, 1.0]]), 64, 32)
    assert masks[0].tolist() == [1, 1, 0, 0, 0]  # a zero-size box still keeps the patch it sits in
    assert masks[1].tolist() == [1, 0, 0, 0, 1]  # beyond the border: clamped to the last patch
    assert masks[2].tolist() == [1, 1, 1, 1, 1]
    assert masks[3].tolist() == [1, 1, 1, 0, 0]  # touching two patches counts both
    with pytest.raises(InputError, match="shape"):
        box_to_patch_mask(torch.zeros(3), 64, 32)
    with pytest.raises(InputError, match="non-negative"):
        box_to_patch_mask(torch.tensor([[0.0, 0.0, -1.0, 2.0]]), 64, 32)


def test_box_pool_is_masked_mean() -> None:
    torch.manual_seed(0)
    patches = torch.randn(3, 7, 5)
    idx = torch.tensor([2, 0, 2])
    mask = torch.tensor([[1, 0, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1]])
    pooled = box_pool(patches, idx, mask)
    for k in range(3):
        expected = patches[idx[k]][mask[k].bool()].mean(0)
        torch.testing.assert_close(pooled[k], expected)


def test_cross_attention_with_kv_once_equals_official_copies() -> None:
    """DESIGN.md section 2: projecting K/V once per image and pooling keys equals the official per-copy path."""
    torch.manual_seed(0)
    num_images, num_patches, width, heads, dim, texts, length = 2, 9, 12, 2, 4, 5, 3
    patches = torch.randn(num_images, num_patches, width, dtype=torch.float64)
    key, value = torch.nn.Linear(width, heads * dim).double(), torch.nn.Linear(width, heads * dim).double()
    q = torch.randn(texts, heads, length, dim, dtype=torch.float64)
    idx = torch.tensor([0, 1, 1, 0, 1])
    mask = (torch.rand(texts, num_patches) > 0.5).long()
    mask[:, 0] = 1

    # Official: gather [masked mean, patches] per text, project every copy, additive -1e9 mask.
    copies = patches[idx]
    weights = mask.double()[..., None]
    tokens = torch.cat([(weights * copies).sum(1, keepdim=True) / weights.sum(1, keepdim=True), copies], dim=1)
    split = lambda t: t.view(texts, -1, heads, dim).transpose(1, 2)  # noqa: E731
    full_mask = torch.cat([torch.ones(texts, 1, dtype=torch.long), mask], dim=1)
    scores = q @ split(key(tokens)).transpose(-1, -2) / math.sqrt(dim) + (1 - full_mask[:, None, None].double()) * -1e9
    official = F.softmax(scores, dim=-1) @ split(value(tokens))

    per_image = lambda proj: proj(patches).view(num_images, -1, heads, dim).transpose(1, 2)  # noqa: E731
    ours = box_cross_attention(q, per_image(key), per_image(value), idx, mask, pooled=True)
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-12)


@pytest.mark.parametrize("pooled", [True, False])
def test_none_index_means_rows_grouped_by_image(pooled: bool) -> None:
    """idx_to_group_img=None: image b owns rows b*r .. b*r + r - 1 (r = K / B), with or without the pooled token."""
    torch.manual_seed(0)
    q = torch.randn(6, 2, 3, 4, dtype=torch.float64)
    k, v = torch.randn(2, 2, 5, 4, dtype=torch.float64), torch.randn(2, 2, 5, 4, dtype=torch.float64)
    mask = (torch.rand(6, 5) > 0.5).long()
    mask[:, 0] = 1
    grouped = box_cross_attention(q, k, v, None, mask, pooled=pooled)
    explicit = box_cross_attention(q, k, v, torch.tensor([0, 0, 0, 1, 1, 1]), mask, pooled=pooled)
    torch.testing.assert_close(grouped, explicit, rtol=0, atol=1e-12)
    with pytest.raises(InputError, match="5 rows cannot be split evenly over 2 images"):
        box_cross_attention(q[:5], k, v, None, mask[:5], pooled=pooled)
