"""What the `xvlm-edge` commands share: the parser class, typed option values, the model options and
loading, image sources, and the per-input runner that decodes lazily and never loses finished work."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xvlm_edge.cli._errors import ChosenBackendError, UsageError
from xvlm_edge.cli._output import Output, note
from xvlm_edge.errors import BackendUnavailableError, EngineError, ImageError, InputError

#: Images decoded and sent per model call by the verbs whose API call takes a list (caption, answer): at most
#: this many decoded images are held at once, and results stream out after each call.
CLI_CHUNK = 8

#: Failures that belong to one input: the run records them and goes on (unless --fail-fast). Anything else
#: (a bad option, a wrong checkpoint, a text every input shares) stops the run.
PER_INPUT_ERRORS = (ImageError, EngineError)

EMBEDDED_MODEL_NOTE = (
    "these come from the embedded demo model (4.3M parameters, trained on synthetic shapes only): it misplaces about "
    "one box in nine (one in four on photographed paper) and misjudges many counts; see xvlm_edge/assets/MODEL_CARD.md"
)


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: a usage mistake is one line on stderr and exit 2 (via `main`)."""

    def error(self, message: str):  # argparse calls this for every refusal of the command line
        raise UsageError(message, hint=f"see {self.prog} --help")


# -- option values: refused by argparse, before any work, naming the flag -----------------------------------------


def _whole_number(least: int):
    """An argparse type: a whole number >= `least`, refused naming the flag otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {least}, got {text!r}")
        return value

    return parse


positive_int = _whole_number(1)
non_negative_int = _whole_number(0)


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a probability from 0 to 1, got {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be a probability from 0 to 1, got {text!r}")
    return value


# -- shared options ----------------------------------------------------------------------------------------------

LOG_LEVELS = ("debug", "info", "warning", "error")


def common_options() -> argparse.ArgumentParser:
    """--debug and --log-level, on every verb (argparse `parents=`)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="print the traceback of an error (also: XVLM_EDGE_DEBUG=1)")
    common.add_argument("--log-level", choices=LOG_LEVELS, default="warning", help="library log messages shown on stderr (default: warning)")
    return common


def add_threads(command: argparse.ArgumentParser, help: str = "CPU threads (default: the CPUs the machine's load leaves idle)") -> None:
    command.add_argument("--threads", type=positive_int, help=help)


def add_model_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--model", help="checkpoint: an xvlm_edge directory or an official .th (default: the embedded demo model)")
    command.add_argument("--backend", help="auto (default: torch), torch, onnxruntime (needs xvlm-edge export) or tensorrt (needs xvlm-edge engines)")
    command.add_argument("--precision", help="fp32 (default); fp16/bf16 need CUDA; int8 needs an INT8 export")
    command.add_argument("--device", help="cpu or cuda[:N] (default: cuda when present)")
    add_threads(command)


def add_output_options(command: argparse.ArgumentParser) -> None:
    mode = command.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="print one JSON document on stdout when the run ends")
    mode.add_argument("--jsonl", action="store_true", help="print one JSON object per input on stdout as it finishes (failed inputs: error records)")
    command.add_argument("--output", type=Path, metavar="FILE", help="also write the results to FILE, atomically: it appears only when the run ends")
    command.add_argument("--fail-fast", action="store_true", help="stop at the first input that fails (default: record it and go on)")


def load_model(args: argparse.Namespace):
    """`xvlm_edge.load` with the command's model options. A backend, device or precision the user named
    that is not available here is their choice to change: ChosenBackendError (exit 2)."""
    import xvlm_edge

    named = args.backend is not None or args.precision is not None or args.device is not None
    try:
        return xvlm_edge.load(
            args.model, backend=args.backend or "auto", precision=args.precision or "fp32", device=args.device, threads=args.threads
        )
    except BackendUnavailableError as exc:
        if named and not isinstance(exc, ChosenBackendError):
            raise ChosenBackendError(str(exc), hint=exc.hint) from exc
        raise


def note_embedded_model(args: argparse.Namespace, out: Output) -> None:
    """One line on stderr saying what the embedded demo model can and cannot do, when it produced the results."""
    if args.model is None and out.succeeded:
        note(EMBEDDED_MODEL_NOTE)


