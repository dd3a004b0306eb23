"""The lamp SDK cross-built for aarch64 and run under qemu, against x86 on the same export (issue 14, item 4).

The build is the firmware team's (docs/sdk-aarch64.md): csrc/tools/fetch_executorch_runtime.py unpacks the
aarch64 executorch wheel's C++ runtime into build/executorch-aarch64, and cmake/toolchains/aarch64-linux-gnu.cmake
cross-compiles libxvlm_edge and xvlm-lamp into build/sdk-aarch64 (both kept between runs). Programs run through
the toolchain's CMAKE_CROSSCOMPILING_EMULATOR (`qemu-aarch64 -cpu cortex-a76`, as ctest runs them); an export is
the same files on either CPU.

By default, a smoke: the cross-build, then `xvlm-lamp check` and a greedy caption under qemu on a micro random
model, equal to the Python ExecuTorch backend on x86 (the same programs on x86's XNNPACK kernels; tests/test_sdk.py
holds the x86 xvlm-lamp equal to it). Under -m slow, the acceptance: the embedded model's fp32 and int8 exports,
check, ground and caption (greedy and 3 beams) on every example, against the x86 xvlm-lamp. fp32: probabilities
within 1e-5 and boxes within 1e-4 px (the SDK's bounds against torch: NEON and AVX kernels sum in other orders;
measured 1.2e-7 and 3.8e-5), caption ids equal. int8: verdicts and caption ids equal, probabilities and boxes
within INT8_PROBABILITY_ATOL and INT8_BOX_ATOL (measured 5.5e-4 and 0.29 px): dynamic INT8 quantises each
activation on the fly, so a value on a rounding edge lands one step apart on the two CPUs' kernels.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _cpp_build import REPO, build_cpp
from _sdk import BOX_ATOL, CMAKE_MIN, EXAMPLES, PHRASES, PROBABILITY_ATOL, SDK_TARGETS, STATEMENTS, cmake_version, export_for, sdk_options

import xvlm_edge
from xvlm_edge.export import export_model

TOOLCHAIN = REPO / "cmake" / "toolchains" / "aarch64-linux-gnu.cmake"
FETCH = REPO / "csrc" / "tools" / "fetch_executorch_runtime.py"
#: What the SDK links from Debian's :arm64 packages (libssl-dev, libpng-dev, libjpeg62-turbo-dev).
ARM64_LIBRARIES = ("libcrypto.so", "libpng.so", "libjpeg.so")
INT8_PROBABILITY_ATOL = 2e-3
INT8_BOX_ATOL = 1.0

missing = [tool for tool in ("aarch64-linux-gnu-g++", "qemu-aarch64", "cmake") if shutil.which(tool) is None]
missing += [f"{name} (:arm64)" for name in ARM64_LIBRARIES if not (Path("/usr/lib/aarch64-linux-gnu") / name).exists()]
pytestmark = pytest.mark.skipif(
    bool(missing), reason=f"the aarch64 cross-build needs {', '.join(missing)}: see docs/sdk-aarch64.md for the apt packages"
)


@pytest.fixture(scope="session")
def aarch64_build() -> Path:
    if cmake_version() < CMAKE_MIN:
        pytest.skip(f"the SDK needs CMake >= {'.'.join(map(str, CMAKE_MIN))} for ExecuTorch's targets: pip install cmake")
    prefix = REPO / "build" / "executorch-aarch64"
    fetched = subprocess.run([sys.executable, FETCH, prefix], capture_output=True, text=True, timeout=600)
    assert fetched.returncode == 0, fetched.stderr
    options = ["-DXVLM_EDGE_SDK=ON", f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}", f"-DCMAKE_PREFIX_PATH={prefix}"]
    return build_cpp(REPO / "build" / "sdk-aarch64", ("xvlm-lamp",), options)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory) -> list[str]:
    """The toolchain's CMAKE_CROSSCOMPILING_EMULATOR, read by CMake itself (the one line that says how to run
    an aarch64 program here)."""
    script = tmp_path_factory.mktemp("toolchain") / "emulator.cmake"
    script.write_text(f'include("{TOOLCHAIN}")\nmessage(NOTICE "${{CMAKE_CROSSCOMPILING_EMULATOR}}")\n')
    done = subprocess.run(["cmake", "-P", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "cortex-a76" in done.stderr, done.stderr
    return done.stderr.strip().split(";")


def lamp(program: list, *args: object) -> dict:
    done = subprocess.run([*map(str, program), *map(str, args)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_aarch64_lamp_smoke_equals_python_executorch(aarch64_build: Path, emulator: list[str], micro_model: Path) -> None:
    model_dir = micro_model  # the session's micro export (tests/_sdk.py), shared with tests/test_sdk.py
    python = xvlm_edge.load(model_dir, backend="executorch", threads=1)
    arm = [*emulator, aarch64_build / "xvlm-lamp"]
    found = lamp(arm, "check", EXAMPLES[0], STATEMENTS[0], "--model", export_for(model_dir))
    expected = python.check(EXAMPLES[0], STATEMENTS[0])
    assert found["verdict"] == expected.verdict
    assert found["probability"] == pytest.approx(expected.probability, abs=PROBABILITY_ATOL)
    assert found["evidence"]["xyxy"] == pytest.approx(python.ground(EXAMPLES[0], STATEMENTS[0]).xyxy, abs=BOX_ATOL)
    assert lamp(arm, "caption", EXAMPLES[0], "--model", export_for(model_dir))["token_ids"] == python.caption(EXAMPLES[0]).token_ids


@pytest.fixture(scope="module")
def embedded_exports(embedded_model: Path) -> Path:
    """The embedded model with its fp32 (the session's, tests/_sdk.py) and int8 ExecuTorch exports (about 10
    more minutes on 2 cores)."""
    export_model(embedded_model, "int8", "executorch", threads=2)
    return embedded_model


def answers(program: list, export: Path) -> dict:
    """Every xvlm-lamp answer the acceptance compares, keyed by (command, image, statement or beams)."""
    found = {}
    for image in EXAMPLES:
        for statement in STATEMENTS:
            found["check", image.name, statement] = lamp(program, "check", image, statement, "--model", export)
        found["ground", image.name] = lamp(program, "ground", image, *PHRASES, "--model", export)
        for beams in (1, 3):
            found["caption", image.name, beams] = lamp(program, "caption", image, "--model", export, "--beams", beams)
    return found


def boxes(answer: dict) -> list[list[float]]:
    return [box["xyxy"] for box in ([answer["evidence"]] if "evidence" in answer else answer.get("boxes", []))]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_aarch64_lamp_equals_x86_on_the_embedded_model(aarch64_build: Path, emulator: list[str], embedded_exports: Path, precision: str) -> None:
    x86 = build_cpp(REPO / "build" / "sdk-tests", SDK_TARGETS, sdk_options())
    export = embedded_exports / "export" / f"executorch-{precision}"
    reference, found = answers([x86 / "xvlm-lamp"], export), answers([*emulator, aarch64_build / "xvlm-lamp"], export)
    probability_atol, box_atol = (PROBABILITY_ATOL, BOX_ATOL) if precision == "fp32" else (INT8_PROBABILITY_ATOL, INT8_BOX_ATOL)
    for key, expected in reference.items():
        if key[0] == "check":
            assert found[key]["verdict"] == expected["verdict"], key
            assert found[key]["probability"] == pytest.approx(expected["probability"], abs=probability_atol), key
        if key[0] == "caption":
            assert found[key]["token_ids"] == expected["token_ids"], key
        for box, expected_box in zip(boxes(found[key]), boxes(expected)):
            assert box == pytest.approx(expected_box, abs=box_atol), key
