"""The `xvlm-edge` command: one argparse subcommand per job, thin shells over the library.

Output contract: `--json` prints exactly one JSON document on stdout; logs and errors go to stderr.
Exit 0 on success, 2 for user mistakes (a missing file, bad input, a wrong checkpoint), 1 for any other
`XVLMEdgeError`. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from xvlm_edge.errors import CheckpointError, InputError, XVLMEdgeError

USER_ERRORS = (InputError, CheckpointError)


def _emit(args: argparse.Namespace, result: dict, human: str) -> None:
    print(json.dumps(result, indent=2) if args.json else human)


def cmd_convert(args: argparse.Namespace) -> None:
    from xvlm_edge.checkpoint import convert_official, save

    converted = convert_official(args.checkpoint, vocab=args.vocab, config_root=args.config_root)
    out = save(converted, args.out_dir)
    report = converted.report
    result = {
        "layout": report.layout,
        "out_dir": str(out),
        "dropped": report.dropped,
        "missing": report.missing,
        "unexpected": report.unexpected,
        "heads": list(converted.config.heads),
    }
    human = (
        f"converted {report.layout} checkpoint -> {out}\n"
        f"  heads: {', '.join(converted.config.heads)}\n"
        f"  dropped {len(report.dropped)} rebuilt buffers / tied copies; "
        f"missing {len(report.missing)}; unexpected {len(report.unexpected)}"
    )
    _emit(args, result, human)


def cmd_smoke(args: argparse.Namespace) -> None:
    """Build the tiny preset with random weights and run every stage once: no download, no ../shared."""
    import numpy as np
    import torch

    from xvlm_edge.concepts import box_to_patch_mask
    from xvlm_edge.config import LAYOUT_HEADS, get_preset
    from xvlm_edge.models.xvlm import XVLM
    from xvlm_edge.preprocess import preprocess
    from xvlm_edge.tokenizer import Tokenizer

    torch.manual_seed(0)
    config = get_preset("tiny", LAYOUT_HEADS["pretrain"])
    model = XVLM(config).eval()
    tokenizer = Tokenizer.default()
    image = args.image if args.image is not None else _checkerboard(np, config.vision.image_res + 37)
    start = time.perf_counter()
    with torch.no_grad():
        pixels = preprocess([image], config.vision.image_res)
        images = model.encode_image(pixels)
        text = tokenizer.encode([args.text], max_length=config.max_tokens)
        text_embeds = model.encode_text(text.input_ids, text.attention_mask)
        cross = model.fuse(text_embeds, text.attention_mask, model.image_context(images))
        match = model.itm_logits(cross).softmax(-1)[0, 1].item()
        box = model.predict_bbox(cross)[0].tolist()
        half = config.vision.image_res / 2
        atts = box_to_patch_mask(torch.tensor([[0.0, 0.0, half, half]]), config.vision.image_res, config.vision.box_patch_size)
        region = model.fuse(text_embeds, text.attention_mask, model.image_context(images, atts, torch.tensor([0])))
        region_match = model.itm_logits(region).softmax(-1)[0, 1].item()
    elapsed = time.perf_counter() - start
    result = {
        "model": "tiny (random weights: a smoke run, not a trained model)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_tokens": list(images.shape),
        "itm_probability": match,
        "itm_probability_top_left_box": region_match,
        "bbox_cxcywh": box,
        "seconds": elapsed,
    }
    human = (
        f"smoke run of the tiny preset with RANDOM weights ({result['parameters']:,} parameters)\n"
        f"  image tokens {tuple(images.shape)}; text {args.text!r}\n"
        f"  ITM probability {match:.3f} (whole image), {region_match:.3f} (top-left box)\n"
        f"  bbox (cx, cy, w, h) {', '.join(f'{v:.3f}' for v in box)}\n"
        f"  {elapsed * 1000:.0f} ms"
    )
    _emit(args, result, human)


# -- task commands: thin shells over xvlm_edge.api.Model ------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: Images per model call when a command walks a folder (one progress-bar tick each).
CLI_CHUNK = 8


def _load_model(args: argparse.Namespace):
    from xvlm_edge.api import load

    return load(args.model, backend=args.backend, precision=args.precision, device=args.device)


def _image_paths(sources: Sequence[str]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted); a missing path is a user error."""
    paths = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise InputError(f"image not found: {path}", hint="check the path")
    return paths


