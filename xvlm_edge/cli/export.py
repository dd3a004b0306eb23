"""`xvlm-edge export` (ONNX per graph, fp16 for TensorRT, ExecuTorch programs, INT8 behind the accuracy gate) and `xvlm-edge engines`."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from xvlm_edge.cli._common import non_negative_int, positive_int, probability
from xvlm_edge.cli._errors import ChosenBackendError
from xvlm_edge.cli._output import Output
from xvlm_edge.errors import BackendUnavailableError


def cmd_export(args: argparse.Namespace) -> int:
    from xvlm_edge.export import PRECISIONS, export_model
    from xvlm_edge.export.gate import Thresholds
    from xvlm_edge.manifest import export_dir

    thresholds = Thresholds() if args.min_caption_agreement is None else Thresholds(caption_agreement=args.min_caption_agreement)
    reduce_range = {None: None, "on": True, "off": False}[args.reduce_range]
    with Output.from_args(args) as out:
        try:
            manifest = export_model(
                args.model_dir, args.precision, args.target, calibration=args.calibration, eval_images=args.eval_images,
                thresholds=thresholds, force=args.force, strict=args.strict, exclude=args.exclude, keep_fp32=args.keep_fp32 or (),
                sensitivity_budget=args.sensitive_search, reduce_range=reduce_range, threads=args.threads, progress=not args.json,
            )  # fmt: skip
        except BackendUnavailableError as exc:
            if args.precision not in PRECISIONS.get(args.target, ()):  # the --precision/--target pair the user named
                others = [target for target, precisions in PRECISIONS.items() if args.precision in precisions]
                hint = exc.hint or (f"--precision {args.precision} exports for --target {' or '.join(others)}" if others else "")
                raise ChosenBackendError(str(exc), hint=hint) from exc
            raise
        directory = export_dir(args.model_dir, args.target, args.precision)
        lines = [f"exported {len(manifest.graphs)} graphs ({args.target}, {args.precision}) -> {directory}"]
        if manifest.bounds:
            lines.append("  bounds: " + ", ".join(f"{k} {v}" for k, v in manifest.bounds["limits"].items())
                         + " (memory planned for them; arena = activations per call, besides the weights)")  # fmt: skip
        parity, engine = manifest.parity, "et" if args.target == "executorch" else "ort"
        for name, entry in manifest.graphs.items():
            line = f"  {name:18s} {entry.bytes / 2**20:8.2f} MiB  fp32 max|{engine} - torch| {parity['fp32_vs_torch'][name]['max_abs']:.1e}"
            if entry.method:
                line += f"  arena {entry.arena_bytes / 2**20:7.2f} MiB"
            fp16 = parity.get("fp16_vs_torch", {}).get(name)
            if fp16 is not None:
                line += f"  fp16 max|ort - torch| {fp16['max_abs']:.1e}" if fp16["checked"] else "  fp16 not checked (ONNX Runtime CPU cannot run it)"
            lines.append(f"{line}  {entry.quantization}")
        quantization = manifest.quantization
        if "plan" in quantization:
            lines.append(f"  int8 plan found in {quantization['search_seconds']:.0f} s, {len(quantization['trials'])} trials; "
                         f"reduce_range {quantization['reduce_range']} ({quantization['reduce_range_source']})")  # fmt: skip
            lines += [f"    {graph:18s} {_kept(step)}: {step['reason']}" for graph, step in quantization["plan"].items() if _kept(step)]
        accuracy = manifest.accuracy
        if "metrics" in accuracy:
            verdict = "passed" if accuracy["passed"] else "FAILED (forced)"
            lines.append(f"  accuracy gate {verdict}: " + ", ".join(f"{k} {v:.4f}" for k, v in accuracy["metrics"].items()))
        summary = {"directory": str(directory), **asdict(manifest)}
        if args.target == "tensorrt":
            summary["engines"] = _build_engines(directory, lines)
        out.document(summary, "\n".join(lines))
    return 0


def _kept(step: dict) -> str:
    """What an INT8 plan's step left in float, or '' when nothing."""
    if step["option"] == "float":
        return "kept float"
    return f"{len(step['kept_float'])} MatMuls kept float" if step["kept_float"] else ""


def _build_engines(export: Path, lines: list[str]) -> str | None:
    """TensorRT engines from a tensorrt export when `_C` has TensorRT; otherwise the command that builds them."""
    from xvlm_edge import _C
    from xvlm_edge.export.tensorrt import DEFAULT_ENGINE_SUBDIR, build_engines

    if not _C.has_tensorrt():
        lines.append(f"  engines: not built (no TensorRT in this build); on the device run: xvlm-edge engines {export}")
        return None
    manifests = build_engines(export)
    engine_dir = export / DEFAULT_ENGINE_SUBDIR
    lines.append(f"  engines: {len(manifests)} TensorRT engines -> {engine_dir}")
    return str(engine_dir)


