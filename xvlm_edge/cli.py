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

    for command in (convert, smoke):
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
        print(f"xvlm-edge: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
