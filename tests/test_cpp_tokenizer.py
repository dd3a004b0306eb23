"""The C++ tokenizer and text cleaning (csrc/core/tokenizer.cpp, the lamp SDK's) against the Python reference.

`xvlm_edge._C.Tokenizer` must give the ids of `xvlm_edge.tokenizer.Tokenizer` (the Rust `tokenizers` pipeline),
and `_C.pre_caption` / `_C.pre_question` the strings of `xvlm_edge.text`, on generated text that goes where
tokenisers break: every general category, combining marks, scripts, CJK, Hangul, emoji sequences, controls,
zero-width and format characters, every kind of white space, the special tokens inside words, words over
WordPiece's 100-character limit and 10,000-character inputs. 20,000 strings by default, 200,000 with -m slow,
plus every code point once. Invalid UTF-8 must raise TextError, never crash.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import pytest
from _cpp_build import build_cpp, needs_cmake

from training import synthetic
from xvlm_edge import _C
from xvlm_edge.errors import CheckpointError, InputError, TextError
from xvlm_edge.text import pre_caption, pre_question
from xvlm_edge.tokenizer import DEFAULT_VOCAB, SPECIAL_TOKENS, Tokenizer

REPO = Path(__file__).resolve().parents[1]
VOCAB_PATH = REPO / "xvlm_edge" / DEFAULT_VOCAB
GENERATOR = REPO / "csrc" / "tools" / "gen_unicode_tables.py"
TABLES = REPO / "csrc" / "core" / "unicode_tables.inc"
UCD = Path("/usr/share/unicode")

# (max_length, add_sep): every text is compared untruncated in both framings (fine-tuning `[CLS] X`, captioning
# `[CLS] X [SEP]`) and at one of the truncating settings, in turn.
FULL = [(None, False), (None, True)]
TRUNCATING = [(3, True), (8, False), (16, True), (40, False), (512, True)]
BATCH = 512


@pytest.fixture(scope="module")
def py_tok() -> Tokenizer:
    return Tokenizer.default()


@pytest.fixture(scope="module")
def cpp_tok() -> _C.Tokenizer:
    return _C.Tokenizer.from_file(str(VOCAB_PATH))


# --- text generation ------------------------------------------------------------------------------------------


@cache
def _by_category() -> dict[str, list[int]]:
    """Code points assigned in this Python's Unicode, by general category (surrogates left out: no UTF-8)."""
    groups: dict[str, list[int]] = {}
    for cp in range(0x110000):
        cat = unicodedata.category(chr(cp))
        if cat not in ("Cn", "Cs"):
            groups.setdefault(cat, []).append(cp)
    return groups


def _span(*ranges: tuple[int, int]) -> list[int]:
    return [cp for a, b in ranges for cp in range(a, b + 1) if unicodedata.category(chr(cp)) not in ("Cn", "Cs")]


SCRIPTS = {
    "latin": _span((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F), (0x1E00, 0x1EFF)),
    "greek": _span((0x370, 0x3FF), (0x1F00, 0x1FFF)),
    "cyrillic": _span((0x400, 0x52F)),
    "arabic": _span((0x600, 0x6FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)),
    "hebrew": _span((0x591, 0x5F4), (0xFB1D, 0xFB4F)),
    "devanagari": _span((0x900, 0x97F)),
    "thai": _span((0xE01, 0xE5B)),
    "hangul": _span((0xAC00, 0xD7A3), (0x1100, 0x11FF), (0x3131, 0x318E)),
    "kana": _span((0x3041, 0x30FF), (0xFF66, 0xFF9D)),
    "cjk": _span((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)),
    "fullwidth": _span((0xFF01, 0xFF5E), (0xFFE0, 0xFFEE)),
    "combining": _span((0x300, 0x36F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F)),
}
EMOJI = _span((0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F900, 0x1F9FF), (0x2600, 0x27BF))
SKIN_TONES = [chr(cp) for cp in range(0x1F3FB, 0x1F400)]
ZWJ_SEQUENCES = ["👨\u200d👩\u200d👧\u200d👦", "👩🏽\u200d💻", "🏳️\u200d🌈", "🧑🏿\u200d🤝\u200d🧑🏻", "❤️\u200d🔥", "👁️\u200d🗨️"]
FLAGS = ["🇫🇷", "🇯🇵", "🇺🇸", "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"]
KEYCAPS = ["1\ufe0f\u20e3", "#\ufe0f\u20e3", "*\u20e3"]
INVISIBLE = [chr(cp) for cp in (0, 0xAD, 0x34F, 0x61C, 0x180E, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2028,
                                0x2029, 0x202A, 0x202E, 0x2060, 0x2061, 0x2064, 0x2066, 0x2069, 0xFE0F, 0xFEFF,
                                0xFFF9, 0xFFFB, 0xFFFC, 0xFFFD, 0x1D173, 0xE0001, 0xE0020, 0xE007F)]  # fmt: skip
