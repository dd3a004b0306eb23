"""TensorRT engine layer: the TensorRT-free C++ logic through `_C` (manifest, profiles, shapes, versions), the
Python driver without TensorRT, the plain C++ tests and the mock-TensorRT compile (slow), and the real
runner, which skips unless `_C` was built with TensorRT on a CUDA machine.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sysconfig
import warnings
from pathlib import Path

import pytest
import torch

from xvlm_edge import _C
from xvlm_edge.errors import BackendUnavailableError, EngineError, XVLMEdgeError
from xvlm_edge.files import sha256_file
from xvlm_edge.runtime import tensorrt as trt_runtime

REPO = Path(__file__).resolve().parents[1]

ENGINE_BYTES = b"not a real engine, only hashed"

MANIFEST = {
    "schema": 1,
    "graph": "vision",
    "engine": "vision.engine",
    "sha256": hashlib.sha256(ENGINE_BYTES).hexdigest(),
    "tensorrt_version": "10.3.0",
    "precision": "fp16",
    "inputs": [{"name": "pixels", "dtype": "float32", "shape": [-1, 3, 384, 384]}],
    "outputs": [
        {"name": "image_embeds", "dtype": "float32", "shape": [-1, 145, 1024]},
        {"name": "image_feat", "dtype": "float32", "shape": [-1, 256]},
    ],
    "profiles": [
        {"pixels": {"min": [1, 3, 384, 384], "opt": [1, 3, 384, 384], "max": [4, 3, 384, 384]}},
        {"pixels": {"min": [5, 3, 384, 384], "opt": [8, 3, 384, 384], "max": [16, 3, 384, 384]}},
    ],
}


def manifest(**changes: object) -> str:
    return json.dumps({**MANIFEST, **changes})


@pytest.fixture
def spec() -> _C.EngineSpec:
    return _C.EngineManifest.parse(manifest()).spec


# -- manifest ---------------------------------------------------------------------------------------------


def test_manifest_parses_and_round_trips() -> None:
    m = _C.EngineManifest.parse(manifest())
    assert (m.schema, m.graph, m.engine, m.precision) == (1, "vision", "vision.engine", "fp16")
    assert [(t.name, t.dtype, t.shape) for t in m.spec.inputs] == [("pixels", "float32", (-1, 3, 384, 384))]
    assert [t.name for t in m.spec.outputs] == ["image_embeds", "image_feat"]
    assert m.spec.profiles[1].ranges["pixels"] == ([5, 3, 384, 384], [8, 3, 384, 384], [16, 3, 384, 384])
    assert json.loads(m.to_json()) == MANIFEST
    assert _C.EngineManifest.parse(m.to_json()).to_json() == m.to_json()


def test_manifest_built_from_python_is_the_export_path() -> None:
    """The export step builds the manifest from structures and writes to_json(); validation runs on construction."""
    spec = _C.EngineSpec(
        [_C.TensorSpec("text_ids", "int64", [-1, -1])],
        [_C.TensorSpec("text_embeds", "float16", [-1, -1, 768])],
        [_C.Profile({"text_ids": ([1, 1], [4, 30], [8, 40])})],
    )
    m = _C.EngineManifest("text", "text.engine", "a" * 64, "10.8.0", "fp16", spec)
    assert json.loads(m.to_json())["profiles"] == [{"text_ids": {"min": [1, 1], "opt": [4, 30], "max": [8, 40]}}]
    with pytest.raises(EngineError, match="profile 0 has no range for the dynamic input 'text_ids'"):
        _C.EngineManifest(
            "text",
            "text.engine",
            "a" * 64,
            "10.8.0",
            "fp16",
            _C.EngineSpec(spec.inputs, spec.outputs, [_C.Profile({})]),
        )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid JSON at offset 0: unexpected end of input"),
        ("[1, 2]", r"\$: expected an object"),
        ("[" * 100, "nested deeper than 16"),
        (manifest(schema=2), "schema 2 is not supported.*re-export"),
        (manifest(engine="../../etc/passwd"), "must be a plain file name"),
        (manifest(sha256="abc"), "sha256 'abc' must be 64 lower-case hex digits"),
        (manifest(tensorrt_version="ten"), "TensorRT version 'ten' is not of the form"),
        (manifest(precision="fp8"), "precision 'fp8'"),
        (manifest(graph="Vision!"), r"graph 'Vision!' must be a non-empty \[a-z0-9_\] name"),
        (json.dumps({**MANIFEST, "extra": 1}), 'unknown key "extra"'),
        (json.dumps({k: v for k, v in MANIFEST.items() if k != "profiles"}), 'missing key "profiles"'),
        (
            manifest(inputs=[{"name": "pixels", "dtype": "float64", "shape": [-1, 3, 384, 384]}]),
            r"\$\.inputs\[0\]\.dtype.*float64",
        ),
        (manifest(inputs=[{"name": "pixels", "dtype": "float32", "shape": [-1, 3.5]}]), "integers only"),
        (
            manifest(inputs=[{"name": "pixels", "dtype": "float32", "shape": "(-1, 3)"}]),
            r"\$\.inputs\[0\]\.shape: expected an array",
        ),
        (manifest(outputs=[{"name": "pixels", "dtype": "float32", "shape": [1]}]), "'pixels' appears twice"),
        (manifest(outputs=[]), "at least one output"),
        (manifest(profiles=[]), "dynamic inputs but no optimisation profile"),
        (
            manifest(
                profiles=[{"pixels": {"min": [1, 3, 384, 384], "opt": [9, 3, 384, 384], "max": [4, 3, 384, 384]}}]
            ),
            "profile 0 input 'pixels' dim 0: needs min <= opt <= max, got 1, 9, 4",
        ),
        (
            manifest(
                profiles=[{"pixels": {"min": [1, 3, 224, 384], "opt": [1, 3, 384, 384], "max": [4, 3, 384, 384]}}]
            ),
            r"dim 2 is static \(384\) but the range is \[224, 384\]",
        ),
        (
            manifest(profiles=[{"pixel": {"min": [1], "opt": [1], "max": [1]}}]),
            "range for 'pixel', which is not an input",
        ),
    ],
)
def test_manifest_rejects_with_a_message_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        _C.EngineManifest.parse(text)


def test_engine_error_is_in_the_one_exception_tree() -> None:
    with pytest.raises(XVLMEdgeError):
        _C.EngineManifest.parse("{")


def test_manifest_load_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "vision.json"
    bad.write_text(manifest(sha256="xyz"))
    with pytest.raises(EngineError, match=f"{bad}: engine manifest: sha256"):
        _C.EngineManifest.load(str(bad))
    with pytest.raises(EngineError, match="cannot be opened"):
        _C.EngineManifest.load(str(tmp_path / "missing.json"))


# -- profiles and shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "profile"), [(1, 0), (4, 0), (5, 1), (8, 1), (16, 1)])
def test_select_profile_bounds_are_inclusive(spec: _C.EngineSpec, batch: int, profile: int) -> None:
    assert _C.select_profile(spec.profiles, {"pixels": [batch, 3, 384, 384]}) == profile


@pytest.mark.parametrize("batch", [0, 17])
def test_select_profile_error_names_input_dim_and_range(spec: _C.EngineSpec, batch: int) -> None:
    with pytest.raises(EngineError) as info:
        _C.select_profile(spec.profiles, {"pixels": [batch, 3, 384, 384]})
    message = str(info.value)
    assert f"pixels ({batch}, 3, 384, 384)" in message
    assert f"profile 0: input 'pixels' dim 0 is {batch}, allowed [1, 4]" in message
    assert f"profile 1: input 'pixels' dim 0 is {batch}, allowed [5, 16]" in message


def test_select_profile_refuses_a_missing_input_and_no_profiles(spec: _C.EngineSpec) -> None:
    with pytest.raises(EngineError, match="input 'pixels' is missing"):
        _C.select_profile(spec.profiles, {"text_ids": [1, 3]})
    with pytest.raises(EngineError, match="no optimisation profile"):
        _C.select_profile([], {"pixels": [1, 3, 384, 384]})


def test_select_profile_takes_the_first_match_when_profiles_overlap() -> None:
    wide = _C.Profile({"x": ([1], [8], [64])})
    narrow = _C.Profile({"x": ([1], [1], [4])})
    assert _C.select_profile([wide, narrow], {"x": [2]}) == 0
    assert _C.select_profile([narrow, wide], {"x": [2]}) == 0
    assert _C.select_profile([narrow, wide], {"x": [5]}) == 1


def test_validate_shapes_accepts_a_good_input(spec: _C.EngineSpec) -> None:
    _C.validate_shapes(spec, {"pixels": ("float32", [2, 3, 384, 384])})


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, r"missing input tensor 'pixels' \(-1, 3, 384, 384\) float32"),
        (
            {"pixels": ("float32", [1, 3, 384, 384]), "text_ids": ("int64", [1, 5])},
            "unknown input tensor 'text_ids'; the engine's inputs are: pixels",
        ),
        ({"pixels": ("float16", [1, 3, 384, 384])}, "input 'pixels' has dtype float16, the engine expects float32"),
        (
            {"pixels": ("float32", [3, 384, 384])},
            r"input 'pixels' has rank 3 \(3, 384, 384\), the engine expects rank 4",
        ),
        ({"pixels": ("float32", [1, 3, 224, 224])}, "input 'pixels' dim 2 is 224, .* fixes it to 384"),
        ({"pixels": ("float32", [-2, 3, 384, 384])}, "negative dimension"),
        ({"pixels": ("complex64", [1, 3, 384, 384])}, "unknown dtype 'complex64'"),
    ],
)
def test_validate_shapes_errors(spec: _C.EngineSpec, inputs: dict, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        _C.validate_shapes(spec, inputs)


# -- versions ---------------------------------------------------------------------------------------------


def test_same_major_minor_is_compatible() -> None:
    _C.check_tensorrt_compatible("10.3.0", "10.3.1.4")


@pytest.mark.parametrize(("built", "runtime"), [("10.3.0", "10.4.0"), ("10.3.0", "11.3.0"), ("11.0.1", "10.16.0")])
def test_version_mismatch_is_refused_with_both_versions(built: str, runtime: str) -> None:
    with pytest.raises(EngineError) as info:
        _C.check_tensorrt_compatible(built, runtime)
    message = str(info.value)
    assert f"built with TensorRT {built}" in message and f"runtime is TensorRT {runtime}" in message
    assert "Rebuild the engine" in message


def test_version_text_is_checked() -> None:
    with pytest.raises(EngineError, match="not of the form major.minor"):
        _C.check_tensorrt_compatible("10", "10.3.0")


# -- the Python driver ------------------------------------------------------------------------------------


def write_engine_dir(root: Path, **changes: object) -> Path:
    root.mkdir(exist_ok=True)
    (root / "vision.engine").write_bytes(ENGINE_BYTES)
    (root / "vision.json").write_text(manifest(**changes))
    return root


def test_read_engine_dir_checks_hash_and_files(tmp_path: Path) -> None:
    manifests = trt_runtime.read_engine_dir(write_engine_dir(tmp_path / "ok"))
    assert list(manifests) == ["vision"] and manifests["vision"].precision == "fp16"

    with pytest.raises(EngineError, match="differs from the manifest's"):
        trt_runtime.read_engine_dir(write_engine_dir(tmp_path / "corrupt", sha256="0" * 64))
    missing = write_engine_dir(tmp_path / "missing")
    (missing / "vision.engine").unlink()
    with pytest.raises(EngineError, match="engine file .*vision.engine is missing"):
        trt_runtime.read_engine_dir(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match=r"no engine manifests") as info:
        trt_runtime.read_engine_dir(tmp_path / "empty")
    assert "xvlm-edge engines" in info.value.hint
    with pytest.raises(EngineError, match="does not exist"):
        trt_runtime.read_engine_dir(tmp_path / "nowhere")


@pytest.mark.skipif(_C.has_tensorrt(), reason="checks the build without TensorRT")
def test_has_tensorrt_is_false_without_tensorrt() -> None:
    assert _C.has_tensorrt() is False
    assert _C.tensorrt_version() is None
    assert not hasattr(_C, "EngineRunner") and not hasattr(_C, "EngineBuilder")


@pytest.mark.skipif(_C.has_tensorrt(), reason="checks the build without TensorRT")
def test_runtime_without_tensorrt_raises_backend_unavailable(tmp_path: Path) -> None:
    engine_dir = write_engine_dir(tmp_path / "engines")
    with pytest.raises(BackendUnavailableError, match="TensorRT runtime not compiled into xvlm_edge._C") as info:
        trt_runtime.TensorRTRuntime(engine_dir)
    assert "CMAKE_PREFIX_PATH" in info.value.hint
    m = _C.EngineManifest.parse(manifest())
    with pytest.raises(BackendUnavailableError, match="TensorRT runtime not compiled"):
        trt_runtime.TensorRTEngine(m, engine_dir / "vision.engine")


# -- with TensorRT only (skips here: TensorRT is not installable in this workplace) -----------------------

needs_tensorrt = pytest.mark.skipif(
    not (_C.has_tensorrt() and torch.cuda.is_available()),
    reason="needs xvlm_edge._C built against TensorRT and a CUDA device (see csrc/tensorrt/README.md)",
)


@needs_tensorrt
@pytest.mark.gpu
def test_tensorrt_build_and_run_match_torch(tmp_path: Path) -> None:
    """Builds a tiny ONNX graph with two profiles and checks the zero-copy run against torch.

    fp32 elementwise ops: TensorRT's tanh kernel may differ from torch's by a few ulp, hence 1e-5.
    """
    pytest.importorskip("onnx")

    class Tiny(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(x) * 2.0 + 1.0

    onnx_path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():  # the legacy (TorchScript) exporter is deprecated in torch 2.9+
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            Tiny(),
            (torch.randn(2, 8),),
            onnx_path,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            dynamo=False,
        )
    profiles = [_C.Profile({"x": ([1, 8], [2, 8], [4, 8])}), _C.Profile({"x": ([5, 8], [8, 8], [16, 8])})]
    engine_path = tmp_path / "tiny.engine"
    cache = tmp_path / "timing.cache"
    spec = _C.EngineBuilder(str(onnx_path), str(engine_path), profiles, str(cache)).build()
    assert cache.is_file()
    version = _C.tensorrt_version()
    m = _C.EngineManifest("tiny", "tiny.engine", sha256_file(engine_path), version, "fp32", spec)
    engine = trt_runtime.TensorRTEngine(m, engine_path)
    for batch in (1, 4, 5, 16):
        x = torch.randn(batch, 8, device="cuda")
        y = engine.run({"x": x})["y"]
        torch.testing.assert_close(y, torch.tanh(x) * 2.0 + 1.0, atol=1e-5, rtol=1e-5)
    with pytest.raises(EngineError, match=r"dim 0 is 17, allowed \[5, 16\]"):
        engine.run({"x": torch.randn(17, 8, device="cuda")})
    with pytest.raises(EngineError, match="256-byte"):
        engine.run({"x": torch.randn(3, 9, device="cuda")[:, 1:].contiguous()[1:]})
    stale = _C.EngineManifest("tiny", "tiny.engine", m.sha256, "9.0.0", "fp32", spec)
    with pytest.raises(EngineError, match="built with TensorRT 9.0.0"):
        trt_runtime.TensorRTEngine(stale, engine_path)


# -- plain C++ tests and the mock-TensorRT compile (slow) -------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cpp_core_tests_and_mock_tensorrt_compile(tmp_path: Path) -> None:
    """ctest runs csrc/tests/test_engine_spec.cpp; the build also compiles csrc/tensorrt/engine.cpp against the
    mock TensorRT 10 and 11 headers (a type check of our calls, not a build against TensorRT)."""
    build = tmp_path / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    options = [
        "-DXVLM_EDGE_BUILD_TESTS=ON",
        "-DXVLM_EDGE_PYTHON=OFF",
        "-DXVLM_EDGE_WITH_CUDA=OFF",
        "-DXVLM_EDGE_WITH_TENSORRT=OFF",
    ]
    subprocess.run(["cmake", "-S", REPO, "-B", build, *generator, *options], check=True, capture_output=True)
    built = subprocess.run(
        ["cmake", "--build", build, "--parallel"], check=False, capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert list(build.rglob("engine.cpp.o")) and len(list(build.rglob("engine.cpp.o"))) == 2
    tests = subprocess.run(
        ["ctest", "--output-on-failure"], check=False, cwd=build, capture_output=True, text=True, timeout=300
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    run = subprocess.run([build / "xvlm_edge_core_tests"], check=False, capture_output=True, text=True)
    assert run.stdout.strip().endswith("0 failures"), run.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_bindings_compile_with_the_tensorrt_branch_against_the_mock() -> None:
    """The #if XVLM_EDGE_HAS_TENSORRT half of bindings.cpp is otherwise never compiled in this workplace."""
    import pybind11

    command = [
        "c++",
        "-std=c++17",
        "-fsyntax-only",
        "-Wall",
        "-Wextra",
        "-DXVLM_EDGE_HAS_TENSORRT=1",
        '-DXVLM_EDGE_VERSION="0"',
        f"-I{REPO / 'csrc/tests/mock_tensorrt'}",
        f"-I{REPO / 'csrc/include'}",
        f"-I{pybind11.get_include()}",
        f"-I{sysconfig.get_paths()['include']}",
        str(REPO / "csrc/python/bindings.cpp"),
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
