"""Triton kernels for xvlm_edge, shipped in the wheel as ``xvlm_edge.kernels`` (DESIGN.md section 2)."""
