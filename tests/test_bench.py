"""`xvlm-edge bench` ships in the package, only reads the user's model directory, and refuses bad options."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from test_onnxruntime_backend import images, make_checkpoint

from xvlm_edge.cli import main
from xvlm_edge.cpu import cpu_flags
from xvlm_edge.export import export_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path (directories and links included as entries)."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = "link:" + str(path.readlink())
        elif path.is_file():
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[key] = "dir"
    return out


def test_bench_leaves_the_model_directory_byte_identical(tmp_path: Path, capsys) -> None:
    """An INT8 export that exists is timed read-only; the missing fp32 one is made elsewhere."""
    model_dir = make_checkpoint(tmp_path / "model", ("itc", "itm", "bbox", "caption"))
    export_model(model_dir, "int8", calibration=images(4, seed=5), eval_images=images(2, seed=6), force=True, threads=1)
    before = tree_hashes(model_dir)
    out = tmp_path / "report"
    args = ["bench", "--model", str(model_dir), "--batch", "1", "--repeats", "1", "--tasks", "ground", "--threads", "2"]
    assert main([*args, "--out", str(out), "--json"]) == 0
    assert tree_hashes(model_dir) == before
    report = json.loads(capsys.readouterr().out)
    assert json.loads(Path(f"{out}.json").read_text()) == report
    assert report["machine"]["cpu_flags"] == list(cpu_flags())
    assert {(r["backend"], r["precision"]) for r in report["results"]} == {("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")}
    # each backend timed in the torch thread state its load sets: torch's own count, 1 beside ONNX Runtime
    assert {r["backend"]: r["torch_threads"] for r in report["results"]} == {"torch": 2, "onnxruntime": 1}
    assert all(r["runs"] == 1 and r["p50_s"] > 0 for r in report["results"])
    int8, fp32 = report["exports"]["int8"], report["exports"]["fp32"]
    assert int8["seconds"] is None and int8["export"] == str(model_dir / "export" / "onnxruntime-int8")  # read only
    assert fp32["seconds"] > 0 and not fp32["export"].startswith(str(model_dir))  # made in a temporary directory
    assert not Path(fp32["export"]).exists()  # and removed with it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "foo"], "unknown tasks ['foo']"),
        (["--batch", "0"], "batch sizes must be positive"),
        (["--repeats", "0"], "repeats must be a positive integer"),
        (["--threads", "0"], "threads must be a positive integer"),
        (["--model", "/nonexistent/model"], "not a checkpoint directory"),
    ],
)
def test_bench_refuses_bad_options(args: list[str], message: str, capsys) -> None:
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_script_is_the_packaged_command() -> None:
    """`benchmarks/bench_backends.py` only forwards to `xvlm-edge bench` (what a wheel user runs)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_backends.py"
    assert 'main(["bench", *sys.argv[1:]])' in script.read_text()
