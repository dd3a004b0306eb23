"""Packaging: version and stub of xvlm_edge._C, the wheel's contents, and the Python-free C++ core build."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from xvlm_edge import _C

REPO = Path(__file__).resolve().parents[1]


def test_version_matches_package() -> None:
    version = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    assert _C.__version__ == version == importlib.metadata.version("xvlm-edge")


def test_stub_names_every_public_function() -> None:
    tree = ast.parse((REPO / "xvlm_edge" / "_C.pyi").read_text())
    stubbed = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    if not _C.has_tensorrt():
        stubbed -= {"EngineBuilder", "EngineRunner"}  # bound only when CMake found TensorRT
    public = {name for name in dir(_C) if not name.startswith("_") and callable(getattr(_C, name))}
    assert stubbed == public
    assert all(getattr(_C, name).__doc__ for name in public)


def test_kernels_import_as_subpackage() -> None:
    """Works from the wheel (site-packages/xvlm_edge/kernels) and editable (redirected to <repo>/kernels)."""
    import xvlm_edge.kernels

    init = Path(xvlm_edge.kernels.__file__)
    assert init.name == "__init__.py" and init.parent.name == "kernels"


@pytest.mark.slow
def test_wheel_contents(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path],
        check=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("*.whl")
    assert re.search(r"-cp3\d+-cp3\d+-", wheel.name), wheel.name
    names = set(zipfile.ZipFile(wheel).namelist())
    assert any(re.fullmatch(r"xvlm_edge/_C\..+\.so", n) for n in names)
    assert "xvlm_edge/kernels/__init__.py" in names
    assets = [p.relative_to(REPO).as_posix() for p in (REPO / "xvlm_edge" / "assets").rglob("*") if p.is_file()]
    assert set(assets) <= names  # bert-base-uncased-vocab.txt and the rest, once they exist
    assert not any(n.startswith(("tests/", "csrc/", "kernels/", "training/")) for n in names)

    # Import from the installed wheel alone: -S skips .pth files, so the editable redirect stays out.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel], check=True
    )
    probe = (
        f"import sys; sys.path[:0] = [{str(target)!r}, {sysconfig.get_paths()['purelib']!r}]; "
        "import xvlm_edge.kernels, xvlm_edge._C; print(xvlm_edge.kernels.__file__, xvlm_edge._C.__version__)"
    )
    out = subprocess.run([sys.executable, "-S", "-c", probe], check=True, capture_output=True, text=True).stdout
    assert out.startswith(str(target / "xvlm_edge" / "kernels" / "__init__.py"))


CONSUMER = r"""
#include <cstdio>
#include <xvlm_edge/preprocess.hpp>

int main() {
  const unsigned char px[3] = {10, 20, 30};
  const xvlm_edge::Image out = xvlm_edge::resize_bicubic_u8({px, 1, 1, 3}, 4, 2);
  if (out.data.size() != 4 * 2 * 3 || out.data[5] != 30) return 1;
  try {
    xvlm_edge::resize_bicubic_u8({px, 1, 1, 4}, 4, 2);
  } catch (const xvlm_edge::ImageError& e) {
    std::puts(e.what());
    return 0;
  }
  return 2;
}
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_core_builds_with_plain_cmake(tmp_path: Path) -> None:
    """The firmware view: a C++ program links xvlm_edge_core through add_subdirectory, no Python involved."""
    (tmp_path / "main.cpp").write_text(CONSUMER)
    (tmp_path / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.21)\nproject(consumer CXX)\n"
        f'add_subdirectory("{REPO.as_posix()}" xvlm_edge)\n'
        "add_executable(consumer main.cpp)\ntarget_link_libraries(consumer PRIVATE xvlm_edge_core)\n"
    )
    build = tmp_path / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    options = ["-DXVLM_EDGE_PYTHON=OFF", "-DXVLM_EDGE_WITH_CUDA=OFF", "-DXVLM_EDGE_WITH_TENSORRT=OFF"]
    subprocess.run(["cmake", "-S", tmp_path, "-B", build, *generator, *options], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", build, "--parallel"], check=True, capture_output=True, timeout=300)
    cache = (build / "CMakeCache.txt").read_text()
    assert "Python_EXECUTABLE" not in cache and "pybind11_DIR" not in cache
    run = subprocess.run([build / "consumer"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "channels; expected 3" in run.stdout
