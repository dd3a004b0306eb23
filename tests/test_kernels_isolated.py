"""kernels/ stands alone: it imports nothing from xvlm_edge, which imports it (no folder-level cycle).

xvlm_edge.concepts is the boundary that turns the kernels' plain ValueError / RuntimeError into the
package's errors; if a kernel imported xvlm_edge.errors again, the two folders would depend on each other.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KERNELS = REPO / "kernels"

#: Loads the repository's kernels/ as the top-level package `kernels` and imports every module in it.
_IMPORT_ALONE = """
import importlib, pkgutil, sys
from pathlib import Path

repo = Path(sys.argv[1])
sys.path.insert(0, str(repo))
import kernels

assert Path(kernels.__file__).resolve() == repo / "kernels" / "__init__.py", kernels.__file__
assert hasattr(kernels, "box_cross_attention") and hasattr(kernels, "box_pool"), kernels.__all__
names = [f"kernels.{info.name}" for info in pkgutil.iter_modules(kernels.__path__)]
for name in names:
    importlib.import_module(name)
leaked = sorted(name for name in sys.modules if name == "xvlm_edge" or name.startswith("xvlm_edge."))
assert not leaked, f"kernels/ imported {leaked}"
print(" ".join(sorted(names)))
"""


def _kernel_files() -> list[Path]:
    return sorted(KERNELS.glob("*.py"))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="the kernel modules import triton")
def test_kernels_import_nothing_from_xvlm_edge(tmp_path: Path) -> None:
    """A fresh interpreter, so that this process's xvlm_edge modules cannot hide or cause a leak."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALONE, str(REPO)],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    imported = set(result.stdout.split())
    expected = {f"kernels.{path.stem}" for path in _kernel_files() if path.stem != "__init__"}
    assert imported == expected  # every module was imported, so none can dodge the check


@pytest.mark.parametrize("path", _kernel_files(), ids=lambda path: path.name)
def test_kernel_sources_never_name_xvlm_edge_in_an_import(path: Path) -> None:
    """Also catches imports inside functions, which importing the modules does not execute."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level <= 1, f"{path.name}:{node.lineno}: relative import leaves kernels/"
            modules = [node.module or ""]
        else:
            continue
        for module in modules:
            assert module.split(".")[0] != "xvlm_edge", f"{path.name}:{node.lineno}: imports {module}"
