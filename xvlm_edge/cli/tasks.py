"""The task verbs (caption, ground, match, check, retrieve, answer, nlvr): thin shells over `xvlm_edge.api.Model`.

Each reads its inputs, loads the model once, and hands every image to `run_inputs`, which streams one result
per input (see `_output.py` for the formats and `_common.py` for the runner).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from xvlm_edge.cli._common import (
    CLI_CHUNK,
    Input,
    add_model_options,
    add_output_options,
    decode,
    image_file,
    inputs_of,
    load_model,
    non_negative_int,
    note_embedded_model,
    positive_int,
    probability,
    run_inputs,
)
from xvlm_edge.cli._errors import UsageError
from xvlm_edge.cli._output import Output
from xvlm_edge.errors import ImageError, InputError


def _examples_folder() -> Path:
    """Where the example scenes shipped beside the embedded default model live (xvlm_edge/assets/examples)."""
    from importlib.resources import files

    return Path(str(files("xvlm_edge") / "assets" / "examples"))


def _example_images() -> list[str]:
    from xvlm_edge.preprocess import IMAGE_SUFFIXES

    return [str(p) for p in sorted(_examples_folder().iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]


def _shown(path: Path) -> str:
    """A path as a person reads it: a shipped example by its name, not its site-packages path."""
    return f"examples/{path.name}" if path.parent == _examples_folder() else str(path)


def _images_and_texts(args: argparse.Namespace, texts_flag: str, what: str) -> tuple[list[Input], list[str]]:
    """`VERB IMAGE TEXT...`, or `VERB IMAGE... --texts TEXT...` (images may be folders)."""
    texts = getattr(args, texts_flag.lstrip("-").replace("-", "_"))
    if texts:
        images = list(args.items)
    else:
        images, texts = list(args.items[:1]), list(args.items[1:])
    if not texts:
        one = f'"a {what[:-1]}"'
        raise UsageError(f"no {what} given", hint=f"xvlm-edge {args.command} IMAGE {one}, or xvlm-edge {args.command} IMAGE... {texts_flag} {one} ...")
    return inputs_of(images), texts


def _run(args: argparse.Namespace, inputs: list[Input], process, *, chunk: int = 1) -> int:
    with Output.from_args(args) as out:
        model = load_model(args)
        out.header = {"backend": model.info}
        run_inputs(out, inputs, process(model), chunk=chunk, fail_fast=args.fail_fast)
        out.finish()
    note_embedded_model(args, out)
    return out.exit_code()


# -- caption ---------------------------------------------------------------------------------------------------


def cmd_caption(args: argparse.Namespace) -> int:
    sources = list(args.images) + (_example_images() if args.examples else [])
    if not sources:
        raise UsageError("no images given", hint="pass image files or folders, or --examples")
    inputs = inputs_of(sources)

    def process(model):
        def run(items: list[Input], arrays: list[Any]):
            captions = model.caption(arrays, num_beams=args.beams, max_length=args.max_length, min_length=args.min_length)
            return [
                (
                    {"caption": c.text, "probability": c.probability, "logprob": c.logprob, "truncated": c.truncated, "token_ids": c.token_ids},
                    f"{_shown(item.path)}: {c.text}" + (" [truncated: hit --max-length]" if c.truncated else ""),
                )
                for item, c in zip(items, captions)
            ]

        return run

    return _run(args, inputs, process, chunk=CLI_CHUNK)


# -- ground ----------------------------------------------------------------------------------------------------


def cmd_ground(args: argparse.Namespace) -> int:
    inputs, phrases = _images_and_texts(args, "--phrases", "phrases")
    draw = _draw_target(args.draw, len(inputs))

    def process(model):
        def run(items: list[Input], arrays: list[Any]):
            (item,), (array,) = items, arrays
            boxes = model.ground(array, phrases)
            target = None
            if draw is not None:
                target = draw if len(inputs) == 1 else draw / f"{item.index:04d}-{item.path.stem}.png"
                draw_boxes(array, boxes, target)
            height, width = array.shape[:2]
            record = {
                "drawn": None if target is None else str(target),
                "width": width,
                "height": height,
                "boxes": [{"phrase": b.text, "xyxy": b.xyxy, "cxcywh": b.cxcywh, "clipped": b.clipped, "raw_cxcywh": b.raw_cxcywh} for b in boxes],
            }
            human = "\n".join(
                f"{item.path}: {b.text!r} [{', '.join(f'{v:.1f}' for v in b.xyxy)}]" + (" (clipped to the image)" if b.clipped else "")
                for b in boxes
            )
            return [(record, human)]

        return run

    return _run(args, inputs, process)


def _draw_target(draw: Path | None, count: int) -> Path | None:
    """--draw: a .png path for one image, an existing folder for several; checked before any work."""
    if draw is None:
        return None
    if count > 1:
        if not draw.is_dir():
            raise InputError(f"--draw {draw}: grounding {count} images draws one PNG each, so --draw must be an existing folder")
        return draw
    if draw.is_dir():
        return draw / "boxes.png"
    if draw.suffix.lower() != ".png":
        raise InputError(f"--draw {draw} is not a .png path", hint="give a .png file, e.g. --draw boxes.png")
    if not draw.parent.is_dir():
        raise InputError(f"--draw {draw}: folder {draw.parent} does not exist")
    return draw


def draw_boxes(image, boxes, out: Path) -> None:
    """Write the image (HWC uint8 RGB) with each box and its phrase drawn on it (OpenCV), at the original size."""
    import cv2

    canvas = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    scale = max(canvas.shape[:2]) / 640
    for i, box in enumerate(boxes):
        color = ((60 * i) % 256, 255 - (40 * i) % 256, 255)
        x1, y1, x2, y2 = (round(v) for v in box.xyxy)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, max(1, round(2 * scale)))
        cv2.putText(canvas, box.text, (max(x1, 0), max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, max(0.3, 0.5 * scale), color, 1, cv2.LINE_AA)
    if not cv2.imwrite(str(out), canvas):
        raise InputError(f"cannot write {out}", hint="give a .png path in a folder you can write")


# -- match, check ----------------------------------------------------------------------------------------------


def cmd_match(args: argparse.Namespace) -> int:
    inputs, texts = _images_and_texts(args, "--texts", "texts")

    def process(model):
        def run(items: list[Input], arrays: list[Any]):
            (item,), (array,) = items, arrays
            probs = model.match(array, texts)
            record = {"matches": [{"text": t, "probability": p} for t, p in zip(texts, probs)]}
            return [(record, "\n".join(f"{item.path}: {p:.3f}  {t}" for t, p in zip(texts, probs)))]

        return run

    return _run(args, inputs, process)


def cmd_check(args: argparse.Namespace) -> int:
    inputs = inputs_of(args.images)
    statements = list(args.statement)

    def process(model):
        def run(items: list[Input], arrays: list[Any]):
            (item,), (array,) = items, arrays
            found = model.check(array, statements, threshold=args.threshold)
            record = {
                "verdicts": [{"statement": s, "verdict": v.verdict, "probability": v.probability, "threshold": v.threshold} for s, v in zip(statements, found)]
            }
            human = "\n".join(
                f"{item.path}: {'true' if v.verdict else 'false'} ({v.probability:.3f}, threshold {v.threshold:.3f})  {s}"
                for s, v in zip(statements, found)
            )
            return [(record, human)]

        return run

    return _run(args, inputs, process)


# -- retrieve --------------------------------------------------------------------------------------------------


def cmd_retrieve(args: argparse.Namespace) -> int:
    """Retrieval ranks every image against every text, so it runs once over all images that decode; images
    that do not are error records. Results: one record per image query, then one per text query."""
    inputs = inputs_of(args.images)
    texts = list(args.texts)
    with Output.from_args(args) as out:
        model = load_model(args)
        out.header = {"backend": model.info}
        kept: list[Input] = []
        arrays = []
        for item in inputs:
            try:
                arrays.append(decode(item.path))
                kept.append(item)
            except ImageError as exc:
                if args.fail_fast:
                    raise
                out.failure({"query": "image", **item.record}, exc)
        if kept:
            found = model.retrieve(arrays, texts, k=args.k)
            for item, ranked in zip(kept, found.texts_for_image):
                ranked_texts = [{"index": r.index, "text": texts[r.index], "probability": r.probability, "logit": r.logit} for r in ranked]
                record = {"query": "image", **item.record, "texts": ranked_texts}
                human = "\n".join([f"{item.path}:", *(f"  {r.probability:.3f}  {texts[r.index]}" for r in ranked)])
                out.result(record, human)
            for t, ranked in enumerate(found.images_for_text):
                record = {
                    "query": "text",
                    "index": t,
                    "text": texts[t],
                    "images": [
                        {"index": kept[r.index].index, "image": str(kept[r.index].path), "probability": r.probability, "logit": r.logit} for r in ranked
                    ],
                }
                human = "\n".join([f"{texts[t]!r}:", *(f"  {r.probability:.3f}  {kept[r.index].path}" for r in ranked)])
                out.result(record, human, counted=False)  # a text query is a result, not an input
        out.finish()
    note_embedded_model(args, out)
    return out.exit_code()


# -- answer, nlvr ----------------------------------------------------------------------------------------------


def cmd_answer(args: argparse.Namespace) -> int:
    inputs = inputs_of(args.images)
    answers = _answers(args)

    def process(model):
        def run(items: list[Input], arrays: list[Any]):
            found = model.answer(arrays, [args.question] * len(arrays), answers, k=args.k)
            return [
                (
                    {
                        "question": args.question,
                        "answer": a.text,
                        "probability": a.probability,
                        "share": a.share,
                        "candidates": [{"answer": c.text, "probability": c.probability, "share": c.share} for c in a.candidates],
                    },
                    f"{item.path}: {a.text}",
                )
                for item, a in zip(items, found)
            ]

        return run

    return _run(args, inputs, process, chunk=CLI_CHUNK)


def _answers(args: argparse.Namespace) -> list[str] | None:
    if args.answers_file is None:
        return list(args.answers) if args.answers else None
    try:
        answers = [line.strip() for line in args.answers_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read --answers-file {args.answers_file}: {getattr(exc, 'strerror', None) or exc}") from None
    if not answers:
        raise InputError(f"--answers-file {args.answers_file} holds no answers", hint="one candidate answer a line")
    return answers


def cmd_nlvr(args: argparse.Namespace) -> int:
    left, right = image_file(args.left, "LEFT"), image_file(args.right, "RIGHT")
    statements = list(args.statements)
    with Output.from_args(args) as out:
        model = load_model(args)
        out.header = {"backend": model.info}
        found = model.nlvr(decode(left), decode(right), statements)
        record = {
            "index": 0,
            "left": str(left),
            "right": str(right),
            "verdicts": [{"statement": s, "verdict": v.verdict, "probability": v.probability, "threshold": v.threshold} for s, v in zip(statements, found)],
        }
        out.result(record, "\n".join(f"{'true' if v.verdict else 'false'} ({v.probability:.3f})  {s}" for s, v in zip(statements, found)))
        out.finish()
    note_embedded_model(args, out)
    return out.exit_code()


# -- wiring ----------------------------------------------------------------------------------------------------


def add_commands(sub, common: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The task verbs, each with the model and output options."""
    commands = []

    def task(name: str, help: str, run, *examples: str) -> argparse.ArgumentParser:
        epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
        command = sub.add_parser(name, help=help, parents=[common], epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        command.set_defaults(run=run)
        commands.append(command)
        return command

    caption = task("caption", "caption images (files or folders)", cmd_caption,
                   "xvlm-edge caption --examples", "xvlm-edge caption photos/ --model captioning_dir --jsonl")  # fmt: skip
    caption.add_argument("images", nargs="*", help="image files or folders of images")
    caption.add_argument("--examples", action="store_true", help="also caption the example images shipped with the package")
    caption.add_argument("--beams", type=positive_int, help="beam width; 1 = greedy (default: the checkpoint's, 3 officially)")
    caption.add_argument("--max-length", type=positive_int, help="longest caption in tokens, the prompt's included (default: the checkpoint's)")
    caption.add_argument("--min-length", type=non_negative_int, help="beam search only: shortest caption in tokens, prompt included")

    ground = task("ground", "locate phrases in images (bbox head)", cmd_ground,
                  'xvlm-edge ground street.jpg "the man crossing the street" --draw out.png --model bbox_dir',
                  'xvlm-edge ground photos/ street.jpg --phrases "a red car" "the dog" --jsonl --draw boxes/')  # fmt: skip
    ground.add_argument("items", nargs="+", metavar="IMAGE", help="IMAGE PHRASE...; or, with --phrases, image files and folders")
    ground.add_argument("--phrases", nargs="+", action="extend", help="phrases to ground in every image (then every positional is an image)")
    ground.add_argument("--draw", type=Path, help="write the image with its boxes drawn: a .png path for one image, a folder for several")

    match = task("match", "ITM probability that texts describe images", cmd_match,
                 'xvlm-edge match cat.jpg "a cat" "a dog" --model retrieval_dir', 'xvlm-edge match photos/ --texts "a cat" "a dog" --jsonl')  # fmt: skip
    match.add_argument("items", nargs="+", metavar="IMAGE", help="IMAGE TEXT...; or, with --texts, image files and folders")
    match.add_argument("--texts", nargs="+", action="extend", help="texts to match against every image (then every positional is an image)")

    check = task("check", "is a statement true of the image(s)? (ITM against a threshold)", cmd_check,
                 'xvlm-edge check homework/ --statement "three apples on a plate" --model retrieval_dir')  # fmt: skip
    check.add_argument("images", nargs="+", help="image files or folders of images")
    check.add_argument("--statement", "--statements", dest="statement", nargs="+", action="extend", required=True, help="one or more statements")
    check.add_argument("--threshold", type=probability, help="probability from 0 to 1 at which a statement is true (default: the checkpoint's calibrated one)")

    retrieve = task("retrieve", "rank texts per image and images per text (ITC top-k, ITM re-rank)", cmd_retrieve,
                    'xvlm-edge retrieve --images photos/ --texts "a red bike" "two dogs" --model retrieval_dir')  # fmt: skip
    retrieve.add_argument("--images", nargs="+", action="extend", required=True, help="image files or folders")
    retrieve.add_argument("--texts", nargs="+", action="extend", required=True, help="candidate texts")
    retrieve.add_argument("-k", type=positive_int, help="candidates re-ranked per query (default: the checkpoint's k_test)")

    answer = task("answer", "answer a question about image(s) (VQA)", cmd_answer,
                  'xvlm-edge answer kitchen.jpg --question "what color is the kettle?" --model vqa_dir')  # fmt: skip
    answer.add_argument("images", nargs="+", help="image files or folders of images")
    answer.add_argument("--question", required=True, help="the question, asked of every image")
    answer.add_argument("-k", type=positive_int, help="candidate answers re-scored (default: the checkpoint's k_test); needs a list to rank")
    group = answer.add_mutually_exclusive_group()
    group.add_argument("--answers", nargs="+", help="candidate answers to rank (default: the model's answer_list.json, else open-ended generation)")
    group.add_argument("--answers-file", type=Path, help="candidate answers, one a line")

    nlvr = task("nlvr", "is a statement true of an image pair? (NLVR2)", cmd_nlvr, 'xvlm-edge nlvr left.jpg right.jpg "both images show dogs" --model nlvr_dir')
    nlvr.add_argument("left", help="the left image file")
    nlvr.add_argument("right", help="the right image file")
    nlvr.add_argument("statements", nargs="+", help="one or more statements")

    for command in commands:
        add_model_options(command)
        add_output_options(command)
    return commands
