"""`xvlm-edge convert` (an official checkpoint to our directory) and `xvlm-edge smoke` (the install check)."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

from xvlm_edge.cli._common import add_threads, decode, image_file
from xvlm_edge.cli._output import Output
from xvlm_edge.errors import InputError


def cmd_convert(args: argparse.Namespace) -> int:
    import torch

    from xvlm_edge.checkpoint import convert_official, save

    if args.checkpoint.is_dir():
        raise InputError(
            f"{args.checkpoint} is a folder; convert reads one official .th/.pth file",
            hint="an xvlm_edge checkpoint directory needs no conversion: pass it as --model DIR",
        )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with Output.from_args(args) as out:
        converted = convert_official(args.checkpoint, vocab=args.vocab, config_root=args.config_root, answer_list=args.answer_list)
        directory = save(converted, args.out_dir)
        report = converted.report
        answers = converted.answer_list
        result = {
            "layout": report.layout,
            "out_dir": str(directory),
            "heads": list(converted.config.heads),
            "answer_list": len(answers) if answers is not None else None,
            "dropped": report.dropped,
            "missing": report.missing,
            "unexpected": report.unexpected,
        }
        human = [
            f"converted {report.layout} checkpoint -> {directory}",
            f"  heads: {', '.join(converted.config.heads)}" + (f"; answer list: {len(answers)} answers" if answers is not None else ""),
            f"  dropped {len(report.dropped)} rebuilt buffers / tied copies; missing {len(report.missing)}; unexpected {len(report.unexpected)}",
        ]
        out.document(result, "\n".join(human))
    return 0


def cmd_smoke(args: argparse.Namespace) -> int:
    """The `tiny` preset with random weights and every head, saved to a temporary directory and loaded with
    `xvlm_edge.load`, then every public `Model` method its heads allow, once: the path users take, no download."""
    import tempfile

    import numpy as np
    import torch

    import xvlm_edge
    from xvlm_edge.api import TASK_HEADS
    from xvlm_edge.checkpoint import Checkpoint, save
    from xvlm_edge.config import HEADS, get_preset
    from xvlm_edge.models.xvlm import XVLM
    from xvlm_edge.tokenizer import Tokenizer

    config = get_preset("tiny", HEADS)
    image = decode(image_file(args.image, "--image")) if args.image is not None else _checkerboard(np, config.vision.image_res + 37)
    other = np.ascontiguousarray(image[::-1, ::-1])
    text = args.text
    # task -> (the call, a short human summary of its result)
    calls = {
        "caption": (lambda m: m.caption(image, num_beams=1), lambda r: repr(r.text[:40])),
        "ground": (lambda m: m.ground(image, text), lambda r: "box [" + ", ".join(f"{v:.0f}" for v in r.xyxy) + "]"),
        "match": (lambda m: m.match(image, [text, "a plain grey square"]), lambda r: "probabilities " + ", ".join(f"{p:.3f}" for p in r)),
        "check": (lambda m: m.check(image, text), lambda r: f"{r.verdict} ({r.probability:.3f})"),
        "retrieve": (lambda m: m.retrieve([image, other], [text, "a plain grey square"], k=1), lambda r: f"{len(r.texts_for_image)} image queries"),
        "answer": (lambda m: m.answer(image, "what is in the picture?", ["a checkerboard", "a square", "nothing"]), lambda r: repr(r.text)),
        "nlvr": (lambda m: m.nlvr(image, other, text), lambda r: f"{r.verdict} ({r.probability:.3f})"),
    }
    torch.manual_seed(0)
    with Output.from_args(args) as out, tempfile.TemporaryDirectory(prefix="xvlm-edge-smoke-") as tmp:
        model_dir = save(Checkpoint(XVLM(config).eval(), Tokenizer.default(), config), Path(tmp) / "tiny")
        start = time.perf_counter()
        model = xvlm_edge.load(model_dir, threads=args.threads)
        load_seconds = time.perf_counter() - start
        runs = []
        human = []
        for task, (call, summary) in calls.items():
            if not set(TASK_HEADS[task]) <= set(model.config.heads):
                continue
            start = time.perf_counter()
            found = call(model)
            runs.append({"task": task, "seconds": time.perf_counter() - start, "result": _plain(found)})
            human.append(f"  {task:9s} {runs[-1]['seconds'] * 1000:6.0f} ms  {summary(found)}")
        parameters = sum(p.numel() for p in model.model.parameters())
        document = {
            "model": "tiny preset, RANDOM weights (a smoke run, not a trained model)",
            "parameters": parameters,
            "backend": model.info,
            "load_seconds": load_seconds,
            "tasks": runs,
        }
        title = f"smoke run: xvlm_edge.load() of the tiny preset with RANDOM weights ({parameters:,} parameters) in {load_seconds * 1000:.0f} ms"
        human = [title, *human]
        out.document(document, "\n".join(human))
    return 0


def _plain(found):
    """A task's result as JSON-ready data (retrieval without its score tensors)."""
    if isinstance(found, list):
        return [_plain(item) for item in found]
    if hasattr(found, "texts_for_image"):
        return {"texts_for_image": _plain(found.texts_for_image), "images_for_text": _plain(found.images_for_text)}
    if hasattr(found, "__dataclass_fields__"):
        return asdict(found)
    return found


def _checkerboard(np, size: int):
    """A deterministic test image, so the smoke run needs no file."""
    yy, xx = np.mgrid[0:size, 0:size]
    board = ((yy // 16 + xx // 16) % 2).astype(np.uint8) * 200
    return np.stack([board, np.roll(board, 8, axis=0), 255 - board], axis=-1)


def add_commands(sub, common: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    convert = sub.add_parser("convert", parents=[common], help="convert an official X-VLM .th checkpoint to an xvlm_edge directory",
                             epilog="example: xvlm-edge convert checkpoint_best.th model_dir/ --answer-list answer_list.json")  # fmt: skip
    convert.add_argument("checkpoint", type=Path, help="official checkpoint (.th/.pth), any of the six layouts")
    convert.add_argument("out_dir", type=Path, help="output directory (config.json, model.safetensors, vocab.txt)")
    convert.add_argument("--vocab", type=Path, help="vocab.txt the checkpoint was trained with (default: bert-base-uncased)")
    convert.add_argument("--config-root", type=Path, help="where the yaml's relative config paths resolve")
    convert.add_argument("--answer-list", type=Path, help="VQA: the official answer_list.json, saved beside the weights and ranked by `answer`")
    add_threads(convert, "CPU threads for reading and converting (default: torch's)")
    convert.set_defaults(run=cmd_convert)

    smoke = sub.add_parser("smoke", parents=[common], help="run the public API on a tiny random-weight model end to end (install check)")
    smoke.add_argument("--image", help="an image file (default: a generated checkerboard)")
    smoke.add_argument("--text", default="a checkerboard pattern", help="text to match, ground and check")
    add_threads(smoke)
    smoke.set_defaults(run=cmd_smoke)
    for command in (convert, smoke):
        command.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    return [convert, smoke]
