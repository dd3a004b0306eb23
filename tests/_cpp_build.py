"""Building the plain C++ targets of the repository (no Python binding) for tests that drive C++ programs."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import REPO_ROOT as REPO

# No binding, no CUDA, no TensorRT: what the lamp firmware builds.
PLAIN_OPTIONS = ("-DXVLM_EDGE_PYTHON=OFF", "-DXVLM_EDGE_WITH_CUDA=OFF", "-DXVLM_EDGE_WITH_TENSORRT=OFF")

needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")


def build_cpp(
    build: Path,
    targets: Sequence[str],
    options: Sequence[str] = (),
    *,
    compiler: tuple[str, str] | None = None,
    timeout: float = 600,
) -> Path:
    """Configures the repository into `build` with PLAIN_OPTIONS + `options` and builds `targets`; returns
    `build`. `compiler` is a (C, C++) pair such as ("clang", "clang++"). A target the configuration did not
    create (its dependencies were not found) skips the test, naming the configure log's reason."""
    env = {**os.environ, "CC": compiler[0], "CXX": compiler[1]} if compiler else None
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = subprocess.run(
        ["cmake", "-S", REPO, "-B", build, *generator, *PLAIN_OPTIONS, *options],
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip
    assert configure.returncode == 0, configure.stdout + configure.stderr
    built = subprocess.run(["cmake", "--build", build, "--parallel", "--target", *targets], capture_output=True, text=True, timeout=timeout)
    if built.returncode != 0 and ("unknown target" in built.stdout or "No rule to make target" in built.stdout):
        reasons = [line for line in configure.stdout.splitlines() if "not built" in line]
        pytest.skip(f"{', '.join(targets)} not configured here: {' '.join(reasons) or 'see the CMake log'}")
    assert built.returncode == 0, built.stdout + built.stderr
    return build
