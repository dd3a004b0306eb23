"""Which box cross-attention path is fastest on this GPU, and how close does the fused kernel get to the hardware?

One question, four answers, measured in the same run (DESIGN.md section 2, STYLE.md items 9 and 20):

  (a) official  the official X-VLM path in eager PyTorch: gather the image embeddings once per text, build the
                pooled concept token in embedding space, project K/V for every copy, masked softmax attention.
  (b) sdpa      K/V projected once per image, then the pooled token and the per-text K/V gathered into
                (K, H, 1 + N, d) tensors and `F.scaled_dot_product_attention` with a boolean mask.
  (c) reference `xvlm_edge.concepts.box_cross_attention` (PyTorch path): K/V once per image, matmul + softmax.
  (d) kernel    `xvlm_edge.kernels.box_cross_attention`: K/V once per image, pooled token built in the kernel.

Every timed region starts from the image embeddings and includes the K and V `nn.Linear` projections, so the
official path pays for its per-copy projections and the others for their single per-image one. Queries are
inputs (the same for every path). `fwd_bwd` runs forward then backward into the image embeddings, the K/V
weights and the queries.

Shapes (BERT-base fusion layer: D = 768 in H = 12 heads of d = 64; N = 1 + 144 patches of a 384 px Swin):
  region     region pretraining: K = 128 texts over B = 48 images, T = 40, boxes from the official rule
  grounding  32 phrases for 1 image, full-image masks
  rerank     retrieval rerank: 128 texts for 1 image, full-image masks

FLOPs (the useful work, identical for every path, so TFLOP/s compare like time does; S = 1 + N keys):
  projections  P = 2 (K and V) * 2 * (B * N) * D * D            once per image
  attention    A = 4 * K * H * T * S * d                        Q K^T and P V, 2 FLOPs per multiply-add
  fwd = P + A;   fwd_bwd = 3 P + 3.5 A                          (backward: 2 GEMMs per projection; 2.5x the
                                                                 attention, FlashAttention-2 accounting)
Bytes (compulsory HBM traffic: every input read once, every output written once; e = element size):
  fwd     = e * (B*N*D + 2*D*D + 2*D + 2*K*H*T*d) + K*N         image embeddings, K/V weights and biases,
                                                                 queries in, output out, 1-byte box mask
  fwd_bwd = fwd + e * (2*K*H*T*d + B*N*D + 2*D*D + 2*D)         plus dOut in, dq, d(image), dW, db out
Achieved TFLOP/s and GB/s are these counts over the median time, and are compared with the device peak
(dense tensor-core fp16/bf16 FLOP/s and HBM bandwidth) from `PEAKS`.

Run:  python benchmarks/bench_kernels.py --out bench_kernels.json [--png bench_kernels.png]
Without CUDA it says so and exits 0; `--allow-cpu` times paths (a)-(c) at a tiny shape on the CPU instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from xvlm_edge import concepts

#: Dense (no sparsity) tensor-core fp16/bf16 TFLOP/s and HBM GB/s, from NVIDIA's datasheets.
PEAKS = {
    "H100 SXM": {"tflops": 989.4, "gbps": 3350.0},
    "H100 PCIe": {"tflops": 756.5, "gbps": 2000.0},
    "H200": {"tflops": 989.4, "gbps": 4800.0},
    "unknown": {"tflops": None, "gbps": None},
}

PATHS = ("official", "sdpa", "reference", "kernel")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    texts: int  # K query rows (texts, phrases)
    images: int  # B images whose K/V are shared
    text_len: int  # T
    grid: int = 12  # patches per side: N = 1 + grid * grid
    width: int = 768  # D
    heads: int = 12  # H
    full_image: bool = False  # all-ones masks (rerank, grounding) instead of random boxes

    @property
    def patches(self) -> int:
        return 1 + self.grid * self.grid

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


SHAPES = {
    "region": Shape("region", texts=128, images=48, text_len=40),
    "grounding": Shape("grounding", texts=32, images=1, text_len=40, full_image=True),
    "rerank": Shape("rerank", texts=128, images=1, text_len=40, full_image=True),
}
CPU_SHAPE = Shape("tiny-cpu", texts=6, images=2, text_len=8, grid=4, width=64, heads=2)


def device_peak(name: str) -> tuple[str, dict]:
    """Key of `PEAKS` for a `torch.cuda.get_device_name()` string ("NVIDIA H100 80GB HBM3" is the SXM part)."""
    if "H200" in name:
        return "H200", PEAKS["H200"]
    if "H100" in name:
        key = "H100 PCIe" if "PCIe" in name else "H100 SXM"
        return key, PEAKS[key]
    return "unknown", PEAKS["unknown"]


def flops(shape: Shape, mode: str) -> float:
    proj = 2 * 2 * (shape.images * shape.patches) * shape.width * shape.width
    attn = 4 * shape.texts * shape.heads * shape.text_len * (1 + shape.patches) * shape.head_dim
    return proj + attn if mode == "fwd" else 3 * proj + 3.5 * attn


def bytes_moved(shape: Shape, mode: str, elem: int) -> float:
    s = shape
    qo = s.texts * s.heads * s.text_len * s.head_dim
    weights = 2 * s.width * s.width + 2 * s.width
    image = s.images * s.patches * s.width
    fwd = elem * (image + weights + 2 * qo) + s.texts * s.patches
    return fwd if mode == "fwd" else fwd + elem * (2 * qo + image + weights)


def make_inputs(shape: Shape, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    s = shape
    image = torch.randn(s.images, s.patches, s.width, generator=g)
    q = torch.randn(s.texts, s.heads, s.text_len, s.head_dim, generator=g)
    idx = torch.randint(0, s.images, (s.texts,), generator=g)
    if s.full_image:
        mask = torch.ones(s.texts, s.patches, dtype=torch.long)
    else:
        res, patch = 32 * s.grid, 32
        xy = torch.rand(s.texts, 2, generator=g) * res * 0.8
        wh = torch.rand(s.texts, 2, generator=g) * (res - xy)
        mask = concepts.box_to_patch_mask(torch.cat([xy, wh], 1), image_res=res, patch_size=patch)
    key = torch.nn.Linear(s.width, s.width).to(device=device, dtype=dtype)
    value = torch.nn.Linear(s.width, s.width).to(device=device, dtype=dtype)
    return {
        "image": image.to(device=device, dtype=dtype),
        "q": q.to(device=device, dtype=dtype),
        "idx": idx.to(device),
        "mask": mask.to(device),
        "key": key,
        "value": value,
    }


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(R, N, D) -> (R, H, N, d), a view."""
    rows, n, width = x.shape
    return x.view(rows, n, heads, width // heads).transpose(1, 2)


def path_official(inp: dict, shape: Shape) -> torch.Tensor:
    image, q, idx, mask = inp["image"], inp["q"], inp["idx"], inp["mask"]
    x = image[idx]  # (K, N, D): one copy per text
    m = mask.to(x.dtype)  # (K, N)
    pooled = (m[:, :, None] * x).sum(1) / m.sum(1, keepdim=True)  # (K, D) concept embedding
    x = torch.cat([pooled[:, None], x], dim=1)  # (K, 1 + N, D)
    k = _heads(inp["key"](x), shape.heads)  # (K, H, 1 + N, d): projected per copy
    v = _heads(inp["value"](x), shape.heads)
    visible = torch.cat([torch.ones_like(m[:, :1]), m], dim=1)[:, None, None, :]  # (K, 1, 1, 1 + N)
    # -1e4: the official BERT extended-attention-mask constant, finite in fp16 (-1e9 is not).
    scores = q @ k.transpose(-1, -2) / math.sqrt(shape.head_dim) + (1.0 - visible) * -1e4
    return scores.softmax(-1) @ v


def path_sdpa(inp: dict, shape: Shape) -> torch.Tensor:
    image, q, idx, mask = inp["image"], inp["q"], inp["idx"], inp["mask"]
    k = _heads(inp["key"](image), shape.heads)[idx]  # (K, H, N, d): projected once, gathered per text
    v = _heads(inp["value"](image), shape.heads)[idx]
    m = mask.to(q.dtype)[:, None, None, :]  # (K, 1, 1, N)
    count = m.sum(-1, keepdim=True)
    k = torch.cat([(m @ k) / count, k], dim=2)  # (K, H, 1 + N, d)
    v = torch.cat([(m @ v) / count, v], dim=2)
    visible = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1).bool()[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible)


