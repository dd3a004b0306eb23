"""Visual concepts: a box becomes a patch mask, a masked mean, and a restriction on cross-attention.

This module is the PyTorch reference (the oracle for every kernel test) for the two box operations of
X-VLM, and the one place that decides whether the fused Triton kernels run instead (DESIGN.md section 2).
It is also the kernels' only caller: `kernels/` imports nothing from `xvlm_edge` (no import cycle), so it
raises plain ValueError / RuntimeError, which `_run_kernel` turns into InputError / BackendUnavailableError.

* `box_to_patch_mask`: the official floor/ceil rule (`RegionTextJsonDataset.get_image_attns`): a patch
  counts if the box touches it at all, and at least one patch is always on.
* `box_pool`: the concept embedding, the masked mean of the patches inside the box.
* `box_cross_attention`: text queries attend to `{pooled} + {patches in the box}`. Key and value
  projections are affine, so the pooled token's key and value are the masked means of the patch keys and
  values: K/V are computed once per image and never once per (text, box) pair as the official code does.
"""

from __future__ import annotations

import math
import os

import torch

from xvlm_edge.errors import BackendUnavailableError, InputError

#: Force the kernel path ("triton") or the reference ("torch"); unset means triton on CUDA, torch elsewhere.
BACKEND_ENV = "XVLM_EDGE_CONCEPTS"


def box_to_patch_mask(boxes_xywh: torch.Tensor, image_res: int, patch_size: int) -> torch.Tensor:
    """Boxes `[x, y, w, h]` in pixels of the `image_res` square model input -> (K, 1 + P*P) int64 masks.

    Entry 0 (the [CLS] / pooled token) is always 1; patch (row i, col j) is entry `1 + P*i + j`.
    """
    boxes = torch.as_tensor(boxes_xywh, dtype=torch.float64)
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise InputError(f"boxes must have shape (K, 4) as [x, y, w, h]; got {tuple(boxes.shape)}")
    if not torch.isfinite(boxes).all() or (boxes[:, 2:] < 0).any():
        raise InputError("boxes must be finite with non-negative width and height")
    grid = image_res // patch_size
    first = torch.clamp(torch.floor(boxes[:, :2] / patch_size), 0, grid - 1).long()  # (K, 2) as (x, y)
    end = torch.clamp(torch.ceil((boxes[:, :2] + boxes[:, 2:]) / patch_size), max=grid).long()
    end = torch.maximum(end, first + 1)
    cells = torch.arange(grid)
    cols = (cells[None] >= first[:, :1]) & (cells[None] < end[:, :1])  # (K, P)
    rows = (cells[None] >= first[:, 1:]) & (cells[None] < end[:, 1:])  # (K, P)
    patches = (rows[:, :, None] & cols[:, None, :]).flatten(1)  # (K, P*P), row-major
    return torch.cat([torch.ones(len(boxes), 1, dtype=torch.bool), patches], dim=1).long()


