"""`xvlm-edge bench`: which backend and precision is fastest for each task here (`xvlm_edge.bench`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xvlm_edge.cli._output import Output


def cmd_bench(args: argparse.Namespace) -> int:
    from xvlm_edge import bench

    config = bench.BenchConfig.from_args(args)  # refuses what cannot be timed before any work
    with Output.from_args(args) as out:
        report = bench.run(config)
        out.document(report, bench.format_table(report) + f"\nwrote {report['json']}" + (f" and {report['png']}" if report["png"] else ""))
    return 0


def add_commands(sub, common: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    bench = sub.add_parser("bench", parents=[common], help="time each task on torch fp32 and ONNX Runtime fp32/INT8 (never writes into --model)",
                           epilog="example: xvlm-edge bench --preset xvlm-base-16m-384 --batch 1 --out bench_base")  # fmt: skip
    bench.add_argument("--model", type=Path, help="a checkpoint directory (default: --preset with random weights); only read")
    bench.add_argument("--preset", default="tiny", help="preset built with random weights when --model is not given")
    # Numbers are checked by BenchConfig (one place, also for Python callers), so argparse only parses them.
    bench.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes (default: 1 4)")
    bench.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (after one warm-up)")
    bench.add_argument("--threads", type=int, help="CPU threads for every backend (default: all cores)")
    bench.add_argument("--tasks", nargs="+", help="tasks to time: caption ground match vision (default: all)")
    bench.add_argument("--out", type=Path, default=Path("bench_backends"), help="output prefix: OUT.json and OUT.png")
    bench.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    bench.set_defaults(run=cmd_bench)
    return [bench]