def path_reference(inp: dict, shape: Shape) -> torch.Tensor:
    k = _heads(inp["key"](inp["image"]), shape.heads)  # (B, H, N, d)
    v = _heads(inp["value"](inp["image"]), shape.heads)
    return concepts.box_cross_attention(inp["q"], k, v, inp["idx"], inp["mask"], pooled=True)


def path_kernel(inp: dict, shape: Shape) -> torch.Tensor:
    from xvlm_edge.kernels import box_cross_attention

    k = _heads(inp["key"](inp["image"]), shape.heads)  # (B, H, N, d), strided view: no copy
    v = _heads(inp["value"](inp["image"]), shape.heads)
    return box_cross_attention(inp["q"], k, v, inp["idx"], inp["mask"])


PATH_FNS = {"official": path_official, "sdpa": path_sdpa, "reference": path_reference, "kernel": path_kernel}


def _leaves(inp: dict) -> list[torch.Tensor]:
    return [inp["image"], inp["q"], *inp["key"].parameters(), *inp["value"].parameters()]


def make_step(path: str, inp: dict, shape: Shape, mode: str):
    fn = PATH_FNS[path]
    for t in _leaves(inp):
        t.requires_grad_(mode == "fwd_bwd")
    if mode == "fwd":

        def step() -> None:
            with torch.no_grad():
                fn(inp, shape)

        return step
    grad = torch.randn(inp["q"].shape, generator=torch.Generator().manual_seed(1)).to(inp["q"])

    def step() -> None:
        fn(inp, shape).backward(grad)

    return step


