"""Is the lamp SDK at least as fast as the Python package, in at most half its memory?

One model (the embedded default, `--model DIR`, or `--preset NAME` with random weights) runs the lamp's tasks
through both deliverables on this machine, each configuration in a process of its own:
- SDK: `xvlm-bench` (benchmarks/bench_sdk.cpp, the C++ wrapper over libxvlm_edge) on the ExecuTorch fp32 and
  INT8 exports (`xvlm-edge export DIR --target executorch`);
- Python: `xvlm_edge.load(DIR, backend="onnxruntime", precision=...)` on the ONNX Runtime fp32 and INT8 exports.
Timed region, both sides: decode the example image file, then the task: `check` one statement, `ground` one
phrase, `caption` beam 3 with exactly 16 new tokens (min = max length). `--warmup` calls, then `--repeats`
timed calls; p50/p95 over them. Peak RSS is each process's high-water mark (getrusage): the
Python figure includes the interpreter, torch and ONNX Runtime, which every Python user carries too.
INT8 exports: the embedded model's pass the accuracy gate by the plan search users get; random weights
cannot pass a gate, so a preset's are forced (every graph INT8, the gate's figures recorded).
Sizes: the SDK's shared libraries (libxvlm_edge and the ExecuTorch libraries it loads) and the Python
packages the Python path imports, plus each export's files.

Run: python benchmarks/bench_sdk.py [--preset xvlm-base-16m-384] [--out benchmarks/results/sdk-...] [--work DIR]
It never writes into a model directory: the model is copied into `--work` (default: a temporary directory)
and exported there; exports already in `--work` that match the copy's weights are reused, so a second run
times without re-exporting (an INT8 export of the embedded model takes minutes).
The JSON records the CPU's name and ISA flags: compare figures of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = ("check", "ground", "caption")
TEXT = {"check": "there are three stars", "ground": "the red circle", "caption": ""}
BEAMS = 3
NEW_TOKENS = 16
IMAGE = REPO / "xvlm_edge" / "assets" / "examples" / "scene-05.png"
#: (runner, precision) in the order of the table and the chart
CONFIGS = (("sdk", "fp32"), ("sdk", "int8"), ("python", "fp32"), ("python", "int8"))
#: Python packages the Python path imports (their installed size is its "binary")
PYTHON_PACKAGES = ("torch", "onnxruntime", "numpy", "cv2", "tokenizers", "safetensors", "xvlm_edge")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- building and exporting -----------------------------------------------------------------------------


def executorch_prefix() -> Path:
    import executorch

    return Path(next(iter(executorch.__path__)))


def build_sdk(build: Path) -> Path:
    """Configure and build `xvlm-bench` (Release) into `build`; the program's path."""
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    options = ["-DXVLM_EDGE_SDK=ON", "-DXVLM_EDGE_PYTHON=OFF", "-DXVLM_EDGE_WITH_CUDA=OFF", "-DXVLM_EDGE_WITH_TENSORRT=OFF"]
    log(f"building the SDK into {build} ...")
    configure = ["cmake", "-S", REPO, "-B", build, *generator, *options, f"-DCMAKE_PREFIX_PATH={executorch_prefix()}"]
    subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", build, "--parallel", "--target", "xvlm-bench"], check=True, stdout=subprocess.DEVNULL)
    return build / "xvlm-bench"


def prepare_model(args: argparse.Namespace, work: Path) -> tuple[Path, str]:
    """A copy of the model to export into (never the user's directory), and its description."""
    import torch

    import xvlm_edge
    from xvlm_edge.checkpoint import Checkpoint, save
    from xvlm_edge.config import get_preset
    from xvlm_edge.models.xvlm import XVLM
    from xvlm_edge.tokenizer import Tokenizer

    model = work / "model"
    if (model / "model.safetensors").is_file():
        return model, f"{args.preset} (random weights)" if args.preset else str(args.model or "the embedded model")
    if args.preset:
        torch.manual_seed(0)
        config = get_preset(args.preset, ("itc", "itm", "bbox", "caption"))
        save(Checkpoint(XVLM(config).eval(), Tokenizer.default(), config), model)
        return model, f"{args.preset} (random weights)"
    source = args.model or Path(xvlm_edge.__file__).parent / "assets" / "default"
    shutil.copytree(source, model, ignore=shutil.ignore_patterns("export"))
    return model, str(source)


