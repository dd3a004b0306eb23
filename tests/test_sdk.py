"""The lamp SDK (csrc/sdk, csrc/executorch: libxvlm_edge and xvlm-lamp) against the Python package on the same export.

The SDK is built once per session with CMake against the executorch wheel (into build/sdk-tests, kept between
runs). By default it runs on a micro random model (`test_export_executorch.micro_checkpoint`: its fp32 export
takes about a minute) with the shipped example images; under -m slow, on the embedded model, whose export
takes about four minutes on 2 cores.

Parity: `xvlm-lamp` against `xvlm_edge.load(model_dir, backend=...)`. Against the Python ExecuTorch backend
(the same programs, the same kernels) the verdict and caption ids are equal and the probabilities within
1e-5 (measured: equal); against torch (other kernels, other summation order) probabilities within 1e-5
(measured on the embedded model: 1.2e-7), boxes within 1e-4 pixels of a 128-px image scaled to the
original (measured: 3.4e-5), caption token ids equal. The C API's bad-input suite (csrc/tests/test_c_api.cpp)
and the 8-thread determinism check (csrc/tests/test_sdk_threads.cpp) run as programs; the bad-input suite
also runs in an AddressSanitizer + UndefinedBehaviorSanitizer build (build/sdk-asan: about 2 CPU-minutes to
build from scratch, then half a second to run on the micro model).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from _cpp_build import REPO, build_cpp
from _sdk import BOX_ATOL, CMAKE_MIN, EXAMPLES, INSTALL_REASON, PHRASES, PROBABILITY_ATOL, STATEMENTS, cmake_version, export_for, lamp, sdk_options

import xvlm_edge

pytest.importorskip("executorch", reason=INSTALL_REASON)

def check_parity(build: Path, model_dir: Path, images: list[Path]) -> None:
    """xvlm-lamp check, ground and caption (greedy and 3 beams) against both Python backends."""
    model = str(export_for(model_dir))
    python = {name: xvlm_edge.load(model_dir, backend=name, threads=1) for name in ("executorch", "torch")}
    for image in images:
        for statement in STATEMENTS:
            found = lamp(build, "check", image, statement, "--model", model)
            for name, reference in python.items():
                verdict = reference.check(image, statement)
                assert found["verdict"] == verdict.verdict, (name, image.name, statement)
                assert found["probability"] == pytest.approx(verdict.probability, abs=PROBABILITY_ATOL), (name, image.name)
                assert found["threshold"] == verdict.threshold
                assert found["evidence"]["xyxy"] == pytest.approx(reference.ground(image, statement).xyxy, abs=BOX_ATOL), (name, image.name)
        grounded = lamp(build, "ground", image, *PHRASES, "--model", model)["boxes"]
        for name, reference in python.items():
            for box, expected in zip(grounded, reference.ground(image, PHRASES)):
                assert box["xyxy"] == pytest.approx(expected.xyxy, abs=BOX_ATOL), (name, image.name, box["phrase"])
                assert box["clipped"] == expected.clipped
        for beams in (1, 3):
            caption = lamp(build, "caption", image, "--model", model, "--beams", beams)
            for name, reference in python.items():
                expected = reference.caption(image, num_beams=beams)
                assert caption["token_ids"] == expected.token_ids, (name, image.name, beams)
                assert caption["caption"] == expected.text and caption["truncated"] == expected.truncated
                assert caption["logprob"] == pytest.approx(expected.logprob, abs=PROBABILITY_ATOL)


def test_lamp_equals_python_on_the_micro_model(sdk_build: Path, micro_model: Path) -> None:
    check_parity(sdk_build, micro_model, EXAMPLES)


def test_lamp_caption_past_the_beam_bound_equals_python(sdk_build: Path, micro_model: Path) -> None:
    """10 beams: past the export's 8 decoder rows, so each step is cut in two, as the Python runtime cuts it."""
    found = lamp(sdk_build, "caption", EXAMPLES[0], "--model", export_for(micro_model), "--beams", 10, "--max-length", 14)
    expected = xvlm_edge.load(micro_model, backend="executorch", threads=1).caption(EXAMPLES[0], num_beams=10, max_length=14)
    assert found["token_ids"] == expected.token_ids


def test_lamp_threshold_and_exit_codes(sdk_build: Path, micro_model: Path, tmp_path: Path) -> None:
    model = export_for(micro_model)
    found = lamp(sdk_build, "check", EXAMPLES[0], "a star", "--model", model, "--threshold", 0)
    assert found["verdict"] is True and found["threshold"] == 0
    assert lamp(sdk_build, "check", EXAMPLES[0], "a star", "--model", model, "--threshold", 1.5, expect=2)["stderr"].count("threshold")
    assert "XVLM_ERR_TEXT" in lamp(sdk_build, "check", EXAMPLES[0], "?!", "--model", model, expect=2)["stderr"]
    assert "XVLM_ERR_IMAGE" in lamp(sdk_build, "ground", tmp_path / "none.png", "a star", "--model", model, expect=2)["stderr"]
    assert "usage" in lamp(sdk_build, "check", EXAMPLES[0], "--model", model, expect=2)["stderr"]
    assert "XVLM_ERR_MODEL" in lamp(sdk_build, "caption", EXAMPLES[0], "--model", tmp_path, expect=1)["stderr"]


def run_bad_input_suite(build: Path, model_dir: Path, scratch: Path, env: dict[str, str] | None = None) -> int:
    done = subprocess.run([build / "xvlm_edge_test_c_api", export_for(model_dir), EXAMPLES[0], scratch], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    cases = int(re.search(r"(\d+) cases, 0 failures", done.stdout)[1])
    assert cases >= 40
    return cases


def test_c_api_bad_input_suite(sdk_build: Path, micro_model: Path, tmp_path: Path) -> None:
    run_bad_input_suite(sdk_build, micro_model, tmp_path)


def test_eight_threads_one_model_are_bit_identical(sdk_build: Path, micro_model: Path) -> None:
    done = subprocess.run([sdk_build / "xvlm_edge_test_sdk_threads", export_for(micro_model), *EXAMPLES[:2]], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "bit-identical" in done.stdout, done.stdout + done.stderr[-2000:]


@pytest.mark.slow
def test_lamp_equals_python_on_the_embedded_model(sdk_build: Path, embedded_model: Path) -> None:
    check_parity(sdk_build, embedded_model, EXAMPLES)


def test_bad_input_suite_under_asan_and_ubsan(micro_model: Path, tmp_path: Path) -> None:
    if cmake_version() < CMAKE_MIN:
        pytest.skip("the SDK needs CMake >= 3.28")
    flags = "-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
    build = build_cpp(
        REPO / "build" / "sdk-asan",
        ("xvlm_edge_test_c_api",),
        sdk_options(f"-DCMAKE_CXX_FLAGS={flags}", "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined",
                    "-DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=address,undefined", "-DCMAKE_BUILD_TYPE=RelWithDebInfo"),
    )  # fmt: skip
    run_bad_input_suite(build, micro_model, tmp_path, env={"PATH": "/usr/bin:/bin", "UBSAN_OPTIONS": "print_stacktrace=1"})
