"""The SDK's TensorRT GraphEngine (csrc/tensorrt/graph_engine*.cpp), tested without TensorRT or a GPU.

Builds, with plain CMake: the TensorRT-free half's C++ test (engine directories and their sha256, float16 /
bfloat16 / int32 exchange, buffer growth, call checks, the SDK's description of an engine graph), and the
TensorRT half compiled against the mock TensorRT 10 and 11 headers (a type check of the calls, not a build
against TensorRT). Then reads engine directories written the way `xvlm-edge engines` writes them with both the
C++ reader and `xvlm_edge.runtime.tensorrt.read_engine_dir`, which must accept and refuse the same ones.
What only a TensorRT machine can check is in csrc/tensorrt/README.md.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from _cpp_build import build_cpp, needs_cmake

from xvlm_edge import _C
from xvlm_edge.errors import EngineError
from xvlm_edge.files import sha256_file
from xvlm_edge.runtime.tensorrt import read_engine_dir

TARGETS = (
    "xvlm_edge_tensorrt_graph_engine_tests",
    "xvlm_edge_tensorrt_mock_compile_10",
    "xvlm_edge_tensorrt_mock_compile_11",
    "xvlm_edge_tensorrt_graph_engine_mock_compile_10",
    "xvlm_edge_tensorrt_graph_engine_mock_compile_11",
)

pytestmark = needs_cmake


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    return build_cpp(tmp_path_factory.mktemp("trt_graph_engine") / "build", TARGETS, ["-DXVLM_EDGE_BUILD_TESTS=ON"])


def test_host_half_and_mock_compile(build: Path, tmp_path: Path) -> None:
    objects = sorted(p.name for p in build.rglob("*.o") if p.parent.name == "tensorrt")
    assert objects.count("engine.cpp.o") == 2 and objects.count("graph_engine.cpp.o") == 2, objects
    run = subprocess.run([build / TARGETS[0], tmp_path], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip().endswith(" 0 failures"), run.stdout + run.stderr


def write_engine(root: Path, graph: str, payload: bytes) -> None:
    """One engine and its manifest, as xvlm_edge.export.tensorrt.build_engines writes them."""
    spec = _C.EngineSpec(
        [_C.TensorSpec("pixels", "float32", [-1, 3, 32, 32])],
        [_C.TensorSpec("image_embeds", "float16", [-1, 5, 16])],
        [_C.Profile({"pixels": ([1, 3, 32, 32], [1, 3, 32, 32], [4, 3, 32, 32])})],
    )
    engine = root / f"{graph}.engine"
    engine.write_bytes(payload)
    manifest = _C.EngineManifest(graph, engine.name, sha256_file(engine), "10.3.0", "fp16", spec)
    (root / f"{graph}.json").write_text(manifest.to_json())


def make_dir(tmp_path: Path, case: str) -> Path:
    root = tmp_path / case / "engines"
    root.mkdir(parents=True)
    if case == "empty":
        return root
    write_engine(root, "vision", b"\x00engine bytes" * 1000)
    write_engine(root, "text", b"another engine")
    if case == "tampered":
        (root / "text.engine").write_bytes(b"another engind")
    elif case == "missing":
        (root / "vision.engine").unlink()
    elif case == "twice":
        (root / "vision2.json").write_text((root / "vision.json").read_text())
    elif case == "garbled":
        (root / "text.json").write_text('{"schema": 1, "graph": "text"')
    return root


#: What both readers' refusal of each broken directory says.
REFUSALS = {
    "tampered": "differs from the manifest",
    "missing": "is missing",
    "twice": "a second engine for graph",
    "garbled": "text.json",
    "empty": "no engine manifests",
    "absent": "does not exist",
}


def read_with_cpp(build: Path, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([build / TARGETS[0], "--read", root], capture_output=True, text=True, timeout=60)


def test_both_readers_accept_a_good_directory(build: Path, tmp_path: Path) -> None:
    root = make_dir(tmp_path, "good")
    python = {graph: str(root / m.engine) for graph, m in read_engine_dir(root).items()}
    cpp = read_with_cpp(build, root)
    assert cpp.returncode == 0, cpp.stdout + cpp.stderr
    assert dict(line.split(" ", 1) for line in cpp.stdout.splitlines()) == python
    assert sorted(python) == ["text", "vision"]


@pytest.mark.parametrize("case", REFUSALS)
def test_both_readers_refuse_a_broken_directory(build: Path, tmp_path: Path, case: str) -> None:
    root = tmp_path / "absent" / "engines" if case == "absent" else make_dir(tmp_path, case)
    with pytest.raises(EngineError, match=re.escape(REFUSALS[case])):
        read_engine_dir(root)
    cpp = read_with_cpp(build, root)
    assert cpp.returncode == 1 and cpp.stdout.startswith("ModelError: "), cpp.stdout + cpp.stderr
    assert REFUSALS[case] in cpp.stdout, cpp.stdout
