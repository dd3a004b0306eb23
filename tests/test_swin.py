"""Swin's shifted-window token order (one gather each way) against the definition: roll, then partition."""

from __future__ import annotations

import pytest
import torch

from xvlm_edge.models.swin import window_order, window_partition


@pytest.mark.parametrize(("resolution", "window", "shift"), [(8, 4, 0), (8, 4, 2), (12, 4, 2), (12, 6, 3)])
def test_window_order_is_roll_then_partition(resolution: int, window: int, shift: int) -> None:
    x = torch.randn(2, resolution, resolution, 5)
    want = window_partition(torch.roll(x, (-shift, -shift), dims=(1, 2)), window)  # (B * nW, w*w, C)
    order = window_order(resolution, window, shift)
    got = x.reshape(2, resolution * resolution, 5).index_select(1, order).reshape(-1, window * window, 5)
    assert torch.equal(got, want)
    back = got.reshape(2, -1, 5).index_select(1, torch.argsort(order))  # the inverse order restores the grid
    assert torch.equal(back, x.reshape(2, -1, 5))