def _chunks(paths: list[Path]):
    """Chunks of paths, with a progress bar on stderr when there is more than one chunk."""
    from tqdm import tqdm

    bar = tqdm(total=len(paths), unit="img", file=sys.stderr, disable=len(paths) <= CLI_CHUNK)
    for start in range(0, len(paths), CLI_CHUNK):
        chunk = paths[start : start + CLI_CHUNK]
        yield chunk
        bar.update(len(chunk))
    bar.close()


def _document(model, results) -> dict:
    return {"backend": model.info, "results": results}


def _example_images() -> list[Path]:
    """The example scenes shipped beside the embedded default model (xvlm_edge/assets/examples)."""
    from importlib.resources import files

    folder = Path(str(files("xvlm_edge") / "assets" / "examples"))
    return sorted(folder.glob("*.png"))


def cmd_caption(args: argparse.Namespace) -> None:
    paths = _image_paths(args.images) + (_example_images() if args.examples else [])
    if not paths:
        raise InputError("no images given", hint="pass image files or folders, or --examples")
    model = _load_model(args)
    results = []
    for chunk in _chunks(paths):
        for path, caption in zip(chunk, model.caption([str(p) for p in chunk], num_beams=args.beams)):
            results.append({"image": str(path), "caption": caption.text, "score": caption.score, "token_ids": caption.token_ids})
    _emit(args, _document(model, results), "\n".join(f"{r['image']}: {r['caption']}" for r in results))


def cmd_ground(args: argparse.Namespace) -> None:
    (path,) = _image_paths([args.image])
    model = _load_model(args)
    boxes = model.ground(str(path), list(args.phrases))
    results = [{"image": str(path), "phrase": b.text, "xyxy": b.xyxy, "cxcywh": b.cxcywh} for b in boxes]
    if args.draw is not None:
        draw_boxes(path, boxes, args.draw)
    human = "\n".join(f"{b.text!r}: [{', '.join(f'{v:.1f}' for v in b.xyxy)}]" for b in boxes)
    _emit(args, _document(model, results), human + (f"\ndrawn to {args.draw}" if args.draw else ""))


