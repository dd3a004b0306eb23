"""Which backend and precision is fastest for each task on this machine? torch fp32 vs ONNX Runtime fp32/INT8.

Usage: python benchmarks/bench_backends.py --preset xvlm-base-16m-384 --batch 1 4 --out bench_base
       (or `xvlm-edge bench ...`; `--model DIR` times a real checkpoint directory instead of random weights).

One model with the itc/itm/bbox/caption heads (random weights for a preset) is exported to ONNX Runtime fp32
and INT8 (INT8 written with `force=True` when random weights fail the accuracy gate; the gate's metrics are
recorded). Every configuration runs one warm-up, then `repeats` timed runs; the timed region is written into
the JSON (`timed_region`) for each task:
- caption: `Model.caption(arrays, num_beams=3)` with min = max length = prompt + 16, so every caption has
  exactly 16 new tokens: preprocessing of HWC uint8 arrays, vision, cross K/V, beam search, detokenising.
- ground: preprocessing + vision + text + fusion(+bbox head) + box mapping for B images, one phrase each.
- match: the same with the ITM head. vision: the vision graph alone on ready pixels (B, 3, R, R).
Peak memory is the process's peak RSS sampled every 2 ms during the timed runs, minus the RSS before them.
The vision encoder's FLOPs are counted with torch's FlopCounterMode (2 FLOPs per multiply-add) and reported
as GFLOP/s against the AVX2 FMA peak of the cores used (PEAK_GFLOPS_PER_CORE, 2.45 GHz x 2 FMA units x
8 fp32 lanes x 2 = 78.4 GFLOP/s per core).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

PEAK_GFLOPS_PER_CORE = 2.45 * 2 * 8 * 2
BENCH_HEADS = ("itc", "itm", "bbox", "caption")
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
    model: Path | None = None
    preset: str = "tiny"
    batch: list[int] = field(default_factory=lambda: [1, 4])
    repeats: int = 5
    threads: int | None = None
    tasks: list[str] = field(default_factory=lambda: ["caption", "ground", "match", "vision"])
    out: Path = Path("bench_backends")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchConfig:
        return cls(args.model, args.preset, list(args.batch), args.repeats, args.threads, list(args.tasks), args.out)


class PeakRSS:
    """Peak resident set size (bytes) sampled every 2 ms while the context is open."""

    def __enter__(self) -> PeakRSS:  # noqa: PYI034 (a plain class, no subclasses)
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


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _prepare(config: BenchConfig, work: Path) -> tuple[Path, dict]:
    """A checkpoint directory with fp32 and INT8 ONNX Runtime exports; the export manifests' summaries."""
    from xvlm_edge.checkpoint import Checkpoint, save
    from xvlm_edge.config import get_preset
    from xvlm_edge.export import export_model
    from xvlm_edge.models.xvlm import XVLM
    from xvlm_edge.tokenizer import Tokenizer

    if config.model is not None:
        model_dir = config.model
    else:
        torch.manual_seed(0)
        preset = get_preset(config.preset, BENCH_HEADS)
        model_dir = work / "model"
        save(Checkpoint(XVLM(preset).eval(), Tokenizer.default(), preset), model_dir)
    exports = {}
    for precision in ("fp32", "int8"):
        start = time.perf_counter()
        manifest = export_model(model_dir, precision, force=True, threads=config.threads)
        exports[precision] = {
            "seconds": time.perf_counter() - start,
            "accuracy": manifest["accuracy"],
            "bytes": sum(g["bytes"] for g in manifest["graphs"].values()),
            "parity_fp32_vs_torch": {k: v["max_abs"] for k, v in manifest["parity_fp32_vs_torch"].items()},
        }
    return model_dir, exports


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
    import xvlm_edge
    from xvlm_edge.export.quantize import synthetic_images, to_pixels
    threads = config.threads or os.cpu_count()
    torch.set_num_threads(threads)
    results = []
    with tempfile.TemporaryDirectory() as work:
        model_dir, exports = _prepare(config, Path(work))
        backends = [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
        first = xvlm_edge.load(model_dir, backend="torch")
        res = first.config.vision.image_res
        flops = _vision_flops(first.model, res)
        weights_bytes = (model_dir / "model.safetensors").stat().st_size
        del first
        for backend, precision in backends:
            model = xvlm_edge.load(model_dir, backend=backend, precision=precision, threads=config.threads)
            size = weights_bytes if backend == "torch" else exports[precision]["bytes"]
            for batch in config.batch:
                arrays = synthetic_images(batch, size=res + 32, seed=batch)
                pixels = torch.from_numpy(to_pixels(arrays, res))
                for task in config.tasks:
                    call = _task_call(model, task, arrays, pixels)
                    out = call()  # warm-up (session creation, first-call allocations)
                    times = []
                    with PeakRSS() as rss:
                        for _ in range(config.repeats):
                            start = time.perf_counter()
                            out = call()
                            times.append(time.perf_counter() - start)
                    p50 = float(np.percentile(times, 50))
                    row = {
                        "task": task, "backend": backend, "precision": precision, "batch": batch, "threads": threads,
                        "p50_s": p50, "p95_s": float(np.percentile(times, 95)), "runs": len(times),
                        "throughput_per_s": batch / p50, "peak_rss_delta_mib": (rss.peak - rss.base) / 2**20,
                        "peak_rss_mib": rss.peak / 2**20, "artefact_mib": size / 2**20, "timed_region": TIMED_REGION[task],
                    }  # fmt: skip
                    if task == "caption":
                        prompt = len(model.tokenizer.caption_prompt_ids(model.config.tasks.caption_prompt))
                        tokens = sum(len(c.token_ids) - prompt for c in out)  # generated ids per timed run
                        row["new_tokens"] = tokens
                        row["tokens_per_s"] = tokens / p50
                    if task == "vision":
                        row["gflop"] = flops * batch / 1e9
                        row["gflop_per_s"] = flops * batch / 1e9 / p50
                        row["peak_gflop_per_s"] = PEAK_GFLOPS_PER_CORE * threads
                    results.append(row)
            del model
    speedups = _speedups(results)
    report = {
        "question": "which backend/precision is fastest per task on this machine?",
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "threads": threads, "platform": platform.platform()},
        "versions": _versions(),
        "model": str(config.model) if config.model else f"{config.preset} (random weights), heads {BENCH_HEADS}",
        "exports": exports,
        "results": results,
        "speedup_vs_torch_fp32": speedups,
        "png": _plot(results, config.out),
        "json": f"{config.out}.json",
    }
    Path(report["json"]).write_text(json.dumps(report, indent=2))
    return report


