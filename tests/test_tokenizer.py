"""Tokenizer and official text cleaning: parity with the reference fixtures, the packaged vocab, bad input."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch

import xvlm_edge
from xvlm_edge.errors import CheckpointError, InputError, TextError
from xvlm_edge.text import pre_caption, pre_question
from xvlm_edge.tokenizer import DEFAULT_VOCAB, Tokenizer

# Official fine-tuning datasets call pre_caption / pre_question with these defaults (dataset/*.py at cb4fff1).
CLEANERS = {"caption": pre_caption, "question": pre_question}


@pytest.fixture(scope="module")
def ref(reference_dir: Path) -> dict:
    """The reference texts, input tensors, configs and captioning outputs, loaded once."""

    def config(name: str) -> dict:
        return json.loads((reference_dir / "configs" / name).read_text())

    def tensors(*parts: str) -> dict:
        return torch.load(reference_dir.joinpath(*parts), map_location="cpu", weights_only=True)

    return {
        "tok": Tokenizer.from_file(reference_dir / "data" / "bert-base-uncased" / "vocab.txt"),
        "json": json.loads((reference_dir / "inputs" / "inputs.json").read_text()),
        "pt": tensors("inputs", "inputs.pt"),
        "caption": tensors("expected", "swin_captioning.pt"),
        "pretrain": config("yaml_pretrain.json"),
        "retrieval": config("yaml_retrieval.json"),
        "captioning": config("yaml_captioning.json"),
    }


def _assert_encoding(enc, pt: dict, prefix: str) -> None:
    assert torch.equal(enc.input_ids, pt[f"{prefix}_ids"]), prefix
    assert torch.equal(enc.attention_mask, pt[f"{prefix}_atts"]), prefix


# --- fixture parity ---------------------------------------------------------------------------------------------


def test_special_ids_and_size_match_fixture(ref):
    tok, info = ref["tok"], ref["json"]
    ids = info["special_token_ids"]
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (
        ids["PAD"], ids["UNK"], ids["CLS"], ids["SEP"], ids["MASK"],
    )  # fmt: skip
    assert len(tok) == info["vocab_size"]


@pytest.mark.parametrize("section", ["captions", "grounding", "vqa_questions", "nlvr"])
def test_finetune_texts_match_official(ref, section):
    """pre_caption / pre_question + `[CLS] X`, padded to the longest (vendored BertTokenizer)."""
    tok, texts = ref["tok"], ref["json"]["texts"][section]
    clean = CLEANERS[texts["preprocessing"]]
    cleaned = [clean(raw) for raw in texts["raw"]]
    assert cleaned == texts["preprocessed"]
    assert [["[CLS]", *tok.tokenize(t)] for t in cleaned] == texts["tokens"]
    _assert_encoding(tok.encode(cleaned), ref["pt"], section)


def test_vqa_answers_match_official(ref):
    tok, texts = ref["tok"], ref["json"]["texts"]["vqa_answers"]
    answers = texts["answer_list"]
    assert [a + "[SEP]" for a in answers] == texts["raw"]
    assert [["[CLS]", *tok.tokenize(t)] for t in texts["raw"]] == texts["tokens"]
    _assert_encoding(tok.encode_answers(answers), ref["pt"], "vqa_answers")


def test_retrieval_eval_texts_match_official(ref):
    """Retrieval.py evaluation: padding='max_length', truncation, max_length=config max_tokens."""
    tok, texts = ref["tok"], ref["json"]["texts"]["retrieval_eval_texts"]
    enc = tok.encode(texts["preprocessed"], max_length=ref["retrieval"]["max_tokens"], padding="max_length")
    _assert_encoding(enc, ref["pt"], "retrieval_eval_text")


@pytest.mark.parametrize("section", ["pretrain_captions", "pretrain_regions"])
def test_pretrain_texts_match_official(ref, section):
    """RegionTextJsonDataset.preprocess: pre_caption(max_words), [CLS] + max_tokens-1 pieces, padded to max_tokens."""
    tok, texts, config = ref["tok"], ref["json"]["texts"][section], ref["pretrain"]
    cleaned = [pre_caption(raw, config["max_words"]) for raw in texts["raw"]]
    assert cleaned == texts["preprocessed"]
    assert [["[CLS]", *tok.tokenize(t)][: config["max_tokens"]] for t in cleaned] == texts["tokens"]
    enc = tok.encode(cleaned, max_length=config["max_tokens"], padding="max_length")
    _assert_encoding(enc, ref["pt"], f"{section}_text")


def test_captioning_teacher_forcing_matches_hf(ref):
    """transformers.BertTokenizer: `[CLS] X [SEP]`, padding='longest', truncation, max_length=max_tokens."""
    tok, texts, config = ref["tok"], ref["json"]["texts"]["captioning_tf"], ref["captioning"]
    assert all(raw.startswith(config["prompt"]) for raw in texts["raw"])
    assert [["[CLS]", *tok.tokenize(t), "[SEP]"] for t in texts["raw"]] == [
        [t for t in row if t != "[PAD]"] for row in texts["tokens"]
    ]
    enc = tok.encode(texts["raw"], max_length=config["max_tokens"], add_sep=True)
    _assert_encoding(enc, ref["pt"], "captioning_tf")


def test_caption_prompt_ids(ref):
    ids = ref["tok"].caption_prompt_ids(ref["captioning"]["prompt"])
    assert ids.dtype == torch.int64
    assert torch.equal(ids, ref["caption"]["prompt_ids"])


@pytest.mark.parametrize("kind", ["greedy", "beam3"])
def test_decoded_captions_match_official(ref, kind):
    """Official caption = decode(ids, skip_special_tokens=True)[len(prompt):]; `[unusedN]` survive."""
    tok, out, prompt = ref["tok"], ref["caption"], ref["captioning"]["prompt"]
    decoded = [tok.decode(row)[len(prompt) :] for row in out[f"{kind}_ids"]]
    assert decoded == out[f"{kind}_text"]


# --- the packaged bert-base-uncased vocabulary ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert() -> Tokenizer:
    return Tokenizer.default()


def test_packaged_vocab_file():
    data = (Path(xvlm_edge.__file__).parent / DEFAULT_VOCAB).read_bytes()
    assert hashlib.sha256(data).hexdigest().startswith("07eced37")
    assert data.count(b"\n") == 30522


def test_packaged_vocab_known_facts(bert):
    # Ids published with bert-base-uncased (model card / transformers docs examples).
    assert len(bert) == 30522
    assert (bert.pad_id, bert.unk_id, bert.cls_id, bert.sep_id, bert.mask_id) == (0, 100, 101, 102, 103)
    assert bert.encode(["hello world"], add_sep=True).input_ids.tolist() == [[101, 7592, 2088, 102]]
    ids = bert.encode(["Hello, my dog is cute"], add_sep=True).input_ids
    assert ids.tolist() == [[101, 7592, 1010, 2026, 3899, 2003, 10140, 102]]
    # The tokenization example of the google-research/bert README.
    assert bert.tokenize("John Johanson's house") == ["john", "johan", "##son", "'", "s", "house"]


def test_decode_cleans_up_like_transformers(bert):
    ids = bert.encode(["Hello, my dog isn't cute. Is it?"], add_sep=True).input_ids[0]
    assert bert.decode(ids) == "hello, my dog isn't cute. is it?"
    assert bert.decode(ids, skip_special_tokens=False).startswith("[CLS] hello,")
    assert bert.decode([bert.cls_id, bert.unk_id, bert.mask_id, bert.pad_id]) == ""


def test_non_ascii_text(bert):
    assert bert.tokenize("Café") == bert.tokenize("cafe") == ["cafe"]
    assert bert.tokenize("NAÏVE") == ["naive"]
    assert len(bert.tokenize("中文")) == 2  # every CJK character is its own word
    assert bert.tokenize("🙂") == ["[UNK]"]
    assert bert.tokenize("a" * 101) == ["[UNK]"]  # BertTokenizer's max_input_chars_per_word=100


def test_literal_special_token_is_split_out(bert):
    assert bert.tokenize("red[SEP]") == ["red", "[SEP]"]
    assert bert.tokenize("red[sep]") == ["red", "[", "sep", "]"]  # case-sensitive, as transformers


# --- bad and extreme input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\t\n", "\x00"])
def test_empty_text_raises(bert, text):
    with pytest.raises(TextError):
        bert.encode([text])


def test_long_text_is_truncated_fast(bert):
    text = ("a dog runs " * 1000)[:10_000]
    start = time.perf_counter()
    enc = bert.encode([text], max_length=40, add_sep=True)
    assert time.perf_counter() - start < 1.0
    assert enc.input_ids.shape == (1, 40)
    assert enc.input_ids[0, 0] == bert.cls_id
    assert enc.input_ids[0, -1] == bert.sep_id
    assert bool(enc.attention_mask.all())


def test_truncation_and_padding_modes(bert):
    enc = bert.encode(["a dog", "a big red dog runs"], max_length=4)
    assert enc.input_ids.tolist() == [
        [bert.cls_id, *bert.encode(["a dog"]).input_ids[0, 1:].tolist(), bert.pad_id],
        [bert.cls_id, *bert.encode(["a big red"]).input_ids[0, 1:].tolist()],
    ]
    assert enc.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert bert.encode(["a dog"], max_length=6, padding="max_length").input_ids.shape == (1, 6)


@pytest.mark.parametrize(
    "kwargs",
    [{"padding": "max_length"}, {"padding": "nope"}, {"max_length": 1}, {"max_length": 2, "add_sep": True}],
)
def test_bad_options_raise(bert, kwargs):
    with pytest.raises(InputError):
        bert.encode(["a dog"], **kwargs)


def test_bad_batches_and_ids_raise(bert):
    with pytest.raises(InputError):
        bert.encode("a dog")
    with pytest.raises(InputError):
        bert.encode([])
    with pytest.raises(TextError):
        bert.decode([len(bert)])


def test_missing_vocab_raises(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(CheckpointError, match=r"nope\.txt"):
        Tokenizer.from_file(path)


@pytest.mark.parametrize(
    "lines",
    [[], ["[PAD]", "[UNK]", "[SEP]", "[MASK]", "dog"], ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "dog", "dog"]],
    ids=["empty", "no-cls", "duplicate"],
)
def test_bad_vocab_raises(tmp_path, lines):
    path = tmp_path / "vocab.txt"
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"vocab\.txt"):
        Tokenizer.from_file(path)


def test_shuffled_vocab_ids_are_looked_up(tmp_path):
    tokens = ["dog", "[MASK]", "##s", "[SEP]", "[UNK]", "a", "[CLS]", "[PAD]"]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    tok = Tokenizer.from_file(path)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (7, 4, 6, 3, 1)
    enc = tok.encode(["a dogs", "cat"], add_sep=True)
    assert enc.input_ids.tolist() == [[6, 5, 0, 2, 3], [6, 4, 3, 7, 7]]
    assert tok.decode(enc.input_ids[0]) == "a dogs"


# --- official text cleaning -------------------------------------------------------------------------------------


def test_pre_caption_official_quirks():
    assert pre_caption("A <person>, riding (a) bike-path/road!!  ") == "a person riding a bike path road"
    assert pre_caption("one\ttwo") == "one\ttwo"  # a lone tab is not a run: kept, and not a word boundary
    assert pre_caption("one \t two") == "one two"
    assert pre_caption("a b c d", max_words=2) == "a b"
    with pytest.raises(TextError):
        pre_caption(" ?!. ")


def test_pre_question_official_quirks():
    assert pre_question("  What's the man's job?  ") == "  whats the mans job"  # leading spaces kept
    assert pre_question("a  b c", max_words=2) == "a "  # double space counts an empty word
    assert pre_question("?!") == ""  # no empty check, as official
