"""Launch configurations for the box kernels: a small search space on the GPU, one small tile under the interpreter.

`@triton.autotune` with several configs benchmarks each one on the device, which the CPU interpreter
(`TRITON_INTERPRET=1`) cannot do. Under the interpreter we hand it a single 16x16 tile, so the autotuner
skips benchmarking and the small shapes of the CPU tests still span several ragged tiles.
"""

from __future__ import annotations

import os

import triton

#: Triton reads its own switch when `@triton.jit` decorates a kernel; these are the values it accepts.
_TRUE = ("1", "true", "on")


def interpreting() -> bool:
    """True when Triton runs kernels in the NumPy interpreter (TRITON_INTERPRET=1) instead of compiling them."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def attention_configs() -> list[triton.Config]:
    """Tiles (BLOCK_T query rows x BLOCK_N keys) for the three box-attention kernels.

    Text rows are short (T = 30..40 in X-VLM) and N = 1 + 144 or 1 + 576 patches, so rows are tiled by
    32 or 64 and keys by 32 or 64; larger tiles only add masked work at these sizes. At d = 64 the
    backward kernels need about 250 registers per thread with 64x64 tiles and 4 warps (ptxas, sm_90,
    a little spilling), hence the 8-warp variants.
    """
    if interpreting():
        return [triton.Config({"BLOCK_T": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    return [
        triton.Config({"BLOCK_T": block_t, "BLOCK_N": block_n}, num_warps=num_warps, num_stages=num_stages)
        for block_t, block_n, num_warps, num_stages in (
            (32, 32, 4, 2),
            (32, 64, 4, 2),
            (64, 32, 4, 2),
            (64, 64, 4, 3),
            (32, 64, 8, 2),
            (64, 32, 8, 2),
            (64, 64, 8, 3),
        )
    ]
