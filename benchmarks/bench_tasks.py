"""How much do KV-cached decoding and shared image K/V save on this machine, task by task?

At the `xvlm-base-16m-384` preset (Swin-B@384 + BERT-base, random weights, fp32), each task runs our path
and the naive path in the same benchmark run, and the outputs are compared:

* caption: the decode loop after the vision encoder, beam 3, exactly 16 new tokens (min_length = max_length
  = 20 so that random weights cannot stop early). Ours: self-attention KV cache, image cross K/V projected
  once per image. Naive: the whole prefix re-run every step, image K/V projected every step for every beam
  (the official code without a cache; the official code with its cache still re-projects the image K/V).
* ground: 32 phrases on one image. Ours: one `Model.ground` call (image encoded once, phrases batched,
  image K/V once). Naive: 32 `Model.ground` calls of one phrase, each a full forward.
* match: 1 image x 8 texts, end to end (vision encoder included). Naive: the official ITM path, image
  embeddings repeated per text, K/V projected per copy, texts padded to max_tokens (40).
* retrieve: the ITM re-rank of 128 candidate texts for 1 image (text and image encoders outside the timed
  region). Naive: `Retrieval.py::evaluation`, image embeddings repeated 128 times, K/V projected per copy,
  texts padded to 40. Ours: one K/V projection per image, texts cut to the longest candidate.
* stream: one cached caption decode step of 3 beams after 10 tokens (the torch runtime's CPU hot loop).
  Ours: the runtime's decoder, whose linear layers are `StreamingLinear` ((W @ x^T)^T for few rows). Naive:
  the same step graph on the plain module (`F.linear`).

Each task runs in its own process; its two paths alternate run by run (so that load from other processes
hits both alike) after one warm-up each. Latency: p50/p95 over the runs. Peak RSS per path: the kernel's
high-water mark (`VmHWM`) reset before each run (`/proc/self/clear_refs` = 5), so a path's peak is its own
and includes the model weights. Prints a table and writes JSON (machine, threads, load, what each timed
region contains). Run: `python benchmarks/bench_tasks.py [--out bench_tasks.json] [--threads N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESET = "xvlm-base-16m-384"
CASES = {
    "caption": "decode loop after the vision encoder: beam 3, 16 new tokens (prompt 4 + 16 = max_length 20)",
    "ground": "32 phrases on one image, end to end (preprocess, vision, text, fusion, bbox head)",
    "match": "1 image x 8 texts, end to end (preprocess, vision, text, fusion, ITM head)",
    "retrieve": "ITM re-rank of 128 candidate texts for 1 image (fusion + ITM head; encoders outside)",
    "stream": "one cached caption decode step, 3 beams after 10 tokens (StreamingLinear vs F.linear)",
}
HEADS = {"caption": ("caption",), "ground": ("bbox",), "match": ("itc", "itm"), "retrieve": ("itc", "itm"), "stream": ("caption",)}
#: Timed runs per path (the two paths alternate); 32 one-phrase ground calls take ~40 s, hence 2.
REPEATS = {"caption": 3, "ground": 2, "match": 5, "retrieve": 5, "stream": 20}

_SUBJECTS = ["a man", "two dogs", "a woman", "the skateboarder", "a small child", "a red bus", "an old cat", "three people"]
_VERBS = ["riding", "sitting on", "jumping over", "standing next to", "walking toward", "looking at", "holding"]
_OBJECTS = ["a wooden bench", "the street", "a blue ball", "an umbrella in the rain", "a table covered with food",
            "a bike near the park", "the left side of a large building", "a kite over the beach on a windy day"]  # fmt: skip


def texts(count: int) -> list[str]:
    """Deterministic caption-like texts of 4 to 16 words (COCO captions average ~10 words)."""
    out = []
    for i in range(count):
        out.append(f"{_SUBJECTS[i % 8]} {_VERBS[(i // 8) % 7]} {_OBJECTS[(i * 3 + i // 7) % 8]}")
    return out


def image(seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)


# -- worker: one (case, path) in this process -----------------------------------------------------------------


def worker(case: str, out: Path, threads: int) -> None:
    import torch

    from xvlm_edge.api import Model
    from xvlm_edge.checkpoint import Checkpoint
    from xvlm_edge.config import get_preset
    from xvlm_edge.models.xvlm import XVLM
    from xvlm_edge.runtime import create_runtime
    from xvlm_edge.tasks.caption import generate_captions
    from xvlm_edge.tasks.retrieve import itm_scores
    from xvlm_edge.tokenizer import Tokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = get_preset(PRESET, HEADS[case])
    model = XVLM(config).eval()
    tokenizer = Tokenizer.default()
    api = Model(Checkpoint(model, tokenizer, config), create_runtime(model, backend="torch", device="cpu"))
    runtime = api.runtime
    rss_model = _rss_mb()
    img = image()
    extra: dict = {"ours": {}, "naive": {}}
    paths, warmups = {}, {}

    if case == "caption":
        pixels_embeds = api._encode_images([img]).image_embeds
        start = time.perf_counter()
        api._encode_images([img])
        extra["vision_encoder_s"] = time.perf_counter() - start
        prompt = config.tasks.caption_prompt

        def decode(cached: bool, max_length: int = 20) -> torch.Tensor:
            captions = generate_captions(
                runtime, tokenizer, pixels_embeds, prompt=prompt, max_length=max_length, min_length=max_length,
                num_beams=3, cached=cached,
            )  # fmt: skip
            return torch.tensor(captions[0].token_ids)

        for path, cached in (("ours", True), ("naive", False)):
            paths[path] = lambda cached=cached: decode(cached)
            warmups[path] = lambda cached=cached: decode(cached, 7)

    elif case == "ground":
        phrases = texts(32)
        paths["ours"] = lambda: torch.tensor([b.cxcywh for b in api.ground(img, phrases)])
        paths["naive"] = lambda: torch.tensor([api.ground(img, p).cxcywh for p in phrases])
        warmups["ours"] = warmups["naive"] = lambda: api.ground(img, phrases[0])

    elif case == "match":
        candidates = texts(8)
        paths["ours"] = lambda: torch.tensor(api.match(img, candidates))

        def match_official() -> torch.Tensor:
            embeds = api._encode_images([img]).image_embeds
            coded = tokenizer.encode(candidates, max_length=config.max_tokens, padding="max_length")
            text_embeds = runtime.text(coded.input_ids, coded.attention_mask).text_embeds
            copies = embeds.expand(len(candidates), -1, -1).contiguous()  # the image repeated per text
            logits = runtime.fusion(text_embeds, coded.attention_mask, copies, torch.arange(len(candidates))).itm_logits
            return logits.softmax(-1)[:, 1]

        paths["naive"] = match_official
        warmups = paths

    elif case == "retrieve":
        candidates = texts(128)
        embeds = api._encode_images([img]).image_embeds
        rows = torch.arange(len(candidates))
        longest = tokenizer.encode(candidates, max_length=config.max_tokens)
        padded = tokenizer.encode(candidates, max_length=config.max_tokens, padding="max_length")  # as Retrieval.py
        ours_embeds = runtime.text(longest.input_ids, longest.attention_mask).text_embeds
        naive_embeds = runtime.text(padded.input_ids, padded.attention_mask).text_embeds
        extra["ours"]["text_tokens"] = int(longest.attention_mask.sum(1).max())
        extra["naive"]["text_tokens"] = padded.input_ids.shape[1]
        paths["ours"] = lambda: itm_scores(runtime, embeds, ours_embeds, longest.attention_mask, torch.zeros_like(rows), rows, chunk=128)

        def rerank_official() -> torch.Tensor:
            copies = embeds.expand(len(candidates), -1, -1).contiguous()  # Retrieval.py: image_embeds.repeat(k)
            return runtime.fusion(naive_embeds, padded.attention_mask, copies, rows).itm_logits[:, 1]

        paths["naive"] = rerank_official
        warmups = paths

    elif case == "stream":
        from xvlm_edge.graphs import build_graphs

        embeds = api._encode_images([img]).image_embeds
        state = runtime.decoder("caption", embeds, torch.ones(1, embeds.shape[1], dtype=torch.long))
        state.start(torch.tensor([[101, 1037, 3861, 1997]]), torch.arange(1))
        state.reorder(torch.zeros(3, dtype=torch.long))
        for token in range(6):  # 10 tokens in the cache
            state.feed(torch.full((3, 1), 2000 + token))
        step_inputs = (torch.full((3, 1), 2010), torch.ones(3, 11, dtype=torch.long), *state.cache,
                       state.cross.k, state.cross.v, state.cross_atts[state.index])  # fmt: skip
        plain = build_graphs(model)["caption_step"]  # the caller's module: nn.Linear, F.linear
        paths["ours"] = lambda: runtime.run("caption_step", *step_inputs)[0]
        paths["naive"] = lambda: plain(*step_inputs)[0]
        warmups = paths
    else:
        raise SystemExit(f"unknown case {case}")

    for path in ("ours", "naive"):
        warmups[path]()
    times = {"ours": [], "naive": []}
    peaks = {"ours": 0.0, "naive": 0.0}
    results = {}
    for _ in range(REPEATS[case]):
        for path in ("ours", "naive"):
            _reset_peak_rss()
            start = time.perf_counter()
            with torch.no_grad():
                results[path] = paths[path]()
            times[path].append(time.perf_counter() - start)
            peaks[path] = max(peaks[path], _rss_mb())
    torch.save({"times": times, "results": results, "rss_model_mb": rss_model, "peak_rss_mb": peaks, "extra": extra}, out)


def _reset_peak_rss() -> None:
    """Reset the kernel's RSS high-water mark of this process (Linux >= 4.0), so the next peak is a run's own."""
    Path("/proc/self/clear_refs").write_text("5")


def _rss_mb() -> float:
    """Peak RSS (VmHWM) since the last reset, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- driver ---------------------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _machine(threads: int) -> dict:
    import torch

    from xvlm_edge.cpu import cpu_flags, cpu_name

    return {"cpu": cpu_name(), "cpu_flags": list(cpu_flags()), "cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "torch": torch.__version__,
            "precision": "fp32", "device": "cpu", "preset": PRESET, "weights": "random (torch.manual_seed(0))"}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_tasks.json"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        case, out = args.worker
        worker(case, Path(out), args.threads)
        return

    import torch

    report = {"machine": _machine(args.threads), "load_average_start": os.getloadavg(), "cases": {}}
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            entry = {"timed_region": CASES[case]}
            out = Path(tmp) / f"{case}.pt"
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--worker", case, str(out)]
            subprocess.run(cmd, check=True, env=env)
            data = torch.load(out, weights_only=True)
            for path in ("ours", "naive"):
                entry[path] = {
                    "p50_s": _percentile(data["times"][path], 0.5),
                    "p95_s": _percentile(data["times"][path], 0.95),
                    "runs": len(data["times"][path]),
                    "times_s": data["times"][path],
                    "peak_rss_mb": data["peak_rss_mb"][path],
                    **data["extra"].get(path, {}),
                }
                print(f"  {case:8s} {path:5s} p50 {entry[path]['p50_s']:.3f} s", file=sys.stderr, flush=True)
            entry["rss_after_model_build_mb"] = data["rss_model_mb"]
            entry.update({k: v for k, v in data["extra"].items() if k not in ("ours", "naive")})
            ours, naive = data["results"]["ours"], data["results"]["naive"]
            if ours.dtype == torch.long:
                entry["identical_ids"] = bool(torch.equal(ours, naive))
            else:
                entry["max_abs_diff"] = float((ours.double() - naive.double()).abs().max())
            entry["speedup_p50"] = entry["naive"]["p50_s"] / entry["ours"]["p50_s"]
            report["cases"][case] = entry
    report["load_average_end"] = os.getloadavg()
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"{PRESET}, random weights, fp32, {args.threads} threads on {report['machine']['cpu']} "
          f"(load average {report['load_average_start'][0]:.1f} at start)")  # fmt: skip
    print(f"{'task':9s} {'path':6s} {'p50 s':>8s} {'p95 s':>8s} {'runs':>4s} {'peak RSS MB':>12s} {'speedup':>8s}  check")
    for case, entry in report["cases"].items():
        check = f"identical ids: {entry['identical_ids']}" if "identical_ids" in entry else f"max |diff| {entry['max_abs_diff']:.2e}"
        for path in ("ours", "naive"):
            e = entry[path]
            speed = f"{entry['speedup_p50']:7.2f}x" if path == "ours" else ""
            note = check if path == "ours" else ""
            print(f"{case:9s} {path:6s} {e['p50_s']:8.3f} {e['p95_s']:8.3f} {e['runs']:4d} {e['peak_rss_mb']:12.0f} {speed:>8s}  {note}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
