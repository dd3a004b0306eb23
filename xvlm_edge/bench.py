"""Which backend and precision is fastest for each task on this machine? torch fp32 vs ONNX Runtime fp32/INT8.

Usage: xvlm-edge bench --preset xvlm-base-16m-384 --batch 1 4 --out bench_base
       (`--model DIR` times a real checkpoint directory instead of random weights;
       `python benchmarks/bench_backends.py` is the same command).

A preset with random weights (heads itc/itm/bbox/caption) is exported to ONNX Runtime fp32 and INT8, every
graph INT8 (`force=True`: random weights cannot pass a gate; the gate's metrics on `GATE_IMAGES` images are
recorded). With `--model DIR`, an export of DIR that exists and matches its weights is timed as it is (read
only); a missing one is made in a temporary directory with the same plan search users get. The benchmark
never writes into DIR. Every configuration runs one warm-up, then `repeats` timed runs, in rounds that time
each backend once (`_time_interleaved`); the timed region is written into the JSON (`timed_region`) for each task:
- caption: `Model.caption(arrays, num_beams=3)` with min = max length = prompt + 16, so every caption has
  exactly 16 new tokens: preprocessing of HWC uint8 arrays, vision, cross K/V, beam search, detokenising.
- ground: preprocessing + vision + text + fusion(+bbox head) + box mapping for B images, one phrase each.
- match: the same with the ITM head. vision: the vision graph alone on ready pixels (B, 3, R, R).
Peak memory is the process's peak RSS sampled every 2 ms during one extra untimed call, minus the RSS before it.
The vision encoder's FLOPs are counted with torch's FlopCounterMode (2 FLOPs per multiply-add) and reported
as GFLOP/s. The JSON records the CPU's name and ISA flags (`cpu.cpu_flags`): compare figures of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xvlm_edge.errors import ForcedExportWarning

BENCH_HEADS = ("itc", "itm", "bbox", "caption")
TIMED_BACKENDS = (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"))
TASKS = ("caption", "ground", "match", "vision")
#: Images of the gate run recorded with a forced benchmark export (random weights fail it; it is not a plan).
GATE_IMAGES = 8
NEW_TOKENS = 16
BEAMS = 3

TIMED_REGION = {
    "caption": f"Model.caption on B HWC uint8 arrays: preprocess, vision, caption cross K/V, beam search ({BEAMS} beams, "
    f"exactly {NEW_TOKENS} new tokens), detokenise",
    "ground": "preprocess B images, vision, text (1 phrase per image), fusion + bbox head, box mapping",
    "match": "preprocess B images, vision, text (1 text per image), fusion + ITM head, softmax",
    "vision": "vision graph alone on ready pixels (B, 3, R, R)",
}


@dataclass
class BenchConfig:
    """What to time; `__post_init__` refuses what cannot be timed, naming it."""

    model: Path | None = None
    preset: str = "tiny"
    batch: list[int] = field(default_factory=lambda: [1, 4])
    repeats: int = 5
    threads: int | None = None
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    out: Path = Path("bench_backends")

    def __post_init__(self) -> None:
        from xvlm_edge.errors import InputError

        if not self.batch or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batch):
            raise InputError(f"batch sizes must be positive integers, got {self.batch}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise InputError(f"repeats must be a positive integer, got {self.repeats!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1):
            raise InputError(f"threads must be a positive integer, got {self.threads!r}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise InputError(f"unknown tasks {unknown or self.tasks}; choose from {list(TASKS)}")
        if self.model is not None and not Path(self.model).is_dir():
            raise InputError(f"--model {self.model} is not a checkpoint directory", hint="convert first: xvlm-edge convert CKPT DIR")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchConfig:
        """The `xvlm-edge bench` options (`--tasks` absent: every task)."""
        tasks = list(TASKS) if args.tasks is None else list(args.tasks)
        return cls(args.model, args.preset, list(args.batch), args.repeats, args.threads, tasks, args.out)


class PeakRSS:
    """Peak resident set size (bytes) sampled every 2 ms while the context is open."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _prepare(config: BenchConfig, work: Path) -> tuple[dict[str, Path], Path, dict]:
    """({precision: the model directory its export is loaded from}, the checkpoint's directory, the exports'
    summaries).

    A preset is saved into `work`. A user's directory is only read: an export of it that matches its weights
    is timed as it is; otherwise the export is made in `work`, beside links to the user's files, by the same
    plan search users get."""
    from xvlm_edge.checkpoint import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE, Checkpoint, save
    from xvlm_edge.config import get_preset
    from xvlm_edge.errors import XVLMEdgeError
    from xvlm_edge.export import export_model
    from xvlm_edge.export.quantize import synthetic_images
    from xvlm_edge.manifest import ExportManifest, export_dir
    from xvlm_edge.models.xvlm import XVLM
    from xvlm_edge.tokenizer import Tokenizer

    shadow = work / "model"
    if config.model is None:
        torch.manual_seed(0)
        preset = get_preset(config.preset, BENCH_HEADS)
        save(Checkpoint(XVLM(preset).eval(), Tokenizer.default(), preset), shadow)
        source = shadow
    else:
        source = Path(config.model)
        shadow.mkdir()
        for name in (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE):
            (shadow / name).symlink_to((source / name).resolve())
    dirs, exports = {}, {}
    for precision in ("fp32", "int8"):
        existing = export_dir(source, "onnxruntime", precision)
        try:
            manifest = ExportManifest.read(existing)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ForcedExportWarning)
                manifest.check_weights(source, existing)
            dirs[precision], seconds = source, None
        except XVLMEdgeError:
            start = time.perf_counter()
            forced = config.model is None  # random weights: every graph INT8, whatever the gate says
            manifest = export_model(
                shadow, precision, force=forced and precision == "int8", threads=config.threads, progress=True,
                eval_images=synthetic_images(GATE_IMAGES, seed=1) if forced and precision == "int8" else None,
            )  # fmt: skip
            dirs[precision], seconds = shadow, time.perf_counter() - start
        exports[precision] = {
            "export": str(export_dir(dirs[precision], "onnxruntime", precision)),
            "seconds": seconds,
            "accuracy": manifest.accuracy,
            "plan": {g: e.quantization for g, e in manifest.graphs.items()},
            "bytes": sum(g.bytes for g in manifest.graphs.values()),
            "parity_fp32_vs_torch": {k: v["max_abs"] for k, v in manifest.parity.get("fp32_vs_torch", {}).items()},
        }
    return dirs, source, exports