CONTROLS = [chr(cp) for cp in [*range(0x20), 0x7F, *range(0x80, 0xA0)]]
SPACES = [chr(cp) for cp in range(0x110000) if chr(cp).isspace()] + ["\u200b", "\u180e", "\u2060"]
# Near-misses of the specials: only the exact, case-sensitive spelling is split out.
SPECIAL_LIKE = [*SPECIAL_TOKENS, "[cls]", "[SEP", "SEP]", "[[SEP]]", "[MASK]]", "[ MASK ]", "[\uff23\uff2c\uff33]", "[unused1]"]
# Final sigma, dotted I and friends exercise the two lower-casings (Rust's context-free one, CPython's).
CASING = [
    "\u039f\u0394\u039f\u03a3", "\u03a3\u0391\u03a3.", "\u03a3", "\u0391\u03a3\u0301\u0392", "\u0130stanbul", "\u01c5emal",
    "\u00df", "\ufb01", "\u0149", "\u2126", "\u212a", "\u212b", "\u0390", "\u1fbc", "\u03f4", "\u1e9e",
]  # fmt: skip


class TextGen:
    """Deterministic random texts; `text()` mixes word kinds and separators, `big()` is 10,000 characters."""

    def __init__(self, seed: int, vocab: list[str]) -> None:
        self.rng = random.Random(seed)
        self.words = [w for w in vocab if w.isalpha() and w.isascii()]
        self.pieces = [w for w in vocab if w.startswith("##")]
        self.categories = _by_category()
        self.cat_names = sorted(self.categories)
        self.punct = [cp for cat in self.cat_names if cat[0] in "PS" for cp in self.categories[cat]]

    def cp(self, pool: list[int]) -> str:
        return chr(self.rng.choice(pool))

    def any_cp(self) -> str:
        """A random assigned code point: category first, so rare categories (Cf, Zl, Pc, Me...) come up."""
        return self.cp(self.categories[self.rng.choice(self.cat_names)])

    def word(self) -> str:
        r, rng = self.rng.random(), self.rng
        if r < 0.22:
            w = rng.choice(self.words)
            return w.upper() if rng.random() < 0.2 else w.capitalize() if rng.random() < 0.2 else w
        if r < 0.27:
            return rng.choice(self.words) + rng.choice(self.pieces)[2:]
        if r < 0.35:  # letters with combining marks, stripped (Mn) or kept (Mc, Me)
            marks = SCRIPTS["combining"] + self.categories["Mn"] + self.categories["Mc"] + self.categories["Me"]
            return "".join(self.cp(SCRIPTS["latin"]) + "".join(self.cp(marks) for _ in range(rng.randint(0, 3)))
                           for _ in range(rng.randint(1, 8)))  # fmt: skip
        if r < 0.55:
            script = SCRIPTS[rng.choice(sorted(SCRIPTS))]
            return "".join(self.cp(script) for _ in range(rng.randint(1, 10)))
        if r < 0.62:
            return rng.choice([*ZWJ_SEQUENCES, *FLAGS, *KEYCAPS]) if rng.random() < 0.4 else (
                self.cp(EMOJI) + (rng.choice(SKIN_TONES) if rng.random() < 0.3 else "")
                + ("\ufe0f" if rng.random() < 0.2 else "")
            )  # fmt: skip
        if r < 0.68:
            return rng.choice(self.words) + rng.choice(INVISIBLE + CONTROLS) + rng.choice(self.words)
        if r < 0.74:
            return "".join(self.cp(self.punct) for _ in range(rng.randint(1, 4)))
        if r < 0.78:
            return rng.choice(SPECIAL_LIKE)
        if r < 0.80:
            return rng.choice(CASING)
        if r < 0.82:  # around WordPiece's 100-character limit, before and after mark stripping
            n = rng.randint(95, 130)
            if rng.random() < 0.5:
                return "".join(rng.choice("abcdefghij") for _ in range(n))
            return "".join(rng.choice("aeiou") + "\u0301" for _ in range(n // 2))
        return "".join(self.any_cp() for _ in range(rng.randint(1, 6)))

    def separator(self) -> str:
        r = self.rng.random()
        if r < 0.6:
            return " "
        if r < 0.7:
            return ""
        if r < 0.85:
            return "".join(self.rng.choice(SPACES) for _ in range(self.rng.randint(1, 3)))
        return self.rng.choice([*INVISIBLE, *CONTROLS, "-", "/", "'", "..."])

    def text(self) -> str:
        parts = []
        for _ in range(self.rng.randint(1, 24)):
            parts.extend((self.word(), self.separator()))
        return "".join(parts[: -1 if self.rng.random() < 0.7 else None])

    def big(self, n_chars: int = 10_000) -> str:
        parts, size = [], 0
        while size < n_chars:
            parts.append(self.text())
            size += len(parts[-1]) + 1
        return " ".join(parts)[:n_chars]


@cache
def corpus(n: int, seed: int = 0) -> tuple[str, ...]:
    """n strings: the synthetic data's captions, questions and statements, 10k-character inputs, random texts."""
    gen = TextGen(seed, _vocab())
    texts: list[str] = []
    for i in range(12):
        scene = synthetic.describe(synthetic.sample_scene(seed, i))
        texts += scene.captions + [q for q, _, _ in scene.questions] + [s for s, _, _ in scene.statements]
        texts += [name for _, names in scene.regions for name in names]
    texts += ["", " ", "\t\n", "\x00", "\u200b", "\ufffd", "[SEP]", "a picture of ", "A PICTURE OF"]
    texts += [gen.big() for _ in range(max(4, n // 1000))]
    texts += [gen.text() for _ in range(n - len(texts))]
    return tuple(texts[:n])


@cache
def _vocab() -> list[str]:
    return VOCAB_PATH.read_text(encoding="utf-8").split("\n")[:-1]


# --- comparison -----------------------------------------------------------------------------------------------


def _batches(items: list, size: int = BATCH) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def compare_tokenizers(py_tok: Tokenizer, cpp_tok: _C.Tokenizer, texts: tuple[str, ...]) -> dict[str, int]:
    """Pieces, ids (FULL framings and one TRUNCATING setting each) and decode, string by string; returns counts."""
    pieces_py = [py_tok.tokenize(t) for t in texts]
    pieces_cpp = [cpp_tok.tokenize(t) for t in texts]
    bad = [(t[:80], p, c) for t, p, c in zip(texts, pieces_py, pieces_cpp) if p != c]
    assert not bad, f"{len(bad)} of {len(texts)} texts tokenise differently, first: {bad[:3]}"

    tokenised = [t for t, p in zip(texts, pieces_py) if p]
    for t in [t for t, p in zip(texts, pieces_py) if not p][:50]:
        with pytest.raises(TextError, match="no tokens"):
            cpp_tok.encode(t)
    n_ids = 0
    for k, (max_length, add_sep) in enumerate(FULL + TRUNCATING):
        subset = tokenised if k < len(FULL) else tokenised[k - len(FULL) :: len(TRUNCATING)]
        for batch in _batches(subset):
            enc = py_tok.encode(batch, max_length=max_length, add_sep=add_sep)
            expected = [row[: int(mask.sum())].tolist() for row, mask in zip(enc.input_ids, enc.attention_mask)]
            got = cpp_tok.encode_batch(batch, max_length, add_sep)
            bad = [(t[:80], e, g) for t, e, g in zip(batch, expected, got) if e != g]
            assert not bad, f"max_length={max_length} add_sep={add_sep}: {len(bad)} differ, first: {bad[:2]}"
            n_ids += len(batch)
            if max_length is None and add_sep:
                for ids in expected:
                    for skip in (True, False):
                        assert cpp_tok.decode(ids, skip) == py_tok.decode(ids, skip_special_tokens=skip), ids
    return {"texts": len(texts), "tokenised": len(tokenised), "encodings": n_ids}


def compare_cleaning(texts: tuple[str, ...], max_words: tuple[int, ...] = (30, 50, 3, 1, 0, -2)) -> int:
    """_C.pre_caption / pre_question against xvlm_edge.text on every text; both raise or both agree."""

    def outcome(fn: Callable[[str, int], str], text: str, n: int) -> str | type:
        try:
            return fn(text, n)
        except TextError:
            return TextError

    compared = 0
    for i, text in enumerate(texts):
        n = max_words[i % len(max_words)]
        for py_fn, cpp_fn, default in ((pre_caption, _C.pre_caption, 30), (pre_question, _C.pre_question, 50)):
            for words in (default, n):
                assert outcome(cpp_fn, text, words) == outcome(py_fn, text, words), (py_fn.__name__, text[:80], words)
                compared += 1
    return compared


# --- tests ----------------------------------------------------------------------------------------------------


def test_20k_strings_equal_ids_and_decode(py_tok, cpp_tok):
    texts = corpus(20_000)
    assert sum(len(t) >= 10_000 for t in texts) >= 20 and len(set(texts)) > 19_000
    counts = compare_tokenizers(py_tok, cpp_tok, texts)
    assert counts["texts"] == 20_000 and counts["tokenised"] > 19_000


def _skip_if_python_unicode_is_newer() -> None:
    """The cleaning follows CPython's str.lower / str.isspace as of the tables' UCD; a newer Python knows letters
    (and their lower case) that the tables do not."""
    python, tables = unicodedata.unidata_version, _C.unicode_tables_version()
    if tuple(map(int, python.split("."))) > tuple(map(int, tables.split("."))):
        pytest.skip(f"this Python has Unicode {python}, the C++ tables {tables}: regenerate them from a newer UCD")


def test_20k_strings_equal_text_cleaning():
    _skip_if_python_unicode_is_newer()
    assert compare_cleaning(corpus(20_000)) == 20_000 * 4


@pytest.mark.slow
def test_200k_strings(py_tok, cpp_tok):
    texts = corpus(200_000, seed=1)
    compare_tokenizers(py_tok, cpp_tok, texts)
    _skip_if_python_unicode_is_newer()
    compare_cleaning(texts)


def test_every_code_point(py_tok, cpp_tok):
    """Each code point alone and inside a word: the per-character tables (categories, white space, NFD,
    lower-casing, CJK) agree with `tokenizers` everywhere, assigned or not, surrogates aside."""
    cps = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    for chunk in _batches(cps, 4096):
        alone = " ".join(chr(cp) for cp in chunk)
        inside = " ".join(f"a{chr(cp)}b" for cp in chunk)
        for text in (alone, inside):
            assert cpp_tok.tokenize(text) == py_tok.tokenize(text), f"U+{chunk[0]:04X}..U+{chunk[-1]:04X}"


def test_every_code_point_cleaning():
    """Lower-casing (final sigma context aside) and white space of pre_caption, code point by code point."""
    _skip_if_python_unicode_is_newer()
    cps = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    for chunk in _batches(cps, 4096):
        text = "x".join(chr(cp) * 2 for cp in chunk)
        assert _C.pre_question(text, 10**6) == pre_question(text, 10**6), f"U+{chunk[0]:04X}..U+{chunk[-1]:04X}"
        assert _C.pre_caption(text, 10**6) == pre_caption(text, 10**6), f"U+{chunk[0]:04X}..U+{chunk[-1]:04X}"


@pytest.mark.parametrize(
    "text",
    [
        "\u039f\u0394\u039f\u03a3 \u03a3\u0391\u03a3 \u03a3 \u0391\u03a3\u0301 \u0391\u03a3\u0391 '\u03a3' \u0391.\u03a3",
        "\u0391\u03a3\u0301\u0301", "\u0301\u03a3", "a\u03a3\u00ad", "\u0130I", "\u1e9e \u01c5 \u01c8", "\u0390\u03b0", "\u03a3" * 50,
    ],  # fmt: skip
)
def test_final_sigma_matches_python(py_tok, cpp_tok, text):
    """CPython lower-cases a final capital sigma to ς (text cleaning); `tokenizers` does not (context-free)."""
    assert _C.pre_question(text) == pre_question(text)
    assert cpp_tok.tokenize(text) == py_tok.tokenize(text)


def test_framing_and_prompt(py_tok, cpp_tok):
    text = "A man riding a horse on the beach"
    assert cpp_tok.encode(text) == py_tok.encode([text]).input_ids[0].tolist()
    assert cpp_tok.encode(text)[0] == cpp_tok.cls_id and cpp_tok.encode(text)[-1] != cpp_tok.sep_id
    assert cpp_tok.encode(text, None, True)[-1] == cpp_tok.sep_id
    assert cpp_tok.encode(text, 4, True) == [cpp_tok.cls_id, *cpp_tok.piece_ids(text)[:2], cpp_tok.sep_id]
    assert cpp_tok.caption_prompt_ids() == py_tok.caption_prompt_ids().tolist()
    assert cpp_tok.caption_prompt_ids("a photo of ") == py_tok.caption_prompt_ids("a photo of ").tolist()
    answers = ["yes", "two", "red circle"]
    enc = py_tok.encode_answers(answers)
    assert cpp_tok.encode_batch([a + "[SEP]" for a in answers]) == [
        row[: int(m.sum())].tolist() for row, m in zip(enc.input_ids, enc.attention_mask)
    ]
    specials = (cpp_tok.pad_id, cpp_tok.unk_id, cpp_tok.cls_id, cpp_tok.sep_id, cpp_tok.mask_id)
    assert specials == (py_tok.pad_id, py_tok.unk_id, py_tok.cls_id, py_tok.sep_id, py_tok.mask_id)
    assert len(cpp_tok) == len(py_tok) and cpp_tok.token_to_id("horse") == py_tok._ids["horse"]
    assert cpp_tok.token_to_id("no-such-token") is None


def test_argument_errors(cpp_tok):
    with pytest.raises(InputError, match="max_length=2 leaves no room"):
        cpp_tok.encode("a dog", 2, True)
    with pytest.raises(InputError, match="max_length=1 leaves no room"):
        cpp_tok.encode("a dog", 1)
    with pytest.raises(TextError, match="empty or has no tokens"):
        cpp_tok.encode(" \u200b\x00 ")
    with pytest.raises(TextError, match="outside the vocabulary of 30522"):
        cpp_tok.decode([101, 30522])
    with pytest.raises(TextError, match="token id -1"):
        cpp_tok.decode([-1])
    with pytest.raises(TextError, match="empty after caption cleaning"):
        _C.pre_caption(" ... ")
    with pytest.raises(TypeError, match="must be str or bytes"):
        cpp_tok.encode(3)


INVALID_UTF8 = [
    b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc2", b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xed\xa0\x80",
    b"\xed\xbf\xbf", b"\xef\xbf", b"\xf0\x80\x80\x80", b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",
    b"\xf8\x88\x80\x80\x80", b"\xfe", b"\xff", b"ok \xe2\x82", b"\xe2\x28\xa1", b"caf\xe9",
]  # fmt: skip


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_invalid_utf8_raises_text_error(cpp_tok, data):
    for call in (cpp_tok.encode, cpp_tok.tokenize, cpp_tok.piece_ids, _C.pre_caption, _C.pre_question):
        with pytest.raises(TextError, match=r"not valid UTF-8: byte 0x[0-9A-F]{2} at offset \d+"):
            call(data)
        with pytest.raises(TextError):
            call(b"[CLS] fine text " + data + b" [SEP]")


def test_lone_surrogate_raises_text_error(cpp_tok):
    with pytest.raises(TextError, match="not valid UTF-8"):
        cpp_tok.encode("red \udcff dog")
    with pytest.raises(TextError, match="not valid UTF-8"):
        _C.pre_caption("\ud800")


def test_random_bytes_never_crash(py_tok, cpp_tok):
    """Random bytes: valid UTF-8 gives the ids of the decoded text, anything else TextError (Python's strict
    decoder decides which is which)."""
    rng = random.Random(7)
    alphabet = [*range(0x20, 0x7F), *range(0x80, 0x100)] * 2 + list(b" [SEP]\xe2\x82\xac\xf0\x9f\x98\x80")
    n_valid = 0
    for i in range(20_000):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 24 if i % 50 else 3000)))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            with pytest.raises(TextError, match="not valid UTF-8"):
                cpp_tok.piece_ids(data)
            with pytest.raises(TextError, match="not valid UTF-8"):
                _C.pre_question(data)
            continue
        n_valid += 1
        assert cpp_tok.tokenize(data) == py_tok.tokenize(text)
        assert _C.pre_question(data) == pre_question(text)
    assert n_valid > 100


def test_decode_random_ids(py_tok, cpp_tok):
    rng = random.Random(3)
    tricky = [cpp_tok.token_to_id(t) for t in (".", "?", "'", "n", "##t", "##s", "m", "s", "ve", "re", ",", "!")]
    for _ in range(3000):
        ids = [rng.choice(tricky) if rng.random() < 0.4 else rng.randrange(len(cpp_tok)) for _ in range(rng.randint(0, 30))]
        for skip in (True, False):
            assert cpp_tok.decode(ids, skip) == py_tok.decode(ids, skip_special_tokens=skip), ids


def test_vocabulary_loading(py_tok):
    vocab = _vocab()
    shuffled = vocab[:]
    random.Random(5).shuffle(shuffled)  # special ids are looked up, never assumed
    py_shuffled, cpp_shuffled = Tokenizer(shuffled), _C.Tokenizer(shuffled)
    assert cpp_shuffled.cls_id == py_shuffled.cls_id != 101
    for text in corpus(20_000)[:300]:
        assert cpp_shuffled.piece_ids(text) == [py_shuffled._ids[t] for t in py_shuffled.tokenize(text)]
    # Universal newlines, as Path.read_text reads a vocab.txt: \r\n and \r end lines too.
    crlf = _C.Tokenizer.from_vocab_text("\r\n".join(vocab) + "\r\n")
    assert len(crlf) == len(vocab) and crlf.encode("hello") == [101, 7592]
    assert len(_C.Tokenizer.from_vocab_text(("\n".join(vocab)).encode())) == len(vocab)

    with pytest.raises(CheckpointError, match="is empty"):
        _C.Tokenizer([])
    with pytest.raises(CheckpointError, match="lists the token 'hello' twice"):
        _C.Tokenizer([*vocab, "hello"])
    with pytest.raises(CheckpointError, match=r"lacks the special tokens \[MASK\]"):
        _C.Tokenizer([t for t in vocab if t != "[MASK]"])
    with pytest.raises(CheckpointError, match="not valid UTF-8"):
        _C.Tokenizer.from_vocab_text(b"[PAD]\n[UNK]\n\xff\n")
    with pytest.raises(CheckpointError, match="cannot read vocabulary"):
        _C.Tokenizer.from_file(str(REPO / "no-such-vocab.txt"))
    with pytest.raises(CheckpointError, match="cannot read vocabulary"):
        _C.Tokenizer.from_file(str(REPO))


def test_speed_10k_characters(py_tok, cpp_tok):
    """Not a timing gate (machines differ): C++ vs Rust `tokenizers` tokenize() of 10,000 characters, in the log."""
    text = TextGen(2, _vocab()).big()
    caption_like = ("a large red circle to the left of two small blue squares. " * 200)[:10_000]
    for name, t in (("mixed unicode", text), ("caption-like", caption_like)):
        timings = {}
        for label, fn in (("cpp", lambda t=t: cpp_tok.tokenize(t)), ("rust", lambda t=t: py_tok.tokenize(t))):
            fn()
            start = time.perf_counter()
            for _ in range(20):
                fn()
            timings[label] = (time.perf_counter() - start) / 20
        assert cpp_tok.tokenize(t) == py_tok.tokenize(t)
        sys.stderr.write(f"10k chars, {name}: C++ {timings['cpp'] * 1e3:.2f} ms, tokenizers {timings['rust'] * 1e3:.2f} ms\n")


@pytest.mark.skipif(not (UCD / "DerivedAge.txt").exists(), reason=f"no Unicode Character Database at {UCD} (apt-get install unicode-data)")
def test_generated_tables_are_up_to_date():
    """csrc/core/unicode_tables.inc is what the generator writes from the installed UCD of the same version."""
    version = (UCD / "DerivedAge.txt").read_text(encoding="utf-8").splitlines()[0]
    if _C.unicode_tables_version() not in version:
        pytest.skip(f"installed UCD is {version!r}; the committed tables are {_C.unicode_tables_version()}")
    run = subprocess.run([sys.executable, GENERATOR, "--ucd", UCD, "--output", TABLES, "--check"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.slow
@needs_cmake
def test_cpp_tests_under_sanitizers(tmp_path: Path):
    """csrc/tests/test_tokenizer.cpp (framing, errors, 40,000 fuzzed inputs on two vocabularies) built with
    AddressSanitizer and UndefinedBehaviorSanitizer, no recovery: any out-of-bounds read or UB fails the run."""
    flags = "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
    options = ["-DXVLM_EDGE_BUILD_TESTS=ON", "-DCMAKE_BUILD_TYPE=Debug", f"-DCMAKE_CXX_FLAGS={flags}"]
    build = build_cpp(tmp_path / "build", ["xvlm_edge_tokenizer_tests"], options)
    run = subprocess.run([build / "xvlm_edge_tokenizer_tests", VOCAB_PATH], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith(" 0 failures"), run.stdout + run.stderr
