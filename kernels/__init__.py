"""Triton kernels for xvlm_edge, shipped in the wheel as ``xvlm_edge.kernels`` (DESIGN.md §2, STYLE.md item 9).

This folder lives at the repository root and is mapped into the package by ``pyproject.toml``
(``tool.scikit-build.wheel.packages``); the package imports it as ``xvlm_edge.kernels``.

It owns the fused box kernels and nothing else, and it imports nothing from ``xvlm_edge``: that package
imports it, so the reverse would be a cycle (tests/test_kernels_isolated.py checks it). The wrappers
therefore raise plain ``ValueError`` (bad shapes, dtypes, devices, options) and ``RuntimeError`` (the
kernel cannot run here); ``xvlm_edge.concepts``, their only caller, translates them into the package's
error tree.

Importing this package never needs Triton: ``box_pool`` and ``box_cross_attention`` are exported only
when ``import triton`` works, and ``xvlm_edge.concepts`` checks for them before dispatching here
(it raises ``BackendUnavailableError`` when the kernels are forced but missing).

* ``box_pool(patches, idx_to_group_img, patch_mask)``: masked mean of each box's patches.
* ``box_cross_attention(q, k, v, idx_to_group_img, mask)``: text queries over
  `{pooled box token} + {patches in the box}`, the pooled token built inside the kernel;
  ``idx_to_group_img=None`` means the rows are grouped by image, as in ``concepts.box_cross_attention``.

Set ``TRITON_INTERPRET=1`` before this package is first imported to run the kernels on CPU tensors.
"""

from __future__ import annotations

try:
    import triton  # noqa: F401  (probe only; the kernel modules import it themselves)
except ImportError:  # CPU-only install without the [triton] extra: concepts.py uses its reference
    __all__: list[str] = []
else:
    from .box_cross_attention import box_cross_attention
    from .box_pool import box_pool

    __all__ = ["box_cross_attention", "box_pool"]