def _vision_flops(model, res: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.encode_image(torch.zeros(1, 3, res, res))
    return counter.get_total_flops()


def _task_call(model, task: str, arrays: list[np.ndarray], pixels: torch.Tensor):
    from xvlm_edge.tasks.ground import ground_phrases
    from xvlm_edge.tasks.match import match_probabilities
    from xvlm_edge.text import pre_caption

    prompt = len(model.tokenizer.caption_prompt_ids(model.config.tasks.caption_prompt))
    index = torch.arange(len(arrays))
    if task == "caption":
        length = prompt + NEW_TOKENS
        return lambda: model.caption(arrays, num_beams=BEAMS, max_length=length, min_length=length)
    if task == "vision":
        return lambda: model.runtime.vision(pixels)
    phrases = [pre_caption("the red square in the corner")] * len(arrays)

    def ground():
        encoded = model._encode_images(arrays)
        ids, atts = model._encode_texts(phrases)
        return ground_phrases(model.runtime, encoded.image_embeds, ids, atts, index, [(a.shape[1], a.shape[0]) for a in arrays], phrases)

    def match():
        encoded = model._encode_images(arrays)
        ids, atts = model._encode_texts(phrases)
        return match_probabilities(model.runtime, encoded.image_embeds, ids, atts, index)

    return {"ground": ground, "match": match}[task]


def run(config: BenchConfig) -> dict:
    """Time every task on torch fp32, ONNX Runtime fp32 and INT8; write `OUT.json` (and `OUT.png`)."""
    import xvlm_edge
    from xvlm_edge.cpu import cpu_flags, cpu_name
    from xvlm_edge.export.quantize import synthetic_images, to_pixels

    threads = config.threads or os.cpu_count()
    torch.set_num_threads(threads)
    results = []
    with tempfile.TemporaryDirectory() as work:
        dirs, source, exports = _prepare(config, Path(work))
        first = xvlm_edge.load(source, backend="torch", threads=threads)
        res = first.config.vision.image_res
        flops = _vision_flops(first.model, res)
        weights_bytes = (source / "model.safetensors").stat().st_size
        del first
        models = {}  # every backend at once: the rounds below interleave them
        for backend, precision in TIMED_BACKENDS:
            with warnings.catch_warnings():  # a forced benchmark export says so in the JSON
                warnings.simplefilter("ignore", ForcedExportWarning)
                where = source if backend == "torch" else dirs[precision]
                models[backend, precision] = xvlm_edge.load(where, backend=backend, precision=precision, threads=threads)
        for batch in config.batch:
            arrays = synthetic_images(batch, size=res + 32, seed=batch)
            pixels = torch.from_numpy(to_pixels(arrays, res))
            for task in config.tasks:
                rows = _time_interleaved(models, task, arrays, pixels, config.repeats)
                for (backend, precision), row in rows.items():
                    size = weights_bytes if backend == "torch" else exports[precision]["bytes"]
                    row |= {"backend": backend, "precision": precision, "batch": batch, "threads": threads,
                            "torch_threads": int(models[backend, precision].info["torch_threads"]),
                            "artefact_mib": size / 2**20, "timed_region": TIMED_REGION[task]}  # fmt: skip
                    if task == "vision":
                        row["gflop"] = flops * batch / 1e9
                        row["gflop_per_s"] = row["gflop"] / row["p50_s"]
                    results.append(row)
        del models
    report = {
        "question": "which backend/precision is fastest per task on this machine?",
        "machine": {"cpu": cpu_name(), "cpu_flags": list(cpu_flags()), "cores": os.cpu_count(), "threads": threads,
                    "platform": platform.platform()},  # fmt: skip
        "versions": _versions(),
        "model": str(config.model) if config.model else f"{config.preset} (random weights), heads {BENCH_HEADS}",
        "exports": exports,
        "results": results,
        "speedup_vs_torch_fp32": _speedups(results),
        "png": _plot(results, config.out),
        "json": f"{config.out}.json",
    }
    Path(report["json"]).write_text(json.dumps(report, indent=2))
    return report


def _time_interleaved(models: dict, task: str, arrays: list[np.ndarray], pixels: torch.Tensor, repeats: int) -> dict:
    """{(backend, precision): row} of one task: a warm-up per backend (session creation, first-call
    allocations), one call per backend under the RSS sampler, then `repeats` rounds that time every backend
    once each, in turn. Interleaved rounds put a slow spell of a shared machine on every backend alike
    (one-backend-at-a-time runs moved the INT8 caption ratio between 3.75x and 4.10x); the sampler wakes
    every 2 ms and preempts a spinning ONNX Runtime worker, so it stays out of the timed calls. Before each
    call torch gets the thread count its `load` set (`info["torch_threads"]`): every backend is timed in
    the state it runs in."""
    calls = {key: _task_call(model, task, arrays, pixels) for key, model in models.items()}
    rows, outs, times = {}, {}, {key: [] for key in models}
    for key, call in calls.items():
        torch.set_num_threads(int(models[key].info["torch_threads"]))
        call()
        with PeakRSS() as rss:
            outs[key] = call()
        rows[key] = {"peak_rss_delta_mib": (rss.peak - rss.base) / 2**20, "peak_rss_mib": rss.peak / 2**20}
    for _ in range(repeats):
        for key, call in calls.items():
            torch.set_num_threads(int(models[key].info["torch_threads"]))
            start = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - start)
    for key, row in rows.items():
        t = times[key]
        p50 = float(np.percentile(t, 50))
        row |= {
            "task": task, "p50_s": p50, "p20_s": float(np.percentile(t, 20)), "p80_s": float(np.percentile(t, 80)),
            "p95_s": float(np.percentile(t, 95)), "runs": len(t), "throughput_per_s": len(arrays) / p50,
        }  # fmt: skip
        if task == "caption":
            model = models[key]
            prompt = len(model.tokenizer.caption_prompt_ids(model.config.tasks.caption_prompt))
            row["new_tokens"] = sum(len(c.token_ids) - prompt for c in outs[key])  # generated ids per run
            row["tokens_per_s"] = row["new_tokens"] / p50
    return rows