def export_all(model: Path, forced: bool, threads: int) -> dict[tuple[str, str], dict]:
    """Every export the configurations run, with what the JSON records of each."""
    from xvlm_edge.errors import ForcedExportWarning, XVLMEdgeError
    from xvlm_edge.export import export_model
    from xvlm_edge.export.quantize import synthetic_images
    from xvlm_edge.manifest import ExportManifest, export_dir

    out = {}
    for runner, precision in CONFIGS:
        target = "executorch" if runner == "sdk" else "onnxruntime"
        directory = export_dir(model, target, precision)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ForcedExportWarning)
            try:
                manifest = ExportManifest.read(directory)
                manifest.check_weights(model, directory)
                start = None
                log(f"reusing {directory}")
            except XVLMEdgeError:
                log(f"exporting {target} {precision} ...")
                int8_forced = forced and precision == "int8"
                manifest = export_model(
                    model, precision, target, force=int8_forced, threads=threads, progress=True,
                    eval_images=synthetic_images(8, seed=1) if int8_forced else None,
                )  # fmt: skip
        out[runner, precision] = {
            "directory": directory,
            "seconds": None if start is None else time.perf_counter() - start,  # None: reused from --work
            "bytes": sum(f.stat().st_size for f in directory.iterdir() if f.is_file()),
            "plan": {g: e.quantization for g, e in manifest.graphs.items()},
            "accuracy": manifest.accuracy,
        }
    return out


def sdk_library_bytes(program: Path) -> dict[str, int]:
    """{library: bytes} of libxvlm_edge and every ExecuTorch library the program loads (ldd)."""
    found = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    sizes = {}
    for line in found.splitlines():
        parts = line.split("=>")
        if len(parts) == 2 and parts[1].split() and ("xvlm_edge" in parts[0] or "executorch" in parts[0]):
            path = Path(parts[1].split()[0])
            sizes[path.name] = path.stat().st_size
    return sizes


def python_package_bytes() -> dict[str, int]:
    import importlib.util

    sizes = {}
    for name in PYTHON_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            root = Path(next(iter(spec.submodule_search_locations)))
            sizes[name] = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    return sizes


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM, kB in /proc/self/status), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- timing ------------------------------------------------------------------------------------------------


def time_sdk(program: Path, export: Path, task: str, args: argparse.Namespace, prompt_tokens: int) -> dict:
    command = [program, "--model", export, "--image", IMAGE, "--task", task, "--repeats", str(args.repeats), "--warmup", str(args.warmup),
               "--threads", str(args.threads), "--beams", str(BEAMS), "--new-tokens", str(NEW_TOKENS), "--prompt-tokens", str(prompt_tokens)]  # fmt: skip
    if TEXT[task]:
        command += ["--text", TEXT[task]]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def time_python(model: Path, precision: str, task: str, args: argparse.Namespace) -> dict:
    """The same task through `xvlm_edge.load(..., backend="onnxruntime")`, in a fresh interpreter."""
    request = {"model": str(model), "precision": precision, "task": task, "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads}
    found = subprocess.run([sys.executable, __file__, "--child", json.dumps(request)], capture_output=True, text=True, check=True)
    return json.loads(found.stdout)


def child(request: dict) -> dict:
    """Runs in the child process: open, warm up, time; peak RSS of this whole process."""
    start = time.perf_counter()
    import xvlm_edge
    from xvlm_edge.errors import ForcedExportWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForcedExportWarning)
        model = xvlm_edge.load(request["model"], backend="onnxruntime", precision=request["precision"], threads=request["threads"])
    open_s = time.perf_counter() - start
    task = request["task"]
    length = len(model.tokenizer.caption_prompt_ids(model.config.tasks.caption_prompt)) + NEW_TOKENS
    calls = {
        "check": lambda: model.check(IMAGE, TEXT["check"]),
        "ground": lambda: model.ground(IMAGE, [TEXT["ground"]]),
        "caption": lambda: model.caption(IMAGE, num_beams=BEAMS, max_length=length, min_length=length),
    }
    for _ in range(request["warmup"]):
        calls[task]()
    runs = []
    for _ in range(request["repeats"]):
        start = time.perf_counter()
        found = calls[task]()
        runs.append(time.perf_counter() - start)
    new_tokens = len(found.token_ids) - (length - NEW_TOKENS) if task == "caption" else 0
    return {"task": task, "open_s": open_s, "runs_s": runs, "peak_rss_mib": peak_rss_mib(), "new_tokens": new_tokens}


def summarise(row: dict) -> dict:
    import numpy as np

    if row["task"] == "caption" and row["new_tokens"] != NEW_TOKENS:
        raise SystemExit(f"a caption generated {row['new_tokens']} tokens, not {NEW_TOKENS}: the configurations would time different work")
    runs = row["runs_s"]
    return {**row, "p50_s": float(np.percentile(runs, 50)), "p95_s": float(np.percentile(runs, 95))}