def box_pool(patches: torch.Tensor, idx_to_group_img: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of each box's patches: (B, N, D) patches, (K,) image index, (K, N) mask -> (K, D)."""
    if _use_kernels(patches):
        from xvlm_edge.kernels import box_pool as kernel

        return _run_kernel(kernel, patches, idx_to_group_img, patch_mask)
    weights = patch_mask.to(patches.dtype)  # (K, N)
    summed = torch.einsum("kn,knd->kd", weights, patches[idx_to_group_img])
    return summed / weights.sum(-1, keepdim=True)


def check_grouping(rows: int, images: int) -> None:
    """`idx_to_group_img=None` groups query rows by image (image b owns rows b*r .. b*r + r - 1): rows must split evenly."""
    if rows % images:
        raise InputError(
            f"box_cross_attention: idx_to_group_img=None groups the query rows by image, but {rows} rows "
            f"cannot be split evenly over {images} images (give an index instead)"
        )


def group_index(rows: int, images: int, device: torch.device) -> torch.Tensor:
    """The (rows,) image index that `idx_to_group_img=None` means."""
    check_grouping(rows, images)
    return torch.arange(images, device=device).repeat_interleave(rows // images)


def box_cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx_to_group_img: torch.Tensor | None,
    mask: torch.Tensor,
    *,
    pooled: bool,
) -> torch.Tensor:
    """Masked cross-attention of K query rows over per-image keys and values.

    q: (K, H, T, d) text queries; k, v: (B, H, N, d) projected once per image; `idx_to_group_img` (K,)
    maps each query row to its image; None means the rows are grouped by image, image b owning rows
    b*r .. b*r + r - 1 with r = K / B, so K must be a multiple of B (r = 1: row k reads image k; a
    decoder's beams, VQA's candidate answers). The kernel gives None the same meaning. Without `pooled`
    K/V are then read in place, never copied per row. mask: (K, N) 1 where a key is visible.
    With `pooled`, a pooled token whose key/value are the masked means of the visible keys/values is
    prepended (the Swin concept token); without it, token 0 is already in `k`/`v` (CLIP, decoders).
    Returns (K, H, T, d). Scores are `q.k / sqrt(d)` with the official -1e9 additive mask.
    """
    if _use_kernels(q) and pooled:
        from xvlm_edge.kernels import box_cross_attention as kernel

        return _run_kernel(kernel, q, k, v, idx_to_group_img, mask)
    if idx_to_group_img is None:
        rows, images = q.shape[0], k.shape[0]
        check_grouping(rows, images)
        if not pooled:
            return _grouped_attention(q, k, v, mask)
        if rows != images:
            idx_to_group_img = group_index(rows, images, q.device)  # (K,)
    if idx_to_group_img is not None:
        k, v = k[idx_to_group_img], v[idx_to_group_img]  # (K, H, N, d): an index, not a projection
    mask = mask.to(q.dtype)[:, None, None, :]  # (K, 1, 1, N)
    if pooled:
        count = mask.sum(-1, keepdim=True)  # (K, 1, 1, 1)
        k = torch.cat([(mask @ k) / count, k], dim=2)  # (K, H, 1 + N, d)
        v = torch.cat([(mask @ v) / count, v], dim=2)
        mask = torch.cat([torch.ones_like(mask[..., :1]), mask], dim=-1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + (1.0 - mask) * -1e9  # (K, H, T, S)
    return scores.softmax(dim=-1) @ v


def _grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`box_cross_attention` without a pooled token for rows grouped by image: image b's r rows become r*T
    queries of one (B, H, r*T, S) product against its keys, so no per-row copy of K/V is made."""
    rows, heads, tokens, dim = q.shape
    images, keys = k.shape[0], k.shape[2]
    q = q.reshape(images, -1, heads, tokens, dim).transpose(1, 2).reshape(images, heads, -1, dim)  # (B, H, r*T, d)
    bias = ((1.0 - mask.to(q.dtype)) * -1e9).reshape(images, 1, -1, 1, keys)  # (B, 1, r, 1, S)
    bias = bias.expand(-1, -1, -1, tokens, -1).reshape(images, 1, -1, keys)  # (B, 1, r*T, S)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(dim) + bias
    out = scores.softmax(dim=-1) @ v  # (B, H, r*T, d)
    return out.reshape(images, heads, -1, tokens, dim).transpose(1, 2).reshape(rows, heads, tokens, dim)


def _run_kernel(kernel, *args: torch.Tensor | None) -> torch.Tensor:
    """Call a `kernels/` wrapper, turning its plain errors into the package's: this is the one translation.

    The kernels raise ValueError for bad input and RuntimeError when the kernel cannot run here (CPU tensors
    without the interpreter, a broken Triton install); the message is kept and the original is chained.
    """
    try:
        return kernel(*args)
    except torch.OutOfMemoryError:
        raise  # a RuntimeError too, but a full device is not a missing backend
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    except RuntimeError as exc:
        raise BackendUnavailableError(
            str(exc), hint=f"move the tensors to a GPU, or use the PyTorch reference ({BACKEND_ENV}=torch)"
        ) from exc


def _use_kernels(x: torch.Tensor) -> bool:
    choice = os.environ.get(BACKEND_ENV, "").lower()
    if choice not in ("", "torch", "triton"):
        raise InputError(f"{BACKEND_ENV} must be 'torch' or 'triton', not {choice!r}")
    if choice == "torch" or (choice == "" and x.device.type != "cuda"):
        return False
    try:
        import xvlm_edge.kernels as kernels
    except ImportError:
        kernels = None
    available = kernels is not None and hasattr(kernels, "box_cross_attention")
    if choice == "triton" and not available:
        raise BackendUnavailableError(
            f"{BACKEND_ENV}=triton but the Triton box kernels are not available",
            hint="pip install triton, or unset the variable to use the PyTorch reference",
        )
    return available