def _speedups(results: list[dict]) -> list[dict]:
    base = {(r["task"], r["batch"]): r["p50_s"] for r in results if r["backend"] == "torch"}
    return [
        {"task": r["task"], "batch": r["batch"], "backend": f"{r['backend']} {r['precision']}", "speedup": base[(r["task"], r["batch"])] / r["p50_s"]}
        for r in results
        if r["backend"] != "torch" and (r["task"], r["batch"]) in base
    ]


def _versions() -> dict:
    from xvlm_edge.runtime.onnxruntime_backend import require_onnxruntime

    onnxruntime = require_onnxruntime()
    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "python": platform.python_version()}


def _plot(results: list[dict], out: Path) -> str | None:
    """Bar chart of p50 per task and batch, one bar per backend; None when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    keys = sorted({(r["task"], r["batch"]) for r in results})
    labels = sorted({f"{r['backend']} {r['precision']}" for r in results})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys)), 4))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        vals = [next((r["p50_s"] * 1000 for r in results if (r["task"], r["batch"]) == k and f"{r['backend']} {r['precision']}" == label), 0) for k in keys]
        ax.bar(np.arange(len(keys)) + i * width, vals, width, label=label)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, [f"{t}\nB={b}" for t, b in keys])
    ax.set_ylabel("p50 latency (ms)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    path = Path(f"{out}.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def format_table(report: dict) -> str:
    lines = [f"{report['machine']['cpu']}, {report['machine']['threads']} threads; model {report['model']}",
             f"{'task':8s} {'B':>2s} {'backend':18s} {'p50 ms':>9s} {'p95 ms':>9s} {'/s':>7s} {'tok/s':>7s} "
             f"{'GFLOP/s':>8s} {'RSS+MiB':>8s} {'MiB':>7s}"]  # fmt: skip
    for r in report["results"]:
        lines.append(
            f"{r['task']:8s} {r['batch']:2d} {r['backend'] + ' ' + r['precision']:18s} {r['p50_s'] * 1e3:9.1f} {r['p95_s'] * 1e3:9.1f} "
            f"{r['throughput_per_s']:7.2f} {r.get('tokens_per_s', float('nan')):7.1f} {r.get('gflop_per_s', float('nan')):8.1f} "
            f"{r['peak_rss_delta_mib']:8.1f} {r['artefact_mib']:7.1f}"
        )
    speedups = (f"{s['task']} B={s['batch']} {s['backend']} {s['speedup']:.2f}x" for s in report["speedup_vs_torch_fp32"])
    lines.append("speedup vs torch fp32 (p50): " + "; ".join(speedups))
    return "\n".join(lines)
