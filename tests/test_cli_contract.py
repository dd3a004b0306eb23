"""The `xvlm-edge` bad-input contract (issue 13), table-driven.

Every mistake a user can make on the command line exits 2 with ONE line on stderr that names the problem (and,
where there is one, a hint on the same line), and never a traceback; failures that are not the user's exit 1,
also in one line; SIGINT exits 130 with one line, SIGTERM 143, and a closed stdout ends the run quietly (141).
A folder run streams one result per input, turns a failed input into an error record and goes on (exit 1),
and writes `--output` atomically: a killed run leaves every finished line on stdout and no partial file.

The table runs in-process (`main(argv)`, no interpreter start per case); signals, exit statuses and streaming
run in real subprocesses.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from xvlm_edge.checkpoint import Checkpoint, save
from xvlm_edge.cli import _errors, main
from xvlm_edge.cli._errors import ERRORS, fit_hint
from xvlm_edge.cli._output import Output
from xvlm_edge.config import HEADS, get_preset
from xvlm_edge.errors import (
    BackendUnavailableError,
    CheckpointError,
    EngineError,
    ForcedExportWarning,
    ImageError,
    InputError,
    StaleExportError,
    TextError,
    XVLMEdgeError,
)
from xvlm_edge.manifest import ExportManifest, export_dir
from xvlm_edge.models.xvlm import XVLM
from xvlm_edge.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny random model with every head, good and broken images, and broken model directories."""
    root = tmp_path_factory.mktemp("contract")
    torch.manual_seed(0)
    config = get_preset("tiny", HEADS)
    model = save(Checkpoint(XVLM(config).eval(), Tokenizer.default(), config), root / "model")
    rng = np.random.default_rng(0)
    good = root / "good.png"
    cv2.imwrite(str(good), rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    (root / "empty.png").write_bytes(b"")
    (root / "corrupt.png").write_bytes(b"this is not an image at all")
    (root / "truncated.png").write_bytes(good.read_bytes()[:120])
    folder = root / "folder"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    empty = root / "empty_folder"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    # config.json with a field of the wrong type; weights that are not safetensors; an export of other weights
    big = _model_copy(model, root / "big")
    settings = json.loads((big / "config.json").read_text())
    settings["vision"]["image_res"] = "big"
    (big / "config.json").write_text(json.dumps(settings))
    corrupt = _model_copy(model, root / "corrupt_weights")
    (corrupt / "model.safetensors").unlink()
    (corrupt / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    stale = _model_copy(model, root / "stale")
    directory = export_dir(stale, "onnxruntime", "fp32")
    directory.mkdir(parents=True)
    ExportManifest(target="onnxruntime", precision="fp32", weights_sha256="0" * 64, config={}, graphs={}).write(directory)
    (root / "fake.th").write_text("not a checkpoint")
    return {
        "root": str(root),
        "model": str(model),
        "good": str(good),
        "absent": str(root / "absent.png"),
        "empty": str(root / "empty.png"),
        "corrupt": str(root / "corrupt.png"),
        "truncated": str(root / "truncated.png"),
        "folder": str(folder),
        "empty_folder": str(empty),
        "big": str(big),
        "corrupt_weights": str(corrupt),
        "stale": str(stale),
        "fake_th": str(root / "fake.th"),
    }


def _model_copy(model: Path, to: Path) -> Path:
    """The model's files in another directory (weights symlinked: 65 MB need not be copied)."""
    to.mkdir()
    for name in ("config.json", "vocab.txt"):
        shutil.copy(model / name, to / name)
    (to / "model.safetensors").symlink_to(model / "model.safetensors")
    return to


# -- the table ----------------------------------------------------------------------------------------------------

M = ["--model", "{model}", "--threads", "1"]  # the tiny random model, one thread

#: Each verb with one image argument set to {img}.
IMAGE_VERBS = {
    "caption": ["caption", "{img}", *M],
    "ground": ["ground", "{img}", "the star", *M],
    "match": ["match", "{img}", "a red star", *M],
    "check": ["check", "{img}", "--statement", "a red star", *M],
    "retrieve": ["retrieve", "--images", "{img}", "--texts", "a red star", *M],
    "answer": ["answer", "{img}", "--question", "what color is it?", *M],
    "nlvr": ["nlvr", "{good}", "{img}", "a red star", *M],
    "smoke": ["smoke", "--image", "{img}", "--threads", "1"],
}
IMAGE_PROBLEMS = {
    "missing": ("{absent}", "image not found"),
    "empty": ("{empty}", "empty (0 bytes)"),
    "corrupt": ("{corrupt}", "cannot decode image data"),
    "truncated": ("{truncated}", "corrupt or truncated"),
}

CASES: list = [
    pytest.param([a.replace("{img}", path) for a in argv], 2, needle, id=f"{verb}-{problem}-image")
    for verb, argv in IMAGE_VERBS.items()
    for problem, (path, needle) in IMAGE_PROBLEMS.items()
]
CASES += [
    # a folder where one file is expected, an empty folder
    pytest.param(["nlvr", "{folder}", "{good}", "a star", *M], 2, "LEFT {folder} is a folder", id="nlvr-left-folder"),
    pytest.param(["nlvr", "{good}", "{folder}", "a star", *M], 2, "RIGHT {folder} is a folder", id="nlvr-right-folder"),
    pytest.param(["smoke", "--image", "{folder}"], 2, "--image {folder} is a folder", id="smoke-image-folder"),
    pytest.param(["convert", "{folder}", "{root}/out"], 2, "is a folder; convert reads one official", id="convert-folder"),
    pytest.param(["answer", "{good}", "--question", "q?", "--answers-file", "{folder}", *M], 2, "cannot read --answers-file", id="answers-file-folder"),
    pytest.param(["ground", "{folder}", "--phrases", "a star", "--draw", "{good}", *M], 2, "--draw must be an existing folder", id="draw-file-for-folder"),
    pytest.param(["ground", "{good}", "a star", "--draw", "{root}/boxes.jpg", *M], 2, "is not a .png path", id="draw-not-png"),
    pytest.param(["caption", "{empty_folder}", *M], 2, "holds no images", id="caption-empty-folder"),
    pytest.param(["ground", "{empty_folder}", "a star", *M], 2, "holds no images", id="ground-empty-folder"),
    pytest.param(["match", "{empty_folder}", "a star", *M], 2, "holds no images", id="match-empty-folder"),
    pytest.param(["check", "{empty_folder}", "--statement", "a star", *M], 2, "holds no images", id="check-empty-folder"),
    pytest.param(["retrieve", "--images", "{empty_folder}", "--texts", "a star", *M], 2, "holds no images", id="retrieve-empty-folder"),
    pytest.param(["answer", "{empty_folder}", "--question", "q?", *M], 2, "holds no images", id="answer-empty-folder"),
    pytest.param(["caption", "", *M], 2, "image path is empty", id="caption-empty-path"),
    # bad numbers: refused by argparse before any work, naming the flag
    pytest.param(["caption", "{good}", "--beams", "0", *M], 2, "argument --beams: must be a whole number >= 1, got '0'", id="beams-0"),
    pytest.param(["caption", "{good}", "--beams", "2.5", *M], 2, "argument --beams: must be a whole number >= 1, got '2.5'", id="beams-2.5"),
    pytest.param(["caption", "{good}", "--beams", "-1", *M], 2, "argument --beams", id="beams-negative"),
    pytest.param(["caption", "{good}", "--max-length", "0", *M], 2, "argument --max-length", id="max-length-0"),
    pytest.param(["caption", "{good}", "--max-length", "ten", *M], 2, "argument --max-length: must be a whole number", id="max-length-word"),
    pytest.param(["caption", "{good}", "--min-length", "-1", *M], 2, "argument --min-length: must be a whole number >= 0", id="min-length-negative"),
    pytest.param(["check", "{good}", "--statement", "s", "--threshold", "2", *M], 2, "--threshold: must be a probability from 0 to 1", id="threshold-2"),
    pytest.param(["check", "{good}", "--statement", "s", "--threshold", "-0.1", *M], 2, "--threshold: must be a probability", id="threshold-negative"),
    pytest.param(["check", "{good}", "--statement", "s", "--threshold", "nan", *M], 2, "--threshold: must be a probability", id="threshold-nan"),
    pytest.param(["check", "{good}", "--statement", "s", "--threshold", "high", *M], 2, "--threshold: must be a probability", id="threshold-word"),
    pytest.param(["answer", "{good}", "--question", "q?", "-k", "0", *M], 2, "argument -k: must be a whole number >= 1", id="answer-k-0"),
    pytest.param(["retrieve", "--images", "{good}", "--texts", "t", "-k", "0", *M], 2, "argument -k", id="retrieve-k-0"),
    pytest.param(["retrieve", "--images", "{good}", "--texts", "t", "-k", "1.5", *M], 2, "argument -k", id="retrieve-k-fraction"),
    pytest.param(["caption", "{good}", "--model", "{model}", "--threads", "0"], 2, "argument --threads: must be a whole number >= 1", id="threads-0"),
    pytest.param(["smoke", "--threads", "0"], 2, "argument --threads", id="smoke-threads-0"),
    pytest.param(["convert", "{fake_th}", "{root}/out", "--threads", "-2"], 2, "argument --threads", id="convert-threads-negative"),
    pytest.param(["export", "{model}", "--threads", "x"], 2, "argument --threads", id="export-threads-word"),
    pytest.param(["export", "{model}", "--precision", "int8", "--sensitive-search", "-1"], 2, "argument --sensitive-search", id="sensitive-search-negative"),
    pytest.param(["export", "{model}", "--min-caption-agreement", "1.5"], 2, "--min-caption-agreement: must be a probability", id="agreement-1.5"),
    pytest.param(["engines", "{root}", "--max-images", "0"], 2, "argument --max-images", id="engines-max-images-0"),
    pytest.param(["bench", "--batch", "0"], 2, "batch sizes must be positive", id="bench-batch-0"),
    pytest.param(["bench", "--batch", "2.5"], 2, "argument --batch: invalid int value", id="bench-batch-fraction"),
    pytest.param(["bench", "--repeats", "0"], 2, "repeats must be a positive integer", id="bench-repeats-0"),
    pytest.param(["bench", "--tasks", "foo"], 2, "unknown tasks ['foo']", id="bench-tasks-foo"),
    pytest.param(["bench", "--threads", "0"], 2, "threads must be a positive integer", id="bench-threads-0"),
    # numbers only the model can judge: refused by the API, before any decoding
    pytest.param(["caption", "{good}", "--beams", "1000", *M], 2, "num_beams must be an integer from 1 to", id="beams-too-many"),
    pytest.param(["caption", "{good}", "--max-length", "100000", *M], 2, "max_length must be an integer from", id="max-length-too-long"),
    pytest.param(["caption", "{good}", "--beams", "1", "--min-length", "9", *M], 2, "applies to beam search only", id="min-length-greedy"),
    pytest.param(["answer", "{good}", "--question", "q?", "-k", "2", *M], 2, "k ranks candidate answers", id="answer-k-without-list"),
    pytest.param(["ground", "{good}", " ?! ", *M], 2, "empty", id="ground-empty-phrase"),
    pytest.param(["answer", "{good}", "--question", "?!", *M], 2, "empty after question cleaning", id="answer-empty-question"),
    # bad model directories and checkpoints
    pytest.param(["caption", "{good}", "--model", "{root}/nowhere"], 2, "no checkpoint at", id="model-missing"),
    pytest.param(["caption", "{good}", "--model", ""], 2, "path is an empty string", id="model-empty-string"),
    pytest.param(["match", "{good}", "a star", "--model", "{big}"], 2, "vision.image_res must be a positive integer, got 'big'", id="model-image-res-big"),
    pytest.param(["match", "{good}", "a star", "--model", "{corrupt_weights}"], 2, "model.safetensors is corrupt", id="model-corrupt-weights"),
    pytest.param(["match", "{good}", "a star", "--model", "{fake_th}"], 2, "fake.th is", id="model-not-a-checkpoint"),
    pytest.param(["match", "{good}", "a star", "--model", "{good}"], 2, "good.png is", id="model-is-an-image"),
    pytest.param(["match", "{good}", "a star", "--model", "{stale}", "--backend", "onnxruntime"], 2, "was made from other weights", id="stale-export"),
    pytest.param(["nlvr", "{good}", "{good}", "a star", "--threads", "1"], 2, "`nlvr` needs the nlvr head", id="embedded-model-lacks-nlvr"),
    pytest.param(["convert", "{fake_th}", "{root}/out"], 2, "fake.th is corrupt", id="convert-corrupt"),
    pytest.param(["convert", "{root}/absent.th", "{root}/out"], 2, "checkpoint not found", id="convert-missing"),
    pytest.param(["export", "{root}/nowhere"], 2, "is not a checkpoint directory", id="export-missing-dir"),
    pytest.param(["bench", "--model", "{root}/nowhere"], 2, "not a checkpoint directory", id="bench-missing-model"),
    # backends, devices and precisions the user named
    pytest.param(["caption", "{good}", *M, "--backend", "foo"], 2, "unknown backend 'foo'", id="backend-unknown"),
    pytest.param(["caption", "{good}", *M, "--device", "tpu"], 2, "unknown device 'tpu'", id="device-unknown"),
    pytest.param(
        ["caption", "{good}", *M, "--device", "cuda"], 2, "no CUDA device (hint: use --device cpu)", id="device-cuda-absent",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
    ),  # fmt: skip
    pytest.param(["caption", "{good}", *M, "--precision", "fp64"], 2, "unknown precision 'fp64'", id="precision-unknown"),
    pytest.param(["caption", "{good}", *M, "--precision", "int8"], 2, "int8 runs from an INT8 export (hint: xvlm-edge export", id="precision-int8-torch"),
    pytest.param(["caption", "{good}", *M, "--backend", "onnxruntime"], 2, "has no onnxruntime fp32 export (", id="backend-without-export"),
    pytest.param(["caption", "{good}", *M, "--backend", "tensorrt"], 2, "has no tensorrt fp32 export", id="tensorrt-without-export"),
    pytest.param(["export", "{model}", "--precision", "fp16"], 2, "fp16", id="export-fp16-for-onnxruntime"),
    # bad --output paths: checked before the model loads
    pytest.param(["caption", "{good}", *M, "--output", "{root}/nope/out.jsonl"], 2, "folder {root}/nope does not exist", id="output-no-folder"),
    pytest.param(["caption", "{good}", *M, "--output", "{folder}"], 2, "--output {folder} is a folder", id="output-is-folder"),
    # usage
    pytest.param([], 2, "the following arguments are required: COMMAND", id="no-command"),
    pytest.param(["paint"], 2, "invalid choice: 'paint'", id="unknown-command"),
    pytest.param(["caption", *M], 2, "no images given (hint: pass image files or folders, or --examples)", id="caption-nothing"),
    pytest.param(["ground", "{good}", *M], 2, "no phrases given", id="ground-no-phrase"),
    pytest.param(["match", "{good}", *M], 2, "no texts given", id="match-no-text"),
    pytest.param(["check", "{good}", *M], 2, "the following arguments are required: --statement", id="check-no-statement"),
    pytest.param(["caption", "{good}", "--bogus", *M], 2, "unrecognized arguments: --bogus (hint: see xvlm-edge caption --help)", id="unknown-flag"),
    pytest.param(["caption", "{good}", "--json", "--jsonl", *M], 2, "not allowed with argument --json", id="json-and-jsonl"),
    pytest.param(["answer", "{good}", "--question", "q", "--answers", "a", "--answers-file", "f", *M], 2, "not allowed with", id="answers-twice"),
    pytest.param(["export", "{model}", "--strict", "--force"], 2, "not allowed with", id="strict-and-force"),
    pytest.param(["export", "{model}", "--precision", "fp32", "--sensitive-search", "2"], 2, "int8 exports only", id="int8-flag-on-fp32"),
]


def test_the_table_is_as_large_as_promised() -> None:
    assert len(CASES) >= 70


@pytest.mark.parametrize(("argv", "code", "needle"), CASES)
def test_bad_input(argv: list[str], code: int, needle: str, files: dict[str, str], capsys: pytest.CaptureFixture) -> None:
    args = [a.format(**files) for a in argv]
    assert main(args) == code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.out == ""  # human mode: no result, so nothing on stdout
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("xvlm-edge: error: ") and needle.format(**files) in lines[0], lines[0]


# -- the error table, hints, debug, warnings -------------------------------------------------------------------------


def test_the_table_lists_subclasses_before_their_bases() -> None:
    kinds = [row.kind for row in ERRORS]
    for i, later in enumerate(kinds):
        assert not any(issubclass(later, earlier) for earlier in kinds[:i]), f"{later.__name__} is shadowed by an earlier row"
    codes = {kind: _errors.exit_code(kind("x")) for kind in (ImageError, TextError, InputError, CheckpointError, StaleExportError)}
    assert set(codes.values()) == {2}
    assert _errors.exit_code(BackendUnavailableError("x")) == 1  # what the machine lacks
    assert _errors.exit_code(_errors.ChosenBackendError("x")) == 2  # what the user named
    assert _errors.exit_code(EngineError("x")) == 1 and _errors.exit_code(XVLMEdgeError("x")) == 1
    assert _errors.exit_code(ValueError("x")) == 1  # a bug, not a user mistake: built-ins are never mapped
    assert _errors.describe(ValueError("too many values to unpack"))[1] == (
        "internal error: ValueError: too many values to unpack (run with --debug for the traceback)"
    )


def test_hints_name_only_flags_the_command_has() -> None:
    from xvlm_edge.cli import build_parser

    parser = build_parser()
    commands = dict(parser._subparsers._group_actions[0].choices)
    vocab = "pass the vocab.txt the checkpoint was trained with (--vocab)"
    assert fit_hint(vocab, commands["convert"]) == vocab
    assert fit_hint(vocab, commands["caption"]).startswith("convert it first with its vocabulary: xvlm-edge convert CHECKPOINT DIR --vocab")
    assert fit_hint("use device='cpu'", commands["caption"]) == "use --device cpu"
    assert fit_hint("run: xvlm-edge export DIR --target onnxruntime --precision fp32", commands["caption"]).endswith("--precision fp32")
    assert fit_hint("xvlm_edge.load(path, backend='torch') gives the module", commands["match"]).startswith("xvlm_edge.load(path, backend='torch')")
    assert fit_hint("try --frobnicate", commands["match"]) == ""  # a flag nobody has: no hint rather than a wrong one


@pytest.mark.parametrize(
    ("raised", "code", "line"),
    [
        (RuntimeError("CUDA error: device-side assert\n" + "  at frame\n" * 40), 1,
         "internal error: RuntimeError: CUDA error: device-side assert at frame"),
        (ValueError("too many values to unpack (expected 1)"), 1, "internal error: ValueError: too many values to unpack (expected 1)"),
        (CheckpointError("vocabulary has 30522 tokens but the checkpoint's embeddings have 156",
                         hint="pass the vocab.txt the checkpoint was trained with (--vocab)"), 2,
         "(hint: convert it first with its vocabulary: xvlm-edge convert CHECKPOINT DIR --vocab VOCAB.txt, then pass --model DIR)"),
        (BackendUnavailableError("TensorRT is not installed", hint="pip install tensorrt"), 2,
         "TensorRT is not installed (hint: pip install tensorrt)"),  # the user named --backend: their choice
    ],
)  # fmt: skip
def test_failures_inside_a_verb_are_one_line(raised, code: int, line: str, files, monkeypatch, capsys) -> None:
    import xvlm_edge

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(xvlm_edge, "load", fail)
    assert main(["caption", files["good"], "--backend", "torch", "--threads", "1"]) == code
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and line in err and "Traceback" not in err


def test_debug_flag_and_environment_show_the_traceback(files, monkeypatch, capsys) -> None:
    import xvlm_edge

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(xvlm_edge, "load", fail)
    assert main(["caption", files["good"], "--debug"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.splitlines()[-1] == "xvlm-edge: error: internal error: RuntimeError: boom (run with --debug for the traceback)"
    monkeypatch.setenv("XVLM_EDGE_DEBUG", "1")
    assert main(["caption", files["good"]]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_the_accuracy_gates_hint_reaches_the_terminal(files, monkeypatch, capsys) -> None:
    import xvlm_edge.export
    from xvlm_edge.export.gate import AccuracyGateError

    def refuse(*args, **kwargs):
        raise AccuracyGateError({"caption_agreement": 0.5}, ["caption_agreement 0.5000 < 0.95"])

    monkeypatch.setattr(xvlm_edge.export, "export_model", refuse)
    assert main(["export", files["model"], "--precision", "int8", "--strict"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "refused by the accuracy gate: caption_agreement 0.5000 < 0.95 (hint: recalibrate on representative images (--calibration DIR)" in line


def test_ctrl_c_during_export_is_one_line(files, monkeypatch, capsys) -> None:
    import xvlm_edge.export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(xvlm_edge.export, "export_model", interrupted)
    assert main(["export", files["model"]]) == 130
    assert capsys.readouterr().err == "xvlm-edge: error: interrupted\n"


@pytest.mark.filterwarnings("default")
def test_warnings_print_as_one_line_when_run_as_the_program(files, monkeypatch, capsys) -> None:
    """`main()` with no argv is the program: it shows warnings its own way (and restores the display after)."""
    import xvlm_edge

    real_load = xvlm_edge.load

    def forced(*args, **kwargs):
        warnings.warn("the export failed its accuracy gate and was written with --force (caption 0.5)\nsecond line", ForcedExportWarning, stacklevel=2)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(xvlm_edge, "load", forced)
    monkeypatch.setattr(sys, "argv", ["xvlm-edge", "match", files["good"], "a star", "--model", files["model"], "--threads", "1", "--jsonl"])
    shown = warnings.showwarning
    assert main() == 0
    assert warnings.showwarning is shown
    captured = capsys.readouterr()
    assert captured.err == "xvlm-edge: warning: the export failed its accuracy gate and was written with --force (caption 0.5) second line\n"
    assert json.loads(captured.out)["matches"][0]["text"] == "a star"


@pytest.mark.parametrize(("level", "shown"), [("debug", True), ("info", True), ("warning", False), ("error", False)])
def test_log_level_shows_library_records_as_one_line_each(level: str, shown: bool, files, capsys) -> None:
    assert main(["match", files["good"], "a star", "--model", files["model"], "--threads", "1", "--jsonl", "--log-level", level]) == 0
    err = capsys.readouterr().err
    assert ("xvlm-edge: info: backend auto -> torch on cpu" in err) is shown  # runtime/__init__.py's choice, at INFO
    assert all(line.startswith("xvlm-edge: ") for line in err.splitlines())


def test_a_broken_image_among_good_ones_is_a_record_and_the_run_goes_on(files, capsys, tmp_path) -> None:
    out = tmp_path / "out.json"
    sources = [files["good"], files["corrupt"], files["folder"]]
    assert main(["match", *sources, "--texts", "a star", "--model", files["model"], "--threads", "1", "--json", "--output", str(out)]) == 1
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert json.loads(out.read_text()) == doc and not list(tmp_path.glob(".out.json.*"))
    assert doc["inputs"] == 4 and doc["failed"] == 1 and [r["index"] for r in doc["results"]] == [0, 1, 2, 3]
    error = doc["results"][1]["error"]
    assert error["type"] == "ImageError" and "cannot decode" in error["message"] and error["exit_code"] == 2
    (line,) = captured.err.splitlines()
    assert line.startswith("xvlm-edge: error: ") and "corrupt.png" in line
    assert main(["match", *sources, "--texts", "a star", "--model", files["model"], "--threads", "1", "--fail-fast"]) == 2
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1 and len(captured.err.splitlines()) == 1  # the first image's line, then the stop


def test_ground_over_a_folder_grounds_each_image(files, capsys) -> None:
    """`xvlm-edge ground <a folder> "the star"` once failed with `ValueError: too many values to unpack`."""
    assert main(["ground", files["folder"], "the star", "--model", files["model"], "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert [line.split(": ")[0] for line in captured.out.splitlines()] == [str(Path(files["folder"]) / f"{i}.png") for i in range(2)]
    assert captured.err == ""


def test_folders_pick_up_every_format_the_decoder_reads(tmp_path: Path) -> None:
    from xvlm_edge.cli._common import image_files
    from xvlm_edge.preprocess import IMAGE_SUFFIXES

    assert ".gif" in IMAGE_SUFFIXES
    names = [f"a{i}{suffix.upper() if i % 2 else suffix}" for i, suffix in enumerate(IMAGE_SUFFIXES)]
    for name in [*names, "notes.txt", ".hidden.png"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in image_files([str(tmp_path)])] == sorted(names)


def test_output_is_written_atomically(tmp_path: Path) -> None:
    target = tmp_path / "result.jsonl"
    target.write_text("previous run\n")

    def interrupted_run() -> None:
        with Output("jsonl", target) as out:
            out.result({"index": 0}, "")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted_run()
    assert target.read_text() == "previous run\n" and sorted(p.name for p in tmp_path.iterdir()) == ["result.jsonl"]
    with Output("jsonl", target) as out:
        out.result({"index": 0}, "")
        assert target.read_text() == "previous run\n"  # nothing changes until the run ends
    assert target.read_text() == '{"index": 0}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["result.jsonl"]


# -- real processes: exit statuses, signals, streaming ------------------------------------------------------------


@pytest.fixture(scope="module")
def twenty(files: dict[str, str]) -> Path:
    """A 20-image folder, two of whose files are broken (#5 is not an image, #13 is cut short)."""
    folder = Path(files["root"]) / "twenty"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(20):
        path = folder / f"{i:02d}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (36, 48, 3), dtype=np.uint8))
    (folder / "05.png").write_bytes(b"GIF89a but not really")
    (folder / "13.png").write_bytes((folder / "12.png").read_bytes()[:200])
    return folder


def start(*args: str) -> subprocess.Popen:
    environ = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    environ.pop("XVLM_EDGE_DEBUG", None)
    command = [sys.executable, "-m", "xvlm_edge.cli", *args, "--threads", "1"]
    # The CLI as a terminal starts it: SIGINT at its default. A shell running the tests in the background
    # (nohup, `&`) starts them with SIGINT ignored, which Python and so the CLI then rightly keep.
    restore_sigint = functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ, preexec_fn=restore_sigint)


def test_a_folder_with_two_broken_files_loses_nothing(files, twenty: Path, tmp_path: Path) -> None:
    out = tmp_path / "captions.jsonl"
    process = start("caption", str(twenty), "--model", files["model"], "--beams", "1", "--jsonl", "--output", str(out))
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [r["index"] for r in records] == list(range(20))
    assert [Path(r["image"]).name for r in records] == [f"{i:02d}.png" for i in range(20)]
    failed = [r for r in records if "error" in r]
    assert [r["index"] for r in failed] == [5, 13] and all(r["error"]["type"] == "ImageError" for r in failed)
    assert sum("caption" in r for r in records) == 18
    assert out.read_text() == stdout  # the --output file holds the same lines, whole
    lines = stderr.splitlines()
    assert len(lines) == 2 and "05.png" in lines[0] and "13.png" in lines[1] and "Traceback" not in stderr


def _read_lines(process: subprocess.Popen, count: int) -> list[str]:
    return [process.stdout.readline() for _ in range(count)]


def test_killing_a_run_keeps_every_finished_line_and_no_partial_output(files, twenty: Path, tmp_path: Path) -> None:
    out = tmp_path / "captions.jsonl"
    process = start("caption", *[str(twenty)] * 10, "--model", files["model"], "--beams", "1", "--jsonl", "--output", str(out))
    first = _read_lines(process, 9)  # past the first chunk of 8
    assert process.poll() is None, "the run finished before it could be killed; make it longer"
    process.kill()
    # The rest through the same reader: communicate() would read the raw pipe and skip the lines this
    # text wrapper already buffered.
    rest = process.stdout.read()
    process.wait(timeout=60)
    process.stdout.close()
    process.stderr.close()
    lines = first + rest.splitlines(keepends=True)
    records = [json.loads(line) for line in lines]  # every line whole: each was written and flushed at once
    assert 9 <= len(records) < 200 and [r["index"] for r in records] == list(range(len(records)))
    assert not out.exists()  # nothing partial at --output


@pytest.mark.parametrize(
    ("sent", "code", "line"), [(signal.SIGINT, 130, "xvlm-edge: error: interrupted"), (signal.SIGTERM, 143, "xvlm-edge: error: terminated")]
)
def test_a_signal_exits_with_one_line_and_cleans_up(files, twenty: Path, tmp_path: Path, sent: int, code: int, line: str) -> None:
    good = tmp_path / "good"
    good.mkdir()
    for path in sorted(twenty.iterdir())[:4]:
        if path.name not in ("05.png", "13.png"):
            shutil.copy(path, good / path.name)
    out = tmp_path / "captions.jsonl"
    process = start("caption", *[str(good)] * 60, "--model", files["model"], "--beams", "1", "--jsonl", "--output", str(out))
    assert json.loads(process.stdout.readline())["index"] == 0
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code
    assert stderr == line + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good"]  # neither the file nor its temporary


def test_a_closed_stdout_ends_the_run_quietly(files, twenty: Path) -> None:
    process = start("ground", *[str(twenty)] * 10, "--phrases", "the star", "--model", files["model"], "--jsonl")
    assert json.loads(process.stdout.readline())["index"] == 0
    process.stdout.close()  # `| head -1`
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    stderr = process.stderr.read()
    process.stderr.close()
    assert process.returncode == 141 and stderr == ""