def cmd_engines(args: argparse.Namespace) -> int:
    from xvlm_edge.export.tensorrt import DEFAULT_ENGINE_SUBDIR, EngineLimits, build_engines

    limits = EngineLimits(**{k: v for k, v in vars(args).items() if k in EngineLimits.__dataclass_fields__ and v is not None})
    with Output.from_args(args) as out:
        manifests = build_engines(args.export_dir, args.out, limits=limits, timing_cache=args.timing_cache)
        engine_dir = args.out or args.export_dir / DEFAULT_ENGINE_SUBDIR
        result = {"engines": str(engine_dir), "graphs": {g: m.engine for g, m in manifests.items()}}
        out.document(result, f"built {len(manifests)} TensorRT engines -> {engine_dir}")
    return 0


def add_commands(sub, common: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    export = sub.add_parser("export", parents=[common],
                            help="export a checkpoint directory to ONNX or ExecuTorch (fp32, fp16 for TensorRT, or INT8 behind an accuracy gate)",
                            epilog="examples: xvlm-edge export model_dir --precision int8\n"
                                   "          xvlm-edge export model_dir --precision fp16 --target tensorrt\n"
                                   "          xvlm-edge export model_dir --target executorch --precision int8",
                            formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    export.add_argument("model_dir", type=Path, help="an xvlm_edge checkpoint directory (xvlm-edge convert makes one)")
    export.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"),
                        help="fp16: float16 ONNX for TensorRT's strongly typed engines (--target tensorrt only); "
                             "int8: the fastest mix of INT8 and float graphs that passes the accuracy gate")  # fmt: skip
    export.add_argument("--target", default="onnxruntime", choices=("onnxruntime", "tensorrt", "executorch"),
                        help="runtime the export is for: onnxruntime runs fp32/int8 ONNX, tensorrt builds engines from fp32/fp16/int8 ONNX, "
                             "executorch writes one XNNPACK .pte per graph (fp32/int8) with vocab.txt and config.json, for the C++ SDK")  # fmt: skip
    export.add_argument("--calibration", type=Path, help="folder of images calibrating static INT8 (default: generated images; not for executorch)")
    export.add_argument("--eval-images", type=Path,
                        help="folder of images the accuracy gate compares on (default: the checkpoint's gate_images/, else 64 generated)")
    export.add_argument("--exclude", nargs="+", help="ONNX node-name (executorch: module-name) substrings kept in float (default: patch_embed)")
    export.add_argument("--keep-fp32", nargs="+", help="graphs an int8 export leaves in fp32 from the start (e.g. answer_step answer_score)")
    export.add_argument("--sensitive-search", type=non_negative_int, metavar="N",
                        help="int8: per graph, the most MatMul/Gemm nodes the search may keep in float before it keeps "
                             "the whole graph in float (default 4; 0: whole graphs only)")  # fmt: skip
    export.add_argument("--reduce-range", choices=("on", "off"),
                        help="int8: 7-bit weights (default: follow this CPU, on without VNNI; recorded in the manifest)")
    export.add_argument("--min-caption-agreement", type=probability, help="gate threshold: share of identical captions (default 0.95)")
    mode = export.add_mutually_exclusive_group()
    mode.add_argument("--strict", action="store_true", help="int8: refuse when every graph INT8 fails the gate, instead of searching")
    mode.add_argument("--force", action="store_true", help="int8: every graph INT8, written even if the gate fails (experiments)")
    export.add_argument("--threads", type=positive_int, help="ONNX Runtime (or ExecuTorch) threads while checking and gating (default: every core)")
    export.set_defaults(run=cmd_export)

    engines = sub.add_parser("engines", parents=[common], help="build TensorRT engines from a --target tensorrt export (on the device)",
                             epilog="example: xvlm-edge engines model_dir/export/tensorrt-fp16 --max-images 4")  # fmt: skip
    engines.add_argument("export_dir", type=Path, help="a tensorrt export directory (xvlm-edge export DIR --target tensorrt)")
    engines.add_argument("--out", type=Path, help="engine directory (default: EXPORT_DIR/engines, where backend='tensorrt' looks)")
    engines.add_argument("--timing-cache", type=Path, help="a TensorRT timing cache file kept across builds")
    for limit in ("max_images", "max_text_rows", "max_tokens", "max_decoder_rows", "max_cache", "opt_beams"):
        engines.add_argument(f"--{limit.replace('_', '-')}", dest=limit, type=positive_int, help="engine limit (default: the API's chunk limits)")
    engines.set_defaults(run=cmd_engines)
    for command in (export, engines):
        command.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    return [export, engines]