def _speedups(results: list[dict]) -> list[dict]:
    base = {(r["task"], r["batch"]): r["p50_s"] for r in results if r["backend"] == "torch"}
    return [
        {"task": r["task"], "batch": r["batch"], "backend": f"{r['backend']} {r['precision']}", "speedup": base[(r["task"], r["batch"])] / r["p50_s"]}
        for r in results
        if r["backend"] != "torch" and (r["task"], r["batch"]) in base
    ]


def _versions() -> dict:
    import onnxruntime

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
             f"{'task':8s} {'B':>2s} {'backend':18s} {'p50 ms':>9s} {'p95 ms':>9s} {'/s':>7s} {'tok/s':>7s} {'GFLOP/s':>8s} {'RSS+MiB':>8s} {'MiB':>7s}"]  # fmt: skip
    for r in report["results"]:
        lines.append(
            f"{r['task']:8s} {r['batch']:2d} {r['backend'] + ' ' + r['precision']:18s} {r['p50_s'] * 1e3:9.1f} {r['p95_s'] * 1e3:9.1f} "
            f"{r['throughput_per_s']:7.2f} {r.get('tokens_per_s', float('nan')):7.1f} {r.get('gflop_per_s', float('nan')):8.1f} "
            f"{r['peak_rss_delta_mib']:8.1f} {r['artefact_mib']:7.1f}"
        )
    lines.append("speedup vs torch fp32 (p50): " + "; ".join(f"{s['task']} B={s['batch']} {s['backend']} {s['speedup']:.2f}x" for s in report["speedup_vs_torch_fp32"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--tasks", nargs="+", default=["caption", "ground", "match", "vision"])
    parser.add_argument("--out", type=Path, default=Path("bench_backends"))
    args = parser.parse_args(argv)
    report = run(BenchConfig.from_args(args))
    print(format_table(report))
    print(f"wrote {args.out}.json" + (f" and {report['png']}" if report["png"] else ""))


if __name__ == "__main__":
    main()