def time_cuda(step, warmup_ms: int, rep_ms: int, leaves: list[torch.Tensor]) -> tuple[float, ...]:
    from triton.testing import do_bench

    median, p20, p80 = do_bench(step, warmup=warmup_ms, rep=rep_ms, grad_to_none=leaves, quantiles=[0.5, 0.2, 0.8])
    return median, p20, p80


def time_cpu(step, reps: int) -> tuple[float, ...]:
    step()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(times, n=10)
    return statistics.median(times), q[1], q[7]


def check_outputs(inp: dict, shape: Shape, paths: list[str]) -> dict[str, float]:
    """Max |path - reference| on the forward output, so a fast wrong path cannot win."""
    with torch.no_grad():
        ref = path_reference(inp, shape).float()
        return {p: (PATH_FNS[p](inp, shape).float() - ref).abs().max().item() for p in paths}


def run(args: argparse.Namespace) -> dict:
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if cuda:
        name = torch.cuda.get_device_name()
        peak_key, peak = device_peak(name)
        shapes = [SHAPES[s] for s in args.shapes]
        dtypes = args.dtypes
        paths = list(PATHS)
    else:
        name, peak_key, peak = platform.processor() or "cpu", "unknown", PEAKS["unknown"]
        shapes, dtypes, paths = [CPU_SHAPE], ["fp32"], ["official", "sdpa", "reference"]
    os.environ[concepts.BACKEND_ENV] = "torch"  # path (c) must be the reference even on CUDA

    results = []
    for shape in shapes:
        for dtype_name in dtypes:
            inp = make_inputs(shape, DTYPES[dtype_name], device)
            errors = check_outputs(inp, shape, paths)
            for mode in args.modes:
                for path in paths:
                    step = make_step(path, inp, shape, mode)
                    if cuda:
                        median, p20, p80 = time_cuda(step, args.warmup_ms, args.rep_ms, _leaves(inp))
                    else:
                        median, p20, p80 = time_cpu(step, args.cpu_reps)
                    elem = torch.finfo(DTYPES[dtype_name]).bits // 8
                    tflops = flops(shape, mode) / (median * 1e-3) / 1e12
                    gbps = bytes_moved(shape, mode, elem) / (median * 1e-3) / 1e9
                    row = {
                        "shape": shape.name, "dtype": dtype_name, "mode": mode, "path": path,
                        "median_ms": median, "p20_ms": p20, "p80_ms": p80,
                        "tflops": tflops, "gbps": gbps,
                        "pct_peak_tflops": None if peak["tflops"] is None else 100 * tflops / peak["tflops"],
                        "pct_peak_gbps": None if peak["gbps"] is None else 100 * gbps / peak["gbps"],
                        "max_abs_err_vs_reference": errors[path],
                    }
                    results.append(row)
                    print(
                        f"{shape.name:>9} {dtype_name} {mode:>7} {path:>9}: {median:8.3f} ms "
                        f"[{p20:.3f}, {p80:.3f}]  {tflops:7.2f} TFLOP/s  {gbps:8.1f} GB/s  err {errors[path]:.1e}",
                        file=sys.stderr,
                    )
    return {
        "question": "which box cross-attention path is fastest, and how close is the kernel to the hardware limit?",
        "machine": {
            "device": name,
            "peak_key": peak_key,
            "peak": peak,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "triton": _triton_version(),
            "python": platform.python_version(),
        },
        "config": {
            "shapes": {s.name: dataclasses.asdict(s) | {"patches": s.patches, "head_dim": s.head_dim} for s in shapes},
            "dtypes": dtypes,
            "modes": args.modes,
            "timer": "triton.testing.do_bench quantiles [0.5, 0.2, 0.8]" if cuda else "time.perf_counter",
            "warmup_ms": args.warmup_ms,
            "rep_ms": args.rep_ms,
        },
        "formulas": {
            "flops_fwd": "2*2*(B*N)*D*D + 4*K*H*T*(1+N)*d",
            "flops_fwd_bwd": "3*(2*2*(B*N)*D*D) + 3.5*(4*K*H*T*(1+N)*d)",
            "bytes_fwd": "e*(B*N*D + 2*D*D + 2*D + 2*K*H*T*d) + K*N",
            "bytes_fwd_bwd": "bytes_fwd + e*(2*K*H*T*d + B*N*D + 2*D*D + 2*D)",
        },
        "results": results,
        "speedups": speedups(results),
    }