# -- image sources -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Input:
    """One image of a run: its position among the run's inputs (a repeated file keeps its own) and its path."""

    index: int
    path: Path

    @property
    def record(self) -> dict[str, Any]:
        return {"index": self.index, "image": str(self.path)}


def image_files(sources: Sequence[str]) -> list[Path]:
    """Files as given, folders expanded to their image files (`preprocess.IMAGE_SUFFIXES`, sorted, dot-files
    skipped). A missing path or a folder without images is refused before any work."""
    from xvlm_edge.preprocess import IMAGE_SUFFIXES

    paths: list[Path] = []
    for source in sources:
        if not source:
            raise InputError("an image path is empty", hint="pass image files or folders")
        path = Path(source)
        if path.is_dir():
            try:
                found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
            except OSError as exc:
                raise InputError(f"cannot read folder {path}: {exc.strerror}") from None
            if not found:
                raise InputError(f"folder {path} holds no images", hint=f"image files end in {', '.join(IMAGE_SUFFIXES)}")
            paths += found
        elif path.exists():
            paths.append(path)
        else:
            raise InputError(f"image not found: {path}", hint="check the path")
    return paths


def image_file(source: str, what: str) -> Path:
    """One image file (a folder is refused: this argument takes exactly one image)."""
    path = Path(source)
    if source and path.is_dir():
        raise InputError(f"{what} {path} is a folder, not an image file", hint=f"{what} takes one image file")
    (found,) = image_files([source])
    return found


def inputs_of(sources: Sequence[str]) -> list[Input]:
    return [Input(i, path) for i, path in enumerate(image_files(sources))]


def decode(path: Path):
    """An image file as the API decodes it (HWC uint8 RGB); ImageError names the file."""
    from xvlm_edge.preprocess import load_image

    return load_image(str(path))


# -- the per-input runner ------------------------------------------------------------------------------------------

#: (inputs, their decoded images) -> one (record fields, human lines) per input, in order.
Process = Callable[[list[Input], list[Any]], list[tuple[dict[str, Any], str]]]


def run_inputs(out: Output, inputs: list[Input], process: Process, *, chunk: int = 1, fail_fast: bool = False) -> None:
    """Run `process` over `inputs`, `chunk` at a time, and emit each input's result (in input order) as soon
    as its chunk ends.

    Images are decoded just before their chunk's model call, so at most `chunk` decoded images are held (never
    the whole folder). An input that cannot be decoded, or whose model call fails (`PER_INPUT_ERRORS`), becomes
    an error record and the run goes on; with `fail_fast` its error stops the run instead.
    """
    from tqdm import tqdm

    shown = out.mode == "human" and sys.stderr.isatty() and len(inputs) > chunk
    with tqdm(total=len(inputs), unit="img", file=sys.stderr, disable=not shown) as bar:
        for start in range(0, len(inputs), chunk):
            batch = inputs[start : start + chunk]
            outcomes: dict[int, Any] = {}
            ready: list[tuple[Input, Any]] = []
            for item in batch:
                try:
                    ready.append((item, decode(item.path)))
                except ImageError as exc:
                    if fail_fast:
                        raise
                    outcomes[item.index] = exc
            if ready:
                outcomes.update(_process(ready, process, fail_fast))
            for item in batch:
                outcome = outcomes[item.index]
                if isinstance(outcome, BaseException):
                    out.failure(item.record, outcome)
                else:
                    fields, human = outcome
                    out.result({**item.record, **fields}, human)
            bar.update(len(batch))


def _process(ready: list[tuple[Input, Any]], process: Process, fail_fast: bool) -> dict[int, Any]:
    """{input index: (record fields, human lines), or the input's error}."""
    items = [item for item, _ in ready]
    try:
        results = process(items, [array for _, array in ready])
    except PER_INPUT_ERRORS as exc:
        if fail_fast:
            raise
        if len(ready) == 1:
            return {items[0].index: exc}
        found: dict[int, Any] = {}
        for one in ready:  # find which input(s) of the chunk fail, and keep the others' results
            found.update(_process([one], process, fail_fast))
        return found
    return {item.index: result for item, result in zip(items, results)}
