"""Box pooling: the masked mean of each box's patch embeddings, forward and backward (DESIGN.md section 2).

The operation
-------------
K boxes over B images. Box k lies on image `b = idx[k]` and covers the patches where its 0/1 mask
`m_k` (the official floor/ceil rule, `concepts.box_to_patch_mask`) is on; `n_k = sum_j m_kj >= 1`:

    out_k = (1/n_k) sum_j m_kj x_{b, j}                       (K, D)  the concept embedding
    dx_{b, j} = sum_{k: idx_k = b} (m_kj / n_k) dout_k         (B, N, D)

This is `xvlm_edge.concepts.box_pool`, the oracle of the tests. Like every module in `kernels/`, this one
imports nothing from `xvlm_edge` (it ships inside it): bad input raises `ValueError`, a kernel that cannot
run here raises `RuntimeError`, and `concepts.py`, the only caller, turns them into the package's errors.

Forward, one program per (box k, BLOCK_D columns)
------------------------------------------------
    acc = 0
    for each tile of BLOCK_N patches: acc += colsum(X[idx[k], tile, cols] where in box)   # fp32
    out[k, cols] = acc / n_k
Patches outside the box are masked out of the load itself, so a small box reads only its own rows.

Backward, one program per (image b, BLOCK_N patches, BLOCK_D columns)
---------------------------------------------------------------------
    acc = 0
    for k in boxes of image b, in a fixed order (stable argsort of idx -> CSR offsets):
        acc += (m_k[tile] / n_k)[:, None] * dout[k, cols][None, :]
    dx[b, tile, cols] = acc
Each output element is written by exactly one program, so there are no atomics, the result is
bitwise deterministic, and an image without boxes gets an exact zero gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._autotune import interpreting

#: Decided when the kernels below were decorated: interpreted kernels run on CPU tensors.
_INTERPRETED = interpreting()

__all__ = ["box_pool"]

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BLOCK_N = 32


@triton.jit
def _box_pool_fwd_kernel(
    # pointers
    Patches,  # (B, N, D) patch embeddings
    Idx, Mask, Count,  # (K,) int64 image of each box; (K, N) int8 masks; (K,) fp32 patches per box
    Out,  # (K, D)
    # sizes
    N, D,
    # strides
    stride_pb, stride_pn, stride_pd,
    stride_mk, stride_mn,
    stride_ok, stride_od,
    # meta-parameters
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Masked mean of one box's patches over BLOCK_D columns."""
    box = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = offs_d < D
    img = tl.load(Idx + box).to(tl.int64)
    base = Patches + img * stride_pb

    acc = tl.zeros([BLOCK_D], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        inside = tl.load(Mask + box * stride_mk + offs_n * stride_mn, mask=offs_n < N, other=0) != 0
        x = tl.load(
            base + offs_n[:, None] * stride_pn + offs_d[None, :] * stride_pd,
            mask=inside[:, None] & col_ok[None, :], other=0.0,
        )
        acc += tl.sum(x.to(tl.float32), axis=0)
    out = acc / tl.load(Count + box)
    tl.store(Out + box * stride_ok + offs_d * stride_od, out.to(Out.dtype.element_ty), mask=col_ok)


@triton.jit
def _box_pool_bwd_kernel(
    # pointers
    dOut,  # (K, D) gradient of the pooled embeddings
    BoxOrder, ImgStart,  # (K,) int64 boxes sorted by image (stable); (B + 1,) int64 CSR offsets into it
    Mask, Count,  # (K, N) int8 masks; (K,) fp32 patches per box
    dPatches,  # (B, N, D) output
    # sizes
    N, D,
    # strides
    stride_gk, stride_gd,
    stride_mk, stride_mn,
    stride_xb, stride_xn, stride_xd,
    # meta-parameters
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Gradient of one (image, BLOCK_N patches, BLOCK_D columns) tile, summed over the image's boxes in order."""
    img = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = offs_n < N
    col_ok = offs_d < D

    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    first = tl.load(ImgStart + img)
    last = tl.load(ImgStart + img + 1)
    for i in range(first, last):
        box = tl.load(BoxOrder + i).to(tl.int64)
        inside = tl.load(Mask + box * stride_mk + offs_n * stride_mn, mask=row_ok, other=0) != 0
        weight = tl.where(inside, 1.0 / tl.load(Count + box), 0.0)  # (BLOCK_N,) m_kj / n_k
        g = tl.load(dOut + box * stride_gk + offs_d * stride_gd, mask=col_ok, other=0.0).to(tl.float32)
        acc += weight[:, None] * g[None, :]
    ptrs = dPatches + img * stride_xb + offs_n[:, None] * stride_xn + offs_d[None, :] * stride_xd
    tl.store(ptrs, acc.to(dPatches.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def _block_d(dim: int) -> int:
    return min(128, triton.next_power_of_2(dim))


class _BoxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, patches, idx, mask, count):
        _, num_patches, dim = patches.shape
        num_boxes = idx.shape[0]
        out = torch.empty((num_boxes, dim), dtype=patches.dtype, device=patches.device)
        block_d = _block_d(dim)
        _box_pool_fwd_kernel[(num_boxes, triton.cdiv(dim, block_d))](
            patches, idx, mask, count, out,
            num_patches, dim,
            *patches.stride(), *mask.stride(), *out.stride(),
            BLOCK_N=_BLOCK_N, BLOCK_D=block_d,
        )
        ctx.save_for_backward(idx, mask, count)
        ctx.patches_shape = patches.shape
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        idx, mask, count = ctx.saved_tensors
        num_images, num_patches, dim = ctx.patches_shape
        order = torch.argsort(idx, stable=True)
        img_start = torch.searchsorted(idx[order], torch.arange(num_images + 1, device=idx.device))
        dpatches = torch.empty(ctx.patches_shape, dtype=dout.dtype, device=dout.device)
        block_d = _block_d(dim)
        grid = (num_images, triton.cdiv(num_patches, _BLOCK_N), triton.cdiv(dim, block_d))
        _box_pool_bwd_kernel[grid](
            dout, order, img_start, mask, count, dpatches,
            num_patches, dim,
            *dout.stride(), *mask.stride(), *dpatches.stride(),
            BLOCK_N=_BLOCK_N, BLOCK_D=block_d,
        )
        return dpatches, None, None, None


def box_pool(patches: torch.Tensor, idx_to_group_img: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of each box's patches: the kernel behind `concepts.box_pool`.

    patches: (B, N, D) fp32, fp16 or bf16, any strides; `idx_to_group_img`: (K,) integer image of each
    box; `patch_mask`: (K, N), nonzero on the box's patches (bool, integer or 0/1 float), at least one per
    box. Returns (K, D) in the input dtype, fp32 accumulation; differentiable in `patches`.

    The reference weights patches by the mask values; this kernel reads the mask as 0/1. Checking the
    index range and the non-empty boxes costs one device synchronisation per call.
    """
    if not all(isinstance(t, torch.Tensor) for t in (patches, idx_to_group_img, patch_mask)):
        raise ValueError("box_pool: patches, idx_to_group_img and patch_mask must be torch.Tensors")
    if patches.ndim != 3 or patches.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(
            f"box_pool: patches must be (B, N, D) fp32/fp16/bf16, got {tuple(patches.shape)} {patches.dtype}"
        )
    num_images, num_patches, dim = patches.shape
    idx, mask = idx_to_group_img, patch_mask
    if idx.ndim != 1 or idx.dtype.is_floating_point or idx.is_complex() or idx.dtype == torch.bool:
        raise ValueError(
            f"box_pool: idx_to_group_img must be a (K,) integer tensor, got {tuple(idx.shape)} {idx.dtype}"
        )
    num_boxes = idx.shape[0]
    if mask.shape != (num_boxes, num_patches) or mask.is_complex():
        raise ValueError(f"box_pool: patch_mask must be ({num_boxes}, {num_patches}) real, got {tuple(mask.shape)}")
    if min(num_images, num_patches, dim, num_boxes) == 0:
        raise ValueError(f"box_pool: empty input, patches {tuple(patches.shape)}, {num_boxes} boxes")
    if idx.device != patches.device or mask.device != patches.device:
        raise ValueError(f"box_pool: idx_to_group_img and patch_mask must be on {patches.device} like patches")
    if patches.device.type != "cuda" and not _INTERPRETED:
        raise RuntimeError(
            f"box_pool: the compiled Triton kernel needs CUDA tensors, got {patches.device} "
            "(TRITON_INTERPRET=1 runs it on CPU tensors)"
        )
    idx, visible, count = checked_boxes("box_pool", idx, mask, num_images)
    return _BoxPool.apply(patches, idx, visible.to(torch.int8), count)


def checked_boxes(op: str, idx: torch.Tensor, mask: torch.Tensor, num_images: int):
    """(int64 idx, bool visible mask, fp32 patch count per box), refusing out-of-range images and empty boxes.

    Both value checks share one device sync; an empty box has no mean, so no pooled token.
    """
    idx = idx.to(torch.int64).contiguous()
    visible = mask != 0
    count = visible.sum(-1, dtype=torch.float32)  # (K,) patches per box
    out_of_range = (idx < 0) | (idx >= num_images)
    if (out_of_range.any() | (count == 0).any()).item():
        if out_of_range.any():
            raise ValueError(f"{op}: idx_to_group_img values must lie in [0, {num_images})")
        raise ValueError(f"{op}: every box must cover at least one patch (an empty box has no mean)")
    return idx, visible, count
