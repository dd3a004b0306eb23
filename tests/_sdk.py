"""The lamp SDK's shared test pieces: its CMake build, the micro and embedded models with their ExecuTorch
exports, and `xvlm-lamp` as a function. Registered in conftest.py, so every module that uses a session fixture
here (test_sdk, test_sdk_answer, test_sdk_aarch64) shares one build and one export per session."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _cpp_build import REPO, build_cpp

import xvlm_edge
from xvlm_edge.export import export_model

INSTALL_REASON = "the SDK builds against the executorch wheel: pip install 'xvlm-edge[sdk]'"

EXAMPLES = sorted((REPO / "xvlm_edge" / "assets" / "examples").glob("*.png"))
STATEMENTS = ["there are three stars", "a red circle above a blue square"]
PHRASES = ["the red circle", "a blue square", "two shapes on a shaded background"]
PROBABILITY_ATOL = 1e-5
BOX_ATOL = 1e-4
SDK_TARGETS = ("xvlm_edge_sdk", "xvlm-lamp", "xvlm_edge_test_c_api", "xvlm_edge_test_sdk_threads")
#: ExecuTorch's imported CMake targets write $ORIGIN run paths correctly from 3.28 on (its config refuses older).
CMAKE_MIN = (3, 28)


def cmake_version() -> tuple[int, ...]:
    cmake = shutil.which("cmake")
    if cmake is None:
        return ()
    found = re.search(r"(\d+)\.(\d+)", subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout)
    return tuple(int(x) for x in found.groups()) if found else ()


def sdk_options(*extra: str) -> list[str]:
    executorch = pytest.importorskip("executorch", reason=INSTALL_REASON)
    prefix = next(iter(executorch.__path__))
    return ["-DXVLM_EDGE_SDK=ON", "-DXVLM_EDGE_BUILD_TESTS=ON", f"-DCMAKE_PREFIX_PATH={prefix}", *extra]


@pytest.fixture(scope="session")
def sdk_build() -> Path:
    if cmake_version() < CMAKE_MIN:
        pytest.skip(f"the SDK needs CMake >= {'.'.join(map(str, CMAKE_MIN))} for ExecuTorch's targets (found {cmake_version() or 'none'}): pip install cmake")
    return build_cpp(REPO / "build" / "sdk-tests", SDK_TARGETS, sdk_options())


def export_for(model_dir: Path) -> Path:
    return model_dir / "export" / "executorch-fp32"


@pytest.fixture(scope="session")
def micro_model(tmp_path_factory) -> Path:
    from test_export_executorch import micro_checkpoint

    directory = micro_checkpoint(tmp_path_factory.mktemp("sdk") / "model", ("itc", "itm", "bbox", "caption"))
    export_model(directory, "fp32", "executorch", threads=1)
    return directory


@pytest.fixture(scope="session")
def embedded_model(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("sdk-embedded") / "model"
    shutil.copytree(Path(xvlm_edge.__file__).parent / "assets" / "default", directory)
    export_model(directory, "fp32", "executorch", threads=2)
    return directory


def lamp(build: Path, *args: str, expect: int = 0) -> dict:
    done = subprocess.run([build / "xvlm-lamp", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert done.returncode == expect, done.stderr
    return json.loads(done.stdout) if expect == 0 else {"stderr": done.stderr}
