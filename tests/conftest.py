"""Shared fixtures: where the official-parity reference set lives, and how to load its expected tensors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

#: The lamp SDK's session fixtures (one build, one micro export), shared by every module that uses them.
pytest_plugins = ["_sdk"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def reference_root() -> Path:
    """XVLM_REFERENCE_DIR, else ../shared/xvlm_reference next to the repository (the acceptance set swaps it)."""
    return Path(os.environ.get("XVLM_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "xvlm_reference"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Skips when the developer has no reference set; fails when XVLM_REFERENCE_DIR names a missing one.

    CI sets the variable explicitly, so parity can never silently skip there.
    """
    root = reference_root()
    if not (root / "expected").is_dir():
        if "XVLM_REFERENCE_DIR" in os.environ:
            pytest.fail(f"XVLM_REFERENCE_DIR={root} has no expected/ directory: the parity fixtures are missing")
        pytest.skip(f"official-parity reference set not found at {root} (set XVLM_REFERENCE_DIR)")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny models: on a busy 2-core box two contending threads cost 4x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load_expected(name: str) -> dict[str, torch.Tensor]:
    """expected/<name>.pt of the reference set; plain tensors and containers only (weights_only=True)."""
    return torch.load(reference_root() / "expected" / f"{name}.pt", map_location="cpu", weights_only=True)
