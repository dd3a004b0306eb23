"""Box-masked cross-attention with the pooled concept token built inside the kernel (DESIGN.md section 2).

The operation
-------------
K query rows (one per text or phrase), each bound to image `b = idx[k]` and to a box given as a 0/1 mask
`m_k` over the image's N patches. Per head, with scale `c = 1/sqrt(d)` and `n_k = sum_j m_kj`:

    kp = (1/n_k) sum_j m_kj k_j              pooled key    (projections are affine: k(mean x) = mean k(x))
    vp = (1/n_k) sum_j m_kj v_j              pooled value
    s_tj = c q_t.k_j   for m_kj = 1          patch scores (other patches are excluded)
    s_tp = c q_t.kp = (1/n_k) sum_j m_kj s_tj   the pooled score is the mean of the in-box patch scores
    o_t = softmax({s_tp} U {s_tj}) . ({vp} U {v_j})

This is `xvlm_edge.concepts.box_cross_attention(..., pooled=True)`, the oracle of every test. The
reference adds -1e9 to masked scores, which underflows exp() to exactly 0, so excluding them is the
same function. The full image (retrieval rerank, grounding's fusion layers) is the all-ones mask.
Padded text rows are computed like any other row, as in the reference and the official BERT
cross-attention, which mask keys, never queries.

Like every module in `kernels/`, this one imports nothing from `xvlm_edge` (it ships inside it): bad
input raises `ValueError`, a kernel that cannot run here raises `RuntimeError`, and `concepts.py`, the
only caller, turns them into the package's errors.

Why this kernel exists
----------------------
The official code gathers every image once per text and projects K/V for every copy. Here K/V are
read once per image through `idx`; the pooled token never exists in memory: `s_tp` is the masked mean
of the score tile that online softmax computes anyway, and `vp` is a masked column sum of the V tiles
that are loaded anyway. No per-box key or value (the official K x (1 + N) x D copies) is ever written to
HBM: the forward writes the output and one fp32 log-sum-exp per query row, nothing else.

Forward, one program per (BLOCK_T rows of box k, head h); scores kept in log2 units (`exp2`)
------------------------------------------------------------------------------------------------
    q = Q[k, h, rows]                                     # (BLOCK_T, d), stays in registers
    m = -1e30; l = 0; acc = 0; s_pool = 0; v_sum = 0      # finite m: a tile with no visible key gives alpha = 1
    for each tile of BLOCK_N patches of image idx[k]:
        s = q @ K_tile^T * c * log2(e)                    # (BLOCK_T, BLOCK_N), fp32 accumulation
        s_pool += rowsum(s where in box); v_sum += colsum(V_tile where in box)
        s = s where in box else -inf
        m_new = max(m, rowmax(s)); alpha = exp2(m - m_new); p = exp2(s - m_new)
        l = l * alpha + rowsum(p); acc = acc * alpha + p @ V_tile; m = m_new
    s_pool /= n_k; vp = v_sum / n_k                       # the pooled token, added as one more key
    m_new = max(m, s_pool); alpha = exp2(m - m_new); beta = exp2(s_pool - m_new)
    O = (acc * alpha + beta * vp) / (l * alpha + beta); LSE = m_new + log2(l * alpha + beta)

Backward (FlashAttention-2 recomputation, plus the pooled token)
---------------------------------------------------------------
With P the softmax, D_t = dO_t . O_t and dS = P * (dP - D):

    dq_t = c (sum_j dS_tj k_j + dS_tp kp)
    dk_j = c sum_{k: idx_k = b} (sum_t dS_tj q_t + m_kj / n_k sum_t dS_tp q_t)
    dv_j =   sum_{k: idx_k = b} (sum_t P_tj dO_t + m_kj / n_k sum_t P_tp dO_t)

`dP_tp = dO_t . vp` is again the masked mean of the `dP_tj = dO_t . v_j` tile, and `kp` is a masked
column sum of the K tiles, so the dq kernel (one program per row tile, like the forward) gets the
pooled terms in the same single pass over the patches. It also stores D, P_tp and dS_tp per row
(K, H, T) for the dk/dv kernel. That kernel runs one program per (key tile, image, head) and walks
the boxes of its image in a fixed order (a CSR built by a stable argsort of `idx`), so gradients are
summed without atomics and are bitwise deterministic. When many boxes share few images (retrieval
rerank: 128 texts, 1 image) the box list is split over `splits` programs whose fp32 partial sums are
added in a fixed order afterwards.

Numerics: fp32, fp16 or bf16 in; every dot product, softmax statistic and pooled sum accumulates in
fp32, and P / dS are rounded to the input dtype only as operands of the tensor-core dots (as in
FlashAttention). fp32 inputs use IEEE fp32 dots, not TF32, so they match the reference to 1e-5.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._autotune import attention_configs, interpreting
from .box_pool import checked_boxes

#: Decided when the kernels below were decorated: interpreted kernels run on CPU tensors.
_INTERPRETED = interpreting()

__all__ = ["box_cross_attention"]

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_HEAD_DIMS = (16, 32, 64, 128)
#: At most this many programs share one image's box list in the dk/dv kernel (see `_splits`).
_MAX_SPLITS = 16


@triton.autotune(configs=attention_configs(), key=["T", "N", "HEAD_DIM"])
@triton.jit
def _box_attn_fwd_kernel(
    # pointers
    Q, K, V,  # (K, H, T, d) queries; (B, H, N, d) per-image keys and values
    Idx,  # (K,) int64 image of each box
    Mask, Count,  # (K, N) int8 box masks; (K,) fp32 patches per box (>= 1)
    Out, Lse,  # (K, H, T, d) output; (K, H, T) fp32 row log2-sum-exp2
    # sizes
    H, T, N,
    # strides
    stride_qk, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mk, stride_mn,
    stride_ok, stride_oh, stride_ot, stride_od,
    # scalars
    sm_scale,
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One (BLOCK_T rows, box, head) tile of the forward; see the module docstring for the algorithm."""
    pid_t = tl.program_id(0)
    pid_kh = tl.program_id(1)
    box = (pid_kh // H).to(tl.int64)
    head = (pid_kh % H).to(tl.int64)
    img = tl.load(Idx + box).to(tl.int64)

    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_nb = tl.arange(0, BLOCK_N)
    row_ok = offs_t < T

    q_base = Q + box * stride_qk + head * stride_qh
    k_base = K + img * stride_kb + head * stride_kh
    v_base = V + img * stride_vb + head * stride_vh
    mask_base = Mask + box * stride_mk

    q = tl.load(q_base + offs_t[:, None] * stride_qt + offs_d[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)
    qk_scale = sm_scale * 1.4426950408889634  # scores in log2 units: exp(x) = exp2(x * log2(e))

    m_i = tl.full([BLOCK_T], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_T], tl.float32)
    acc = tl.zeros([BLOCK_T, HEAD_DIM], tl.float32)
    s_pool = tl.zeros([BLOCK_T], tl.float32)  # sum of in-box scores -> pooled score
    v_sum = tl.zeros([HEAD_DIM], tl.float32)  # sum of in-box values -> pooled value

    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + offs_nb
        col_ok = offs_n < N
        inside = tl.load(mask_base + offs_n * stride_mn, mask=col_ok, other=0) != 0
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=col_ok[:, None], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=col_ok[:, None], other=0.0)

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_T, BLOCK_N)
        s_pool += tl.sum(tl.where(inside[None, :], s, 0.0), axis=1)
        v_sum += tl.sum(tl.where(inside[:, None], v.to(tl.float32), 0.0), axis=0)

        s = tl.where(inside[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    # The pooled token joins the softmax as one more key, after all patch tiles.
    inv_count = 1.0 / tl.load(Count + box)
    s_pool = s_pool * inv_count
    m_new = tl.maximum(m_i, s_pool)
    alpha = tl.exp2(m_i - m_new)
    beta = tl.exp2(s_pool - m_new)
    l_i = l_i * alpha + beta
    acc = acc * alpha[:, None] + beta[:, None] * (v_sum * inv_count)[None, :]
    out = acc / l_i[:, None]
    lse = m_new + tl.log2(l_i)

    o_ptrs = Out + box * stride_ok + head * stride_oh + offs_t[:, None] * stride_ot + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    tl.store(Lse + (box * H + head) * T + offs_t, lse, mask=row_ok)


@triton.autotune(configs=attention_configs(), key=["T", "N", "HEAD_DIM"])
@triton.jit
def _box_attn_bwd_dq_kernel(
    # pointers
    Q, K, V, Out, dOut,  # (K, H, T, d) / (B, H, N, d) / (K, H, T, d) / (K, H, T, d)
    Idx, Mask, Count,  # as in the forward
    Lse,  # (K, H, T) fp32 from the forward
    dQ,  # (K, H, T, d) output
    Delta, PPool, dSPool,  # (K, H, T) fp32 outputs for the dk/dv kernel: dO.O, P and dS of the pooled token
    # sizes
    H, T, N,
    # strides
    stride_qk, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ok, stride_oh, stride_ot, stride_od,
    stride_gk, stride_gh, stride_gt, stride_gd,  # dOut
    stride_mk, stride_mn,
    stride_dqk, stride_dqh, stride_dqt, stride_dqd,
    # scalars
    sm_scale,
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dq for one (BLOCK_T rows, box, head) tile, and the per-row pooled-token terms for the dk/dv kernel."""
    pid_t = tl.program_id(0)
    pid_kh = tl.program_id(1)
    box = (pid_kh // H).to(tl.int64)
    head = (pid_kh % H).to(tl.int64)
    img = tl.load(Idx + box).to(tl.int64)

    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_nb = tl.arange(0, BLOCK_N)
    row_ok = offs_t < T

    q = tl.load(
        Q + box * stride_qk + head * stride_qh + offs_t[:, None] * stride_qt + offs_d[None, :] * stride_qd,
        mask=row_ok[:, None], other=0.0,
    )
    o = tl.load(
        Out + box * stride_ok + head * stride_oh + offs_t[:, None] * stride_ot + offs_d[None, :] * stride_od,
        mask=row_ok[:, None], other=0.0,
    )
    do = tl.load(
        dOut + box * stride_gk + head * stride_gh + offs_t[:, None] * stride_gt + offs_d[None, :] * stride_gd,
        mask=row_ok[:, None], other=0.0,
    )
    row_stat = (box * H + head) * T + offs_t
    lse = tl.load(Lse + row_stat, mask=row_ok, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)  # D_t = dO_t . O_t = sum_j P_tj dP_tj

    k_base = K + img * stride_kb + head * stride_kh
    v_base = V + img * stride_vb + head * stride_vh
    mask_base = Mask + box * stride_mk
    qk_scale = sm_scale * 1.4426950408889634

    dq = tl.zeros([BLOCK_T, HEAD_DIM], tl.float32)
    s_pool = tl.zeros([BLOCK_T], tl.float32)  # sum of in-box scores (log2 units) -> pooled score
    dp_pool = tl.zeros([BLOCK_T], tl.float32)  # sum of in-box dP -> dP of the pooled token
    k_sum = tl.zeros([HEAD_DIM], tl.float32)  # sum of in-box keys -> pooled key

    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + offs_nb
        col_ok = offs_n < N
        inside = tl.load(mask_base + offs_n * stride_mn, mask=col_ok, other=0) != 0
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=col_ok[:, None], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=col_ok[:, None], other=0.0)

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.where(inside[None, :], tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)

        s_pool += tl.sum(tl.where(inside[None, :], s, 0.0), axis=1)
        dp_pool += tl.sum(tl.where(inside[None, :], dp, 0.0), axis=1)
        k_sum += tl.sum(tl.where(inside[:, None], k.to(tl.float32), 0.0), axis=0)

    inv_count = 1.0 / tl.load(Count + box)
    p_pool = tl.exp2(s_pool * inv_count - lse)
    ds_pool = p_pool * (dp_pool * inv_count - delta)
    dq += ds_pool[:, None] * (k_sum * inv_count)[None, :]
    dq = dq * sm_scale

    dq_ptrs = dQ + box * stride_dqk + head * stride_dqh + offs_t[:, None] * stride_dqt + offs_d[None, :] * stride_dqd
    tl.store(dq_ptrs, dq.to(dQ.dtype.element_ty), mask=row_ok[:, None])
    tl.store(Delta + row_stat, delta, mask=row_ok)
    tl.store(PPool + row_stat, p_pool, mask=row_ok)
    tl.store(dSPool + row_stat, ds_pool, mask=row_ok)


@triton.autotune(configs=attention_configs(), key=["T", "N", "HEAD_DIM"])
@triton.jit
def _box_attn_bwd_dkdv_kernel(
    # pointers
    Q, K, V, dOut,  # (K, H, T, d) / (B, H, N, d) / (B, H, N, d) / (K, H, T, d)
    Mask, Count,  # as in the forward
    Lse, Delta, PPool, dSPool,  # (K, H, T) fp32 row statistics from the forward and the dq kernel
    BoxOrder, ImgStart,  # (K,) int64 boxes sorted by image (stable); (B + 1,) int64 CSR offsets into it
    dK, dV,  # (splits, B, H, N, d) outputs: fp32 partial sums, or the final gradient when splits == 1
    # sizes
    H, T, N, splits,
    # strides
    stride_qk, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gk, stride_gh, stride_gt, stride_gd,  # dOut
    stride_mk, stride_mn,
    stride_dks, stride_dkb, stride_dkh, stride_dkn, stride_dkd,  # dK and dV share one layout
    # scalars
    sm_scale,
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dk, dv for one (BLOCK_N keys, image, head) tile, summed over every `splits`-th box of the image."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    split = tl.program_id(2)
    img = (pid_bh // H).to(tl.int64)
    head = (pid_bh % H).to(tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_tb = tl.arange(0, BLOCK_T)
    col_ok = offs_n < N

    k = tl.load(
        K + img * stride_kb + head * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
        mask=col_ok[:, None], other=0.0,
    )
    v = tl.load(
        V + img * stride_vb + head * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
        mask=col_ok[:, None], other=0.0,
    )
    qk_scale = sm_scale * 1.4426950408889634

    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)

    first = tl.load(ImgStart + img)
    last = tl.load(ImgStart + img + 1)
    for i in range(first + split, last, splits):
        box = tl.load(BoxOrder + i).to(tl.int64)
        inside = tl.load(Mask + box * stride_mk + offs_n * stride_mn, mask=col_ok, other=0) != 0
        inv_count = 1.0 / tl.load(Count + box)
        q_base = Q + box * stride_qk + head * stride_qh
        do_base = dOut + box * stride_gk + head * stride_gh
        stat_base = (box * H + head) * T

        dk_pool = tl.zeros([HEAD_DIM], tl.float32)  # sum_t dS_tp q_t: gradient of the pooled key
        dv_pool = tl.zeros([HEAD_DIM], tl.float32)  # sum_t P_tp dO_t: gradient of the pooled value
        for start_t in range(0, T, BLOCK_T):
            offs_t = start_t + offs_tb
            row_ok = offs_t < T
            q_ptrs = q_base + offs_t[:, None] * stride_qt + offs_d[None, :] * stride_qd
            do_ptrs = do_base + offs_t[:, None] * stride_gt + offs_d[None, :] * stride_gd
            q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
            do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0)
            lse = tl.load(Lse + stat_base + offs_t, mask=row_ok, other=0.0)
            delta = tl.load(Delta + stat_base + offs_t, mask=row_ok, other=0.0)
            p_pool = tl.load(PPool + stat_base + offs_t, mask=row_ok, other=0.0)
            ds_pool = tl.load(dSPool + stat_base + offs_t, mask=row_ok, other=0.0)

            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_T, BLOCK_N)
            p = tl.where(inside[None, :] & row_ok[:, None], tl.exp2(s - lse[:, None]), 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)

            dk_pool += tl.sum(ds_pool[:, None] * q.to(tl.float32), axis=0)
            dv_pool += tl.sum(p_pool[:, None] * do.to(tl.float32), axis=0)

        # The pooled key/value is the mean of the in-box keys/values: each in-box patch gets 1/n_k of it.
        weight = tl.where(inside, inv_count, 0.0)
        dk += weight[:, None] * dk_pool[None, :]
        dv += weight[:, None] * dv_pool[None, :]

    dk = dk * sm_scale
    out_offs = (split.to(tl.int64) * stride_dks + img * stride_dkb + head * stride_dkh
                + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd)
    tl.store(dK + out_offs, dk.to(dK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(dV + out_offs, dv.to(dV.dtype.element_ty), mask=col_ok[:, None])


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 must not silently become TF32 (10-bit mantissa): the fp32 path is the 1e-5 reference.
    return "ieee" if dtype == torch.float32 else "tf32"


def _splits(num_boxes: int, num_images: int) -> int:
    """How many programs share one image's boxes in the dk/dv kernel: about 4 boxes each, at most 16.

    Region pretraining (128 boxes over 48 images) keeps 1 split; retrieval rerank (128 texts, 1 image)
    gets 16, so 16x more programs fill the GPU. Chosen from sizes only: no device sync.
    """
    return max(1, min(_MAX_SPLITS, num_boxes // (4 * num_images)))


def _grid_rows(meta: dict, num_rows: int, num_boxes: int, num_heads: int) -> tuple[int, int]:
    return (triton.cdiv(num_rows, meta["BLOCK_T"]), num_boxes * num_heads)


def _grid_keys(meta: dict, num_patches: int, num_images: int, num_heads: int, splits: int) -> tuple[int, int, int]:
    return (triton.cdiv(num_patches, meta["BLOCK_N"]), num_images * num_heads, splits)


class _BoxCrossAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, idx, mask, count):
        num_boxes, num_heads, num_rows, head_dim = q.shape
        num_patches = k.shape[2]
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        lse = torch.empty((num_boxes, num_heads, num_rows), dtype=torch.float32, device=q.device)
        sm_scale = 1.0 / math.sqrt(head_dim)
        _box_attn_fwd_kernel[lambda meta: _grid_rows(meta, num_rows, num_boxes, num_heads)](
            q, k, v, idx, mask, count, out, lse,
            num_heads, num_rows, num_patches,
            *q.stride(), *k.stride(), *v.stride(), *mask.stride(), *out.stride(),
            sm_scale,
            HEAD_DIM=head_dim, DOT_PRECISION=_dot_precision(q.dtype),
        )
        ctx.save_for_backward(q, k, v, out, lse, idx, mask, count)
        ctx.sm_scale = sm_scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, out, lse, idx, mask, count = ctx.saved_tensors
        num_boxes, num_heads, num_rows, head_dim = q.shape
        num_images, _, num_patches, _ = k.shape
        precision = _dot_precision(q.dtype)

        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        stats = torch.empty((3, num_boxes, num_heads, num_rows), dtype=torch.float32, device=q.device)
        delta, p_pool, ds_pool = stats.unbind(0)
        _box_attn_bwd_dq_kernel[lambda meta: _grid_rows(meta, num_rows, num_boxes, num_heads)](
            q, k, v, out, dout, idx, mask, count, lse, dq, delta, p_pool, ds_pool,
            num_heads, num_rows, num_patches,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *dout.stride(), *mask.stride(), *dq.stride(),
            ctx.sm_scale,
            HEAD_DIM=head_dim, DOT_PRECISION=precision,
        )

        # Boxes grouped by image in a fixed order: the dk/dv sums never depend on scheduling.
        order = torch.argsort(idx, stable=True)
        img_start = torch.searchsorted(idx[order], torch.arange(num_images + 1, device=idx.device))
        splits = _splits(num_boxes, num_images)
        grad_dtype = k.dtype if splits == 1 else torch.float32
        dkv = torch.empty((2, splits, *k.shape), dtype=grad_dtype, device=k.device)
        dk, dv = dkv.unbind(0)
        _box_attn_bwd_dkdv_kernel[lambda meta: _grid_keys(meta, num_patches, num_images, num_heads, splits)](
            q, k, v, dout, mask, count, lse, delta, p_pool, ds_pool, order, img_start, dk, dv,
            num_heads, num_rows, num_patches, splits,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *mask.stride(), *dk.stride(),
            ctx.sm_scale,
            HEAD_DIM=head_dim, DOT_PRECISION=precision,
        )
        if splits == 1:
            dk, dv = dk[0], dv[0]
        else:  # fp32 partials added in a fixed order, then rounded once
            dk, dv = dk.sum(0).to(k.dtype), dv.sum(0).to(v.dtype)
        return dq, dk, dv, None, None, None


def box_cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx_to_group_img: torch.Tensor | None,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Fused box cross-attention with the pooled token: the kernel behind `concepts.box_cross_attention(pooled=True)`.

    q: (K, H, T, d) text queries; k, v: (B, H, N, d) keys and values projected once per image;
    `idx_to_group_img`: (K,) integer image of each query row, or None when the rows are grouped by image
    (image b owns rows b*r .. b*r + r - 1 with r = K / B, so K must be a multiple of B; r = 1: row k reads
    image k), the same meaning as in the reference; mask: (K, N) box masks, nonzero where a patch is
    visible (bool, integer or 0/1 float; at least one patch per box). Any strides; d a power of two in
    [16, 128]; fp32, fp16 or bf16 (all the same). Returns (K, H, T, d) in the input dtype; differentiable
    in q, k and v.

    Raises ValueError for bad input and RuntimeError when the compiled kernel cannot run on these tensors.
    The reference weights patches by the mask values; this kernel reads the mask as 0/1. Checking the
    index range and the non-empty boxes costs one device synchronisation per call.
    """
    idx, mask_i8, count = _validate(q, k, v, idx_to_group_img, mask)
    return _BoxCrossAttention.apply(q, k, v, idx, mask_i8, count)


def _validate(q, k, v, idx, mask):
    """Check every input once and return (idx int64, mask int8, count fp32)."""
    for name, t in (("q", q), ("k", k), ("v", v), ("mask", mask)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"box_cross_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"box_cross_attention: q must be (K, H, T, d) and k, v (B, H, N, d); got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    num_boxes, num_heads, num_rows, head_dim = q.shape
    num_images, _, num_patches, _ = k.shape
    if k.shape != v.shape or k.shape[1] != num_heads or k.shape[3] != head_dim:
        raise ValueError(
            f"box_cross_attention: k and v must both be (B, {num_heads}, N, {head_dim}) to match q "
            f"{tuple(q.shape)}; got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if min(num_boxes, num_heads, num_rows, num_images, num_patches) == 0:
        raise ValueError(f"box_cross_attention: empty input, q {tuple(q.shape)}, k {tuple(k.shape)}")
    if head_dim not in _HEAD_DIMS:
        raise ValueError(f"box_cross_attention: head dim must be one of {_HEAD_DIMS}, got {head_dim}")
    if q.dtype not in _SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"box_cross_attention: q, k, v must share one dtype among fp32, fp16, bf16; got {q.dtype}, {k.dtype}, "
            f"{v.dtype}"
        )
    device = q.device
    for name, t in {"k": k, "v": v, "mask": mask, "idx_to_group_img": idx}.items():
        if t is not None and (not isinstance(t, torch.Tensor) or t.device != device):
            raise ValueError(f"box_cross_attention: {name} must be a tensor on {device} like q")
    if device.type != "cuda" and not _INTERPRETED:
        raise RuntimeError(
            f"box_cross_attention: the compiled Triton kernel needs CUDA tensors, got {device} "
            "(TRITON_INTERPRET=1 runs it on CPU tensors)"
        )
    if mask.shape != (num_boxes, num_patches) or mask.is_complex():
        raise ValueError(
            f"box_cross_attention: mask must be ({num_boxes}, {num_patches}) real, got {tuple(mask.shape)}"
        )
    if idx is None:
        idx = _grouped_index(num_boxes, num_images, device)
    elif idx.shape != (num_boxes,) or idx.dtype.is_floating_point or idx.is_complex() or idx.dtype == torch.bool:
        raise ValueError(
            f"box_cross_attention: idx_to_group_img must be a ({num_boxes},) integer tensor, got "
            f"{tuple(idx.shape)} {idx.dtype}"
        )
    idx, visible, count = checked_boxes("box_cross_attention", idx, mask, num_images)
    return idx, visible.to(torch.int8), count


def _grouped_index(num_rows: int, num_images: int, device: torch.device) -> torch.Tensor:
    """What `idx_to_group_img=None` means: rows grouped by image, image b owning rows b*r .. b*r + r - 1.

    A decoder's beams and VQA's candidate answers come in this layout. The reference in `concepts` applies
    the same rule (it cannot import this module without Triton); tests/test_kernels.py checks they agree.
    """
    if num_rows % num_images:
        raise ValueError(
            f"box_cross_attention: idx_to_group_img=None groups the query rows by image, but {num_rows} rows "
            f"cannot be split evenly over {num_images} images (give an index instead)"
        )
    return torch.arange(num_images, device=device).repeat_interleave(num_rows // num_images)  # (K,)