def speedups(results: list[dict]) -> list[dict]:
    """Kernel vs each other path per (shape, dtype, mode), and the issue's goals on the region shape."""
    by_case: dict[tuple, dict[str, float]] = {}
    for r in results:
        by_case.setdefault((r["shape"], r["dtype"], r["mode"]), {})[r["path"]] = r["median_ms"]
    out = []
    for (shape, dtype, mode), times in by_case.items():
        if "kernel" not in times:
            continue
        row = {"shape": shape, "dtype": dtype, "mode": mode}
        row |= {f"x_vs_{p}": t / times["kernel"] for p, t in times.items() if p != "kernel"}
        if shape == "region" and mode == "fwd_bwd":
            row["goal_3x_vs_official"] = row["x_vs_official"] >= 3.0
            row["goal_1.3x_vs_sdpa"] = row["x_vs_sdpa"] >= 1.3
        out.append(row)
    return out


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def write_png(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r["shape"], r["dtype"], r["mode"]) for r in report["results"]})
    paths = [p for p in PATHS if any(r["path"] == p for r in report["results"])]
    times = {(r["shape"], r["dtype"], r["mode"], r["path"]): r["median_ms"] for r in report["results"]}
    width = 0.8 / len(paths)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(cases)), 4.0))
    for i, p in enumerate(paths):
        xs = [c + i * width for c in range(len(cases))]
        ax.bar(xs, [times.get((*case, p), float("nan")) for case in cases], width, label=p)
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(cases))])
    ax.set_xticklabels(["\n".join(case) for case in cases], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("median time (ms, log)")
    ax.set_title(f"box cross-attention + K/V projection on {report['machine']['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=150)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_kernels.json"), help="JSON report path")
    parser.add_argument("--png", type=Path, default=None, help="also draw a bar chart here (needs matplotlib)")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    parser.add_argument("--dtypes", nargs="+", choices=["fp16", "bf16"], default=["fp16", "bf16"])
    parser.add_argument("--modes", nargs="+", choices=["fwd", "fwd_bwd"], default=["fwd", "fwd_bwd"])
    parser.add_argument("--warmup-ms", type=int, default=25)
    parser.add_argument("--rep-ms", type=int, default=100)
    parser.add_argument("--allow-cpu", action="store_true", help="without CUDA, time paths (a)-(c) at a tiny shape")
    parser.add_argument("--cpu-reps", type=int, default=20)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(
            "bench_kernels: this benchmark needs a CUDA GPU (the Triton kernel is compiled for it); nothing was "
            "measured. Use --allow-cpu to time the PyTorch paths at a tiny shape.",
            file=sys.stderr,
        )
        return 0
    if args.png is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("bench_kernels: --png needs matplotlib (pip install matplotlib)", file=sys.stderr)
            return 2
    report = run(args)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"bench_kernels: wrote {args.out}", file=sys.stderr)
    if args.png is not None:
        write_png(report, args.png)
        print(f"bench_kernels: wrote {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
