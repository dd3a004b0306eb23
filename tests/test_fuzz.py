"""Coverage-guided fuzzing (atheris: libFuzzer for Python) of the three parsers that read untrusted input.

Targets, each with its property:

- ``image``: ``load_image(bytes)`` on arbitrary bytes and on mutations of one small valid file per format
  (tests/test_image_limits.py builds them) returns an (H, W, 3) uint8 array or raises ImageError; and no
  decoded image has more pixels than its header said, which is what the decompression-bomb check relies on.
- ``text``: ``Tokenizer.default().encode``, ``pre_caption`` and ``pre_question`` on arbitrary Unicode
  (control characters, emoji, CJK, 10,000-character texts) return ids of the documented shape or raise an
  InputError subclass.
- ``manifest``: ``_C.EngineManifest.load(path)`` (and ``parse`` on the same text) on arbitrary and mutated
  manifests returns a manifest that round-trips through ``to_json`` or raises EngineError.

Each target runs in a child process (this file run as a script), so a segfault or abort in OpenCV, tokenizers
or the compiled core fails the test with libFuzzer's report, and the crashing input is saved under the test's
tmp_path. The default run is a fixed, seeded number of executions per target (reproducible, about 30 s in all
on 2 cores); ``-m slow`` runs each target for minutes. Every run's execution count is recorded with
``record_testsuite_property`` (``--junitxml=report.xml`` writes it); passing runs print nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()

# A manifest as xvlm-edge export writes it (the shape of tests/test_engine.py's), the manifest fuzzer's seed.
MANIFEST = {
    "schema": 1,
    "graph": "vision",
    "engine": "vision.engine",
    "sha256": "0123456789abcdef" * 4,
    "tensorrt_version": "10.3.0",
    "precision": "fp16",
    "inputs": [{"name": "pixels", "dtype": "float32", "shape": [-1, 3, 384, 384]}],
    "outputs": [{"name": "image_embeds", "dtype": "float32", "shape": [-1, 145, 1024]}],
    "profiles": [{"pixels": {"min": [1, 3, 384, 384], "opt": [1, 3, 384, 384], "max": [4, 3, 384, 384]}}],
}

# The texts the text fuzzer starts from: control characters, emoji, CJK, combining marks, RTL, zero-width,
# special tokens, and 10,000-character texts.
SEED_TEXTS = [
    "a dog runs on the beach",
    "What colour is the cat's hat?",
    "\x00\x01\x07\x1b[31m\t\r\n\x7f\x85\u2028\u2029",
    "😀🐶 👩‍👩‍👧 🇫🇷 ❤️",
    "一只狗在海滩上奔跑 犬が走る 개가 달린다",
    "e\u0301\u0302\u0303 Z\u0336\u0337 \u202eevil\u202c \u200b\u200d\ufeff",
    "[CLS] [SEP] [MASK] [PAD] [UNK] [unused1] ##ing",
    "<person> with a - slash/and *stars* ~~",
    "word " * 2000,
    "中" * 10_000,
    "😀" * 10_000,
    "a" * 10_000,
]


@dataclass(frozen=True)
class Budget:
    runs: int  # libFuzzer -runs: executions, the bound of the default run
    seconds: int  # libFuzzer -max_total_time: a ceiling for the default run, the bound of the slow one


DEFAULT = {"image": Budget(120000, 25), "text": Budget(25000, 25), "manifest": Budget(200000, 25)}
LONG = {"image": Budget(10**9, 300), "text": Budget(10**9, 300), "manifest": Budget(10**9, 300)}
MAX_LEN = {"image": 16384, "text": 65536, "manifest": 8192}
FUZZ_MAX_PIXELS = 1 << 20  # the image target's limit: mutated headers stay cheap to decode


# ---------------------------------------------------------------- the targets (run in the child process)


class Tally:
    """Outcome counts of one fuzz run, rewritten in place after every input: libFuzzer ends the process with
    exit(), so nothing can be written at the end (atexit handlers do not run)."""

    def __init__(self, path: Path) -> None:
        self.counts: dict[str, int] = {}
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)

    def __call__(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        os.pwrite(self._fd, json.dumps(self.counts).encode().ljust(256), 0)


def _image_target(tally: Tally):
    import numpy as np

    from xvlm_edge import preprocess as P
    from xvlm_edge.errors import ImageError

    def one_input(data: bytes) -> None:
        try:
            out = P.load_image(data, max_pixels=FUZZ_MAX_PIXELS)
        except ImageError as e:
            message = str(e)
            if "not supported" in message or "not a supported" in message:
                tally("refused: no reader for the format")
            elif " header " in message or "megapixels" in message:
                tally("refused from the header")
            else:
                tally("refused by the decoder or the array checks")
            return
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8, type(out)
        assert out.ndim == 3 and out.shape[2] == 3 and out.flags.c_contiguous, out.shape
        _, (image, *_) = P._read_header(data, "fuzz input")
        assert out.shape[0] * out.shape[1] <= image.width * image.height, (out.shape, image)
        tally("decoded")

    return one_input


def _text_target(tally: Tally):
    import torch

    from xvlm_edge.errors import InputError, TextError
    from xvlm_edge.text import pre_caption, pre_question
    from xvlm_edge.tokenizer import Tokenizer

    tokenizer = Tokenizer.default()
    vocab = len(tokenizer)

    def one_input(data: bytes) -> None:
        if not data:
            return
        options, texts = data[0], decode_texts(data[1:], utf32=bool(data[0] & 1))
        max_length = (None, 1, 2, 3, 16, 40, 512, None)[(options >> 1) & 7]
        padding = "max_length" if options & 16 and max_length is not None else "longest"
        add_sep = bool(options & 32)
        for text in texts:
            try:
                caption = pre_caption(text)
            except TextError:
                pass
            else:
                assert isinstance(caption, str) and caption
            assert isinstance(pre_question(text), str)
        try:
            enc = tokenizer.encode(texts, max_length=max_length, padding=padding, add_sep=add_sep)
        except InputError:
            tally("refused")
            return
        ids, mask = enc.input_ids, enc.attention_mask
        assert ids.dtype == mask.dtype == torch.int64 and ids.shape == mask.shape and ids.shape[0] == len(texts)
        width = ids.shape[1]
        if padding == "max_length":
            assert width == max_length
        elif max_length is not None:
            assert width <= max_length
        lengths = mask.sum(1)
        assert torch.equal(mask, (torch.arange(width) < lengths[:, None]).long()), "mask is not ones then zeros"
        assert bool((ids[:, 0] == tokenizer.cls_id).all()) and int(lengths.min()) >= 1 + add_sep
        assert bool(((ids >= 0) & (ids < vocab)).all()) and bool((ids[mask == 0] == tokenizer.pad_id).all())
        if add_sep:
            assert bool((ids[torch.arange(len(texts)), lengths - 1] == tokenizer.sep_id).all())
        tally("encoded")
        if max(len(text) for text in texts) >= 10_000:
            tally("encoded, a text of 10,000+ characters")

    return one_input


def decode_texts(payload: bytes, *, utf32: bool) -> list[str]:
    """Up to three texts split at 0xFF (never in UTF-8): UTF-8 with U+FFFD for bad bytes, or with ``utf32``
    3-byte code points anywhere in U+0000..U+10FFFF (surrogates mapped to U+FFFD: the tokenizer refuses
    them, `test_tokenizer_refuses_lone_surrogates_with_text_error`)."""
    parts = payload.split(b"\xff", 2)
    if not utf32:
        return [part.decode("utf-8", "replace") for part in parts]
    texts = []
    for part in parts:
        points = (int.from_bytes(part[i : i + 3], "little") % 0x110000 for i in range(0, len(part) - 2, 3))
        texts.append("".join("\ufffd" if 0xD800 <= cp < 0xE000 else chr(cp) for cp in points))
    return texts


def _manifest_target(tally: Tally, workdir: Path):
    from xvlm_edge import _C
    from xvlm_edge.errors import EngineError

    path = workdir / "manifest.json"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)  # rewritten in place: open(O_TRUNC) costs 2 ms a call on ext4

    def one_input(data: bytes) -> None:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        try:
            manifest = _C.EngineManifest.load(str(path))
            text = manifest.to_json()
        except EngineError:
            tally("refused")
        else:
            assert _C.EngineManifest.parse(text).to_json() == text
            tally("loaded")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return
        with contextlib.suppress(EngineError):
            _C.EngineManifest.parse(text)

    return one_input


def _child_main(argv: list[str]) -> None:
    """`python tests/test_fuzz.py TARGET WORKDIR [libFuzzer flags...] CORPUS`: fuzz one target until done."""
    import atheris

    target, workdir, libfuzzer_args = argv[1], Path(argv[2]), argv[3:]
    tally = Tally(workdir / "outcomes.json")
    make = {"image": _image_target, "text": _text_target, "manifest": lambda t: _manifest_target(t, workdir)}[target]
    one_input = make(tally)
    for name in ("xvlm_edge.preprocess", "xvlm_edge.text", "xvlm_edge.tokenizer"):
        if name in sys.modules:
            _instrument(sys.modules[name])
    atheris.Setup([argv[0], *libfuzzer_args], atheris.instrument_func(one_input))
    atheris.Fuzz()


def _instrument(module) -> None:
    """Coverage feedback from one module's functions and methods, patched in place.

    atheris.instrument_imports would do this at import time, but the editable install's import hook
    (scikit-build-core's redirect finder) defeats it: no coverage, and libFuzzer drops every seed.
    """
    import inspect

    import atheris

    for obj in vars(module).values():
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        members = vars(obj).values() if inspect.isclass(obj) else [obj]
        for member in members:
            func = getattr(member, "__func__", member)  # classmethod / staticmethod
            if inspect.isfunction(func):
                atheris.instrument_func(func)


# ---------------------------------------------------------------- seeds and the runner (in pytest)


def write_seeds(target: str, corpus: Path) -> None:
    corpus.mkdir()
    if target == "image":
        from test_image_limits import samples

        seeds = [data for s in samples(32, 32) for data in (s.data, s.bomb) if data]
    elif target == "text":
        pairs = zip(SEED_TEXTS, SEED_TEXTS[1:] + SEED_TEXTS[:1])
        seeds = [bytes([opt]) + text.encode() + b"\xff" + other.encode() for opt in range(0, 64, 7) for text, other in pairs]
        seeds.append(bytes([1]) + b"".join(ord(c).to_bytes(3, "little") for c in SEED_TEXTS[4] + SEED_TEXTS[3]))
    else:
        text = json.dumps(MANIFEST)
        seeds = [text.encode(), json.dumps(MANIFEST, indent=2).encode(), text.replace('"vision"', '"vi\\u0073ion"').encode()]
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i:03d}").write_bytes(seed)


MANIFEST_DICT = ['"schema"', '"graph"', '"engine"', '"sha256"', '"tensorrt_version"', '"precision"', '"inputs"', '"outputs"', '"profiles"',
                 '"name"', '"dtype"', '"shape"', '"min"', '"opt"', '"max"', '"float32"', '"int64"', '"fp16"', '"int8"', "true", "false", "null",
                 "-1", "9223372036854775807", "-9223372036854775808", "1e3", '"\\u00e9"', '"\\ud800"', "[[[[[[[[", "{}", "[]", ",", ":"]  # fmt: skip


@dataclass(frozen=True)
class FuzzRun:
    executions: int
    new_units: int
    seconds: float
    outcomes: dict[str, int]
    output: str


def run_fuzzer(target: str, budget: Budget, tmp_path: Path) -> FuzzRun:
    corpus, artifacts = tmp_path / "corpus", tmp_path / "crashes"
    write_seeds(target, corpus)
    artifacts.mkdir()
    flags = [
        f"-runs={budget.runs}",
        f"-max_total_time={budget.seconds}",
        "-seed=20240611",
        f"-max_len={MAX_LEN[target]}",
        "-timeout=30",  # one input taking longer is a finding (reported as a crash)
        "-rss_limit_mb=2048",  # so is one that needs more memory: a bomb the header check let through
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
    ]
    if target == "manifest":
        words = tmp_path / "json.dict"
        words.write_text("".join(f"w{i}={json.dumps(word)}\n" for i, word in enumerate(MANIFEST_DICT)))
        flags.append(f"-dict={words}")
    env = {**os.environ, "OPENCV_LOG_LEVEL": "SILENT"}  # the child's own environment: no per-input decoder log
    cmd = [sys.executable, str(HERE), target, str(tmp_path), *flags, str(corpus)]
    start = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env, timeout=budget.seconds + 120)
    seconds = time.monotonic() - start
    output = result.stdout + result.stderr
    crashes = sorted(p.name for p in artifacts.iterdir())
    assert result.returncode == 0 and not crashes, f"{target} fuzzer found {crashes} (exit {result.returncode}):\n{output[-6000:]}"
    stats = dict(re.findall(r"^stat::(\w+):\s*(\d+)", output, re.MULTILINE))
    done = re.search(r"^Done (\d+) runs in (\d+) second", output, re.MULTILINE)
    assert done and "number_of_executed_units" in stats, output[-3000:]
    outcomes = json.loads((tmp_path / "outcomes.json").read_bytes())
    return FuzzRun(int(stats["number_of_executed_units"]), int(stats.get("new_units_added", 0)), round(seconds, 1), outcomes, output)


@pytest.mark.parametrize(
    ("target", "budget"),
    [pytest.param(t, DEFAULT[t], id=t) for t in DEFAULT] + [pytest.param(t, LONG[t], marks=pytest.mark.slow, id=f"{t}-long") for t in LONG],
)
def test_fuzz(target: str, budget: Budget, tmp_path: Path, record_testsuite_property) -> None:
    pytest.importorskip("atheris", reason="atheris (the `test` extra) installs only on Linux x86_64")
    run = run_fuzzer(target, budget, tmp_path)
    name = f"fuzz.{target}{'.long' if budget is LONG[target] else ''}"
    record_testsuite_property(f"{name}.executions", run.executions)
    record_testsuite_property(f"{name}.new_units", run.new_units)
    record_testsuite_property(f"{name}.seconds", run.seconds)
    record_testsuite_property(f"{name}.outcomes", json.dumps(run.outcomes))
    assert run.executions >= min(budget.runs, 1000), run.output[-2000:]  # it really ran, not just started


# ---------------------------------------------------------------- findings the fuzzer led to (fixed)


@pytest.mark.parametrize("text", ['{"graph": é}', '{"graph": "\\é"}'])
def test_manifest_error_for_non_ascii_text_is_an_engine_error(text: str) -> None:
    from xvlm_edge import _C
    from xvlm_edge.errors import EngineError

    with pytest.raises(EngineError):
        _C.EngineManifest.parse(text)


def test_manifest_with_non_utf8_string_is_refused(tmp_path: Path) -> None:
    from xvlm_edge import _C
    from xvlm_edge.errors import EngineError

    path = tmp_path / "manifest.json"
    path.write_bytes(json.dumps(MANIFEST).replace("vision.engine", "vision\udc85.engine").encode("utf-8", "surrogateescape"))
    with pytest.raises(EngineError):
        _C.EngineManifest.load(str(path)).to_json()


def test_tokenizer_refuses_lone_surrogates_with_text_error() -> None:
    from xvlm_edge.errors import InputError
    from xvlm_edge.tokenizer import Tokenizer

    with pytest.raises(InputError):
        Tokenizer.default().encode(["caf\udce9"])


if __name__ == "__main__":
    _child_main(sys.argv)