def draw_boxes(image_path: Path, boxes, out: Path) -> None:
    """Write the image with each box and its phrase drawn on it (OpenCV), at the original size."""
    import cv2

    from xvlm_edge.preprocess import load_image

    canvas = cv2.cvtColor(load_image(str(image_path)), cv2.COLOR_RGB2BGR)
    scale = max(canvas.shape[:2]) / 640
    for i, box in enumerate(boxes):
        color = ((60 * i) % 256, 255 - (40 * i) % 256, 255)
        x1, y1, x2, y2 = (round(v) for v in box.xyxy)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, max(1, round(2 * scale)))
        cv2.putText(canvas, box.text, (max(x1, 0), max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, max(0.3, 0.5 * scale), color, 1, cv2.LINE_AA)
    out = Path(out)
    if not out.parent.is_dir():
        raise InputError(f"cannot write {out}: folder {out.parent} does not exist")
    if out.suffix.lower() != ".png" or not cv2.imwrite(str(out), canvas):
        raise InputError(f"cannot write {out}", hint="give a .png path in an existing folder")


def cmd_match(args: argparse.Namespace) -> None:
    (path,) = _image_paths([args.image])
    model = _load_model(args)
    probs = model.match(str(path), list(args.texts))
    results = [{"image": str(path), "text": t, "probability": p} for t, p in zip(args.texts, probs)]
    _emit(args, _document(model, results), "\n".join(f"{p:.3f}  {t}" for t, p in zip(args.texts, probs)))


def cmd_check(args: argparse.Namespace) -> None:
    paths = _image_paths(args.images)
    model = _load_model(args)
    results = []
    for chunk in _chunks(paths):
        for path in chunk:
            verdict = model.check(str(path), args.statement)
            results.append({"image": str(path), "statement": args.statement, "verdict": verdict.verdict,
                            "score": verdict.score, "threshold": verdict.threshold})  # fmt: skip
    human = "\n".join(f"{r['image']}: {'true' if r['verdict'] else 'false'} ({r['score']:.3f})" for r in results)
    _emit(args, _document(model, results), human)


def cmd_retrieve(args: argparse.Namespace) -> None:
    paths = _image_paths(args.images)
    model = _load_model(args)
    found = model.retrieve([str(p) for p in paths], list(args.texts), k=args.k)
    results = {
        "texts_for_image": {str(p): [{"text": args.texts[t], "score": s} for t, s in ranked] for p, ranked in zip(paths, found.texts_for_image)},
        "images_for_text": {text: [{"image": str(paths[i]), "score": s} for i, s in ranked] for text, ranked in zip(args.texts, found.images_for_text)},
    }  # fmt: skip
    lines = []
    for path, ranked in zip(paths, found.texts_for_image):
        lines.append(f"{path}:")
        lines += [f"  {s:8.3f}  {args.texts[t]}" for t, s in ranked]
    _emit(args, _document(model, results), "\n".join(lines))


def cmd_answer(args: argparse.Namespace) -> None:
    paths = _image_paths(args.images)
    answers = None
    if args.answers_file is not None:
        try:
            answers = [line.strip() for line in args.answers_file.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise InputError(f"cannot read answer list {args.answers_file}: {exc}") from None
    elif args.answers:
        answers = list(args.answers)
    model = _load_model(args)
    results = []
    for chunk in _chunks(paths):
        found = model.answer([str(p) for p in chunk], [args.question] * len(chunk), answers)
        for path, answer in zip(chunk, found):
            results.append({"image": str(path), "question": args.question, "answer": answer.text, "score": answer.score,
                            "candidates": [{"answer": a, "probability": p} for a, p in answer.candidates]})  # fmt: skip
    _emit(args, _document(model, results), "\n".join(f"{r['image']}: {r['answer']}" for r in results))


def cmd_nlvr(args: argparse.Namespace) -> None:
    left, right = _image_paths([args.left, args.right])
    model = _load_model(args)
    verdict = model.nlvr(str(left), str(right), args.statement)
    result = {"left": str(left), "right": str(right), "statement": args.statement, "verdict": verdict.verdict, "score": verdict.score}
    _emit(args, _document(model, [result]), f"{'true' if verdict.verdict else 'false'} ({verdict.score:.3f})")


def cmd_export(args: argparse.Namespace) -> None:
    from xvlm_edge.export import export_model
    from xvlm_edge.export.gate import Thresholds

    thresholds = Thresholds() if args.min_caption_agreement is None else Thresholds(caption_agreement=args.min_caption_agreement)
    reduce_range = {None: None, "on": True, "off": False}[args.reduce_range]
    manifest = export_model(
        args.model_dir, args.precision, args.target, calibration=args.calibration, eval_images=args.eval_images,
        thresholds=thresholds, force=args.force, strict=args.strict, exclude=args.exclude, keep_fp32=args.keep_fp32 or (),
        sensitivity_budget=args.sensitive_search, reduce_range=reduce_range, threads=args.threads, progress=not args.json,
    )  # fmt: skip
    from xvlm_edge.manifest import export_dir

    directory = export_dir(args.model_dir, args.target, args.precision)
    lines = [f"exported {len(manifest.graphs)} graphs ({args.target}, {args.precision}) -> {directory}"]
    parity = manifest.parity
    for name, entry in manifest.graphs.items():
        line = f"  {name:18s} {entry.bytes / 2**20:8.2f} MiB  fp32 max|ort - torch| {parity['fp32_vs_torch'][name]['max_abs']:.1e}"
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
    _emit(args, summary, "\n".join(lines))


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


def cmd_engines(args: argparse.Namespace) -> None:
    from xvlm_edge.export.tensorrt import DEFAULT_ENGINE_SUBDIR, EngineLimits, build_engines

    limits = EngineLimits(**{k: v for k, v in vars(args).items() if k in EngineLimits.__dataclass_fields__ and v is not None})
    manifests = build_engines(args.export_dir, args.out, limits=limits, timing_cache=args.timing_cache)
    engine_dir = args.out or args.export_dir / DEFAULT_ENGINE_SUBDIR
    result = {"engines": str(engine_dir), "graphs": {g: m.engine for g, m in manifests.items()}}
    _emit(args, result, f"built {len(manifests)} TensorRT engines -> {engine_dir}")


def cmd_bench(args: argparse.Namespace) -> None:
    from xvlm_edge import bench

    report = bench.run(bench.BenchConfig.from_args(args))
    _emit(args, report, bench.format_table(report) + f"\nwrote {report['json']}" + (f" and {report['png']}" if report["png"] else ""))


def _checkerboard(np, size: int):
    """A deterministic test image, so the smoke run needs no file."""
    yy, xx = np.mgrid[0:size, 0:size]
    board = ((yy // 16 + xx // 16) % 2).astype(np.uint8) * 200
    return np.stack([board, np.roll(board, 8, axis=0), 255 - board], axis=-1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xvlm-edge", description="X-VLM vision-language models on edge devices.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser("convert", help="convert an official X-VLM .th checkpoint to an xvlm_edge directory")
    convert.add_argument("checkpoint", type=Path, help="official checkpoint (.th/.pth), any of the six layouts")
    convert.add_argument("out_dir", type=Path, help="output directory (config.json, model.safetensors, vocab.txt)")
    convert.add_argument("--vocab", type=Path, help="vocab.txt the checkpoint was trained with (default: bert-base-uncased)")
    convert.add_argument("--config-root", type=Path, help="where the yaml's relative config paths resolve")
    convert.set_defaults(run=cmd_convert)

    smoke = sub.add_parser("smoke", help="run a tiny random-initialised model end to end (install check)")
    smoke.add_argument("--image", help="an image file (default: a generated checkerboard)")
    smoke.add_argument("--text", default="a checkerboard pattern", help="text to match and ground")
    smoke.set_defaults(run=cmd_smoke)

    tasks = []

    def task(name: str, help: str, run, example: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help, epilog=f"example: {example}")
        command.set_defaults(run=run)
        tasks.append(command)
        return command

    caption = task("caption", "caption images (files or folders)", cmd_caption, "xvlm-edge caption photos/ --model captioning.th")
    caption.add_argument("images", nargs="*", help="image files or folders of images")
    caption.add_argument("--examples", action="store_true", help="also caption the example images shipped with the package")
    caption.add_argument("--beams", type=int, help="beam width; 1 = greedy (default: the checkpoint's, 3 officially)")

    ground = task("ground", "locate phrases in an image (bbox head)", cmd_ground,
                  'xvlm-edge ground street.jpg "the man crossing the street" --draw out.png --model bbox.th')  # fmt: skip
    ground.add_argument("image", help="an image file")
    ground.add_argument("phrases", nargs="+", help="one or more phrases; they share the image's encoding")
    ground.add_argument("--draw", type=Path, help="write the image with the boxes and phrases drawn to this PNG")

    match = task("match", "ITM probability that texts describe an image", cmd_match, 'xvlm-edge match cat.jpg "a cat" "a dog" --model retrieval.th')
    match.add_argument("image", help="an image file")
    match.add_argument("texts", nargs="+", help="one or more texts")

    check = task("check", "is a statement true of the image(s)? (ITM with the checkpoint's threshold)", cmd_check,
                 'xvlm-edge check homework/ --statement "three apples on a plate" --model retrieval.th')  # fmt: skip
    check.add_argument("images", nargs="+", help="image files or folders of images")
    check.add_argument("--statement", required=True, help="the statement to check")

    retrieve = task("retrieve", "rank texts per image and images per text (ITC top-k, ITM re-rank)", cmd_retrieve,
                    'xvlm-edge retrieve --images photos/ --texts "a red bike" "two dogs" --model retrieval.th')  # fmt: skip
    retrieve.add_argument("--images", nargs="+", required=True, help="image files or folders")
    retrieve.add_argument("--texts", nargs="+", required=True, help="candidate texts")
    retrieve.add_argument("-k", type=int, help="candidates re-ranked per query (default: the checkpoint's k_test)")

    answer = task("answer", "answer a question about image(s) (VQA)", cmd_answer,
                  'xvlm-edge answer kitchen.jpg --question "what color is the kettle?" --model vqa.th')  # fmt: skip
    answer.add_argument("images", nargs="+", help="image files or folders of images")
    answer.add_argument("--question", required=True, help="the question")
    group = answer.add_mutually_exclusive_group()
    group.add_argument("--answers", nargs="+", help="candidate answers to rank (default: open-ended generation)")
    group.add_argument("--answers-file", type=Path, help="candidate answers, one a line")

    nlvr = task("nlvr", "is a statement true of an image pair? (NLVR2)", cmd_nlvr,
                'xvlm-edge nlvr left.jpg right.jpg "both images show dogs" --model nlvr.th')  # fmt: skip
    nlvr.add_argument("left", help="the left image")
    nlvr.add_argument("right", help="the right image")
    nlvr.add_argument("statement", help="the statement")

    for command in tasks:
        command.add_argument("--model", help="checkpoint: an xvlm_edge directory or an official .th")
        command.add_argument("--backend", default="auto",
                             help="auto (default: torch), torch, onnxruntime (needs xvlm-edge export) or tensorrt (needs xvlm-edge engines)")
        command.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16", "int8"), help="fp16/bf16 need CUDA; int8 needs onnxruntime")
        command.add_argument("--device", help="cpu or cuda (default: cuda when present)")

    export = sub.add_parser("export", help="export a checkpoint directory to ONNX (fp32, fp16 for TensorRT, or INT8 behind an accuracy gate)",
                            epilog="examples: xvlm-edge export model_dir --precision int8\n"
                                   "          xvlm-edge export model_dir --precision fp16 --target tensorrt",
                            formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    export.add_argument("model_dir", type=Path, help="an xvlm_edge checkpoint directory (xvlm-edge convert makes one)")
    export.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"),
                        help="fp16: float16 ONNX for TensorRT's strongly typed engines (--target tensorrt only); "
                             "int8: the fastest mix of INT8 and float graphs that passes the accuracy gate")  # fmt: skip
    export.add_argument("--target", default="onnxruntime", choices=("onnxruntime", "tensorrt"),
                        help="runtime the ONNX is for: onnxruntime runs fp32/int8, tensorrt builds engines from fp32/fp16/int8")  # fmt: skip
    export.add_argument("--calibration", type=Path, help="folder of images calibrating INT8 (default: generated images)")
    export.add_argument("--eval-images", type=Path, help="folder of images the accuracy gate compares on (default: 64 generated)")
    export.add_argument("--exclude", nargs="+", help="ONNX node-name substrings kept in float (default: patch_embed)")
    export.add_argument("--keep-fp32", nargs="+", help="graphs an int8 export leaves in fp32 from the start (e.g. answer_step answer_score)")
    export.add_argument("--sensitive-search", type=int, metavar="N",
                        help="int8: per graph, the most MatMul/Gemm nodes the search may keep in float before it keeps "
                             "the whole graph in float (default 4; 0: whole graphs only)")  # fmt: skip
    export.add_argument("--reduce-range", choices=("on", "off"),
                        help="int8: 7-bit weights (default: follow this CPU, on without VNNI; recorded in the manifest)")
    export.add_argument("--min-caption-agreement", type=float, help="gate threshold: share of identical captions (default 0.95)")
    mode = export.add_mutually_exclusive_group()
    mode.add_argument("--strict", action="store_true", help="int8: refuse when every graph INT8 fails the gate, instead of searching")
    mode.add_argument("--force", action="store_true", help="int8: every graph INT8, written even if the gate fails (experiments)")
    export.add_argument("--threads", type=int, help="ONNX Runtime threads while checking and gating")
    export.set_defaults(run=cmd_export)

    engines = sub.add_parser("engines", help="build TensorRT engines from a --target tensorrt export (on the device)",
                             epilog="example: xvlm-edge engines model_dir/export/tensorrt-fp16 --max-images 4")  # fmt: skip
    engines.add_argument("export_dir", type=Path, help="a tensorrt export directory (xvlm-edge export DIR --target tensorrt)")
    engines.add_argument("--out", type=Path, help="engine directory (default: EXPORT_DIR/engines, where backend='tensorrt' looks)")
    engines.add_argument("--timing-cache", type=Path, help="a TensorRT timing cache file kept across builds")
    for limit in ("max_images", "max_text_rows", "max_tokens", "max_decoder_rows", "max_cache", "opt_beams"):
        engines.add_argument(f"--{limit.replace('_', '-')}", dest=limit, type=int, help="engine limit (default: the API's chunk limits)")
    engines.set_defaults(run=cmd_engines)

    bench = sub.add_parser("bench", help="time each task on torch fp32 and ONNX Runtime fp32/INT8 (never writes into --model)",
                           epilog="example: xvlm-edge bench --preset xvlm-base-16m-384 --batch 1 --out bench_base")  # fmt: skip
    bench.add_argument("--model", type=Path, help="a checkpoint directory (default: --preset with random weights); only read")
    bench.add_argument("--preset", default="tiny", help="preset built with random weights when --model is not given")
    bench.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes (default: 1 4)")
    bench.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (after one warm-up)")
    bench.add_argument("--threads", type=int, help="CPU threads for every backend (default: all cores)")
    bench.add_argument("--tasks", nargs="+", help="tasks to time: caption ground match vision (default: all)")
    bench.add_argument("--out", type=Path, default=Path("bench_backends"), help="output prefix: OUT.json and OUT.png")
    bench.set_defaults(run=cmd_bench)
    for command in (convert, smoke, *tasks, export, engines, bench):
        command.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xvlm-edge")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except USER_ERRORS as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        print(f"xvlm-edge: error: {exc}{hint}", file=sys.stderr)
        return 2
    except XVLMEdgeError as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        print(f"xvlm-edge: error: {exc}{hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