# -- report ------------------------------------------------------------------------------------------------


def plot(results: list[dict], out: Path) -> str | None:
    """p50 latency and peak RSS per task, one bar per configuration; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return None
    labels = [f"{r} {p}" for r, p in CONFIGS]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(labels)
    for ax, key, scale, unit in ((axes[0], "p50_s", 1e3, "p50 latency (ms)"), (axes[1], "peak_rss_mib", 1, "peak RSS (MiB)")):
        for i, label in enumerate(labels):
            values = [next((r[key] * scale for r in results if r["task"] == t and r["config"] == label), 0) for t in TASKS]
            ax.bar(np.arange(len(TASKS)) + i * width, values, width, label=label)
        ax.set_xticks(np.arange(len(TASKS)) + 0.4 - width / 2, TASKS)
        ax.set_ylabel(unit)
        ax.set_yscale("log")
    axes[0].legend()
    fig.suptitle("lamp SDK (ExecuTorch) vs Python package (ONNX Runtime), same model, same machine")
    fig.tight_layout()
    path = out.with_suffix(".png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def table(report: dict) -> str:
    lines = [f"{report['machine']['cpu']}, {report['threads']} threads; model {report['model']}",
             f"{'task':8s} {'config':12s} {'p50 ms':>9s} {'p95 ms':>9s} {'peak RSS MiB':>13s} {'open s':>7s}"]  # fmt: skip
    for r in report["results"]:
        lines.append(f"{r['task']:8s} {r['config']:12s} {r['p50_s'] * 1e3:9.1f} {r['p95_s'] * 1e3:9.1f} {r['peak_rss_mib']:13.1f} {r['open_s']:7.2f}")
    for task, ratio in report["sdk_int8_vs_python_int8"].items():
        lines.append(f"{task}: SDK int8 is {ratio['speedup']:.2f}x the Python int8 speed, with {ratio['rss_ratio']:.2f}x its peak RSS")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="a checkpoint directory (default: the embedded model)")
    source.add_argument("--preset", help="a preset with random weights instead, e.g. xvlm-base-16m-384 (INT8 forced)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--build", type=Path, default=REPO / "build" / "sdk-bench")
    parser.add_argument("--out", type=Path, default=Path("bench_sdk"), help="OUT.json and OUT.png")
    parser.add_argument("--work", type=Path, help="where the model copy and its exports live (default: a temporary directory)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    from xvlm_edge.checkpoint import load_directory
    from xvlm_edge.cpu import cpu_flags, cpu_name

    program = build_sdk(args.build)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        model, described = prepare_model(args, work)
        exports = export_all(model, forced=args.preset is not None, threads=args.threads)
        checkpoint = load_directory(model)
        prompt_tokens = len(checkpoint.tokenizer.caption_prompt_ids(checkpoint.config.tasks.caption_prompt))
        del checkpoint
        for task in TASKS:
            for runner, precision in CONFIGS:
                log(f"timing {task} on {runner} {precision} ...")
                if runner == "sdk":
                    row = time_sdk(program, exports[runner, precision]["directory"], task, args, prompt_tokens)
                else:
                    row = time_python(model, precision, task, args)
                results.append(summarise(row) | {"config": f"{runner} {precision}"})
        export_record = {f"{r} {p}": {k: str(v) if k == "directory" else v for k, v in e.items()} for (r, p), e in exports.items()}
    ratios = {}
    for task in TASKS:
        sdk, python = ({r["config"]: r for r in results if r["task"] == task}[c] for c in ("sdk int8", "python int8"))
        ratios[task] = {"speedup": python["p50_s"] / sdk["p50_s"], "rss_ratio": sdk["peak_rss_mib"] / python["peak_rss_mib"]}
    report = {
        "question": "is the lamp SDK at least as fast as the Python package, in at most half its memory?",
        "machine": {"cpu": cpu_name(), "cpu_flags": list(cpu_flags()), "cores": os.cpu_count(), "platform": platform.platform()},
        "threads": args.threads,
        "model": described,
        "image": IMAGE.name,
        "timed_region": "decode the image file, then the task: check 1 statement, ground 1 phrase, caption beam 3 with exactly 16 new tokens",
        "exports": export_record,
        "sizes": {"sdk_libraries": sdk_library_bytes(program), "python_packages": python_package_bytes()},
        "results": results,
        "sdk_int8_vs_python_int8": ratios,
        "json": str(args.out.with_suffix(".json")),
    }
    report["png"] = plot(results, args.out)
    Path(report["json"]).write_text(json.dumps(report, indent=2))
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
