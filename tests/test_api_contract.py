"""The public API's contract: every mistake raises a typed error naming the problem; every score means one thing.

1. Bad input: one table per kind of mistake (images, texts, numbers, `load` arguments, model directories),
   across every verb. Each case asserts the error type (an `XVLMEdgeError`; `InputError` or `CheckpointError`
   where the caller or the checkpoint is at fault) and that the message names the argument or field.
2. Score semantics: every user-facing number is a probability in [0, 1], raw values have their own fields,
   repeated inputs keep their own entries, boxes are clipped, captions say when they hit max_length.
3. Chunking: long phrase lists are cut into `graphs.TEXT_CHUNK` rows per graph call and give the results of
   one unchunked call on the torch backend (1e-5: the calls differ only in batch composition and padding).

The embedded default model (`xvlm_edge.load()`) has every head but NLVR2's; a tiny random model covers NLVR2.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_onnxruntime_backend import make_checkpoint

import xvlm_edge
from xvlm_edge.api import Model, default_threads
from xvlm_edge.checkpoint import Checkpoint, convert_official, load_directory, save
from xvlm_edge.config import HIDDEN_ACTS, ModelConfig, get_preset
from xvlm_edge.errors import CheckpointError, EngineError, ImageError, InputError, TextError, XVLMEdgeError
from xvlm_edge.graphs import DECODER_ROWS, IMAGE_CHUNK, TEXT_CHUNK
from xvlm_edge.models.layers import ACTIVATIONS
from xvlm_edge.tasks.batching import row_chunks
from xvlm_edge.tasks.ground import ground_phrases, to_box
from xvlm_edge.tasks.match import match_probabilities
from xvlm_edge.tokenizer import Tokenizer

ATOL = 1e-5
EXAMPLES = sorted((Path(xvlm_edge.__file__).parent / "assets" / "examples").glob("*.png"))
IMAGE = np.random.default_rng(0).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
QUESTION = "what color is the square?"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def default() -> Model:
    return xvlm_edge.load(threads=1)


@pytest.fixture(scope="module")
def nlvr_model(tmp_path_factory) -> Model:
    return xvlm_edge.load(make_checkpoint(tmp_path_factory.mktemp("nlvr") / "model", ("nlvr",)), threads=1)


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("places")
    (root / "folder").mkdir()
    return {"missing": str(root / "absent.png"), "folder": str(root / "folder")}


# -- 1. bad input -------------------------------------------------------------------------------------------------

#: (id, bad image source, what the message says); "<missing>" and "<folder>" stand for paths made by the test.
BAD_IMAGES = [
    ("none", None, "unsupported image source type NoneType"),
    ("int", 3, "unsupported image source type int"),
    ("float", 2.5, "unsupported image source type float"),
    ("missing-file", "<missing>", "not found"),
    ("empty-bytes", b"", "empty"),
    ("directory", "<folder>", "is a directory"),
    ("object", object(), "unsupported image source type object"),
    ("empty-path", "", "empty path"),
]

#: verb -> (call with one image source, the argument's name in the message)
IMAGE_CALLS = {
    "caption": (lambda m, img, _: m.caption(img, num_beams=1), "images"),
    "caption-list": (lambda m, img, _: m.caption([IMAGE, img], num_beams=1), r"images\[1\]"),
    "ground": (lambda m, img, _: m.ground(img, "a red square"), "image"),
    "match": (lambda m, img, _: m.match(img, ["a red square"]), "image"),
    "check": (lambda m, img, _: m.check(img, "a red square"), "image"),
    "retrieve": (lambda m, img, _: m.retrieve([img], ["a red square"], k=1), r"images\[0\]"),
    "answer": (lambda m, img, _: m.answer(img, QUESTION, ["red"]), "images"),
    "nlvr-left": (lambda _, img, n: n.nlvr(img, IMAGE, "two shapes"), "image0"),
    "nlvr-right": (lambda _, img, n: n.nlvr(IMAGE, img, "two shapes"), "image1"),
}


@pytest.mark.parametrize("verb", list(IMAGE_CALLS))
@pytest.mark.parametrize(("source", "problem"), [case[1:] for case in BAD_IMAGES], ids=[case[0] for case in BAD_IMAGES])
def test_bad_image(default: Model, nlvr_model: Model, places: dict, verb: str, source: Any, problem: str) -> None:
    call, name = IMAGE_CALLS[verb]
    source = {"<missing>": places["missing"], "<folder>": places["folder"]}.get(source, source) if isinstance(source, str) else source
    with pytest.raises(ImageError, match=rf"^{name}\W.*{problem}") as info:
        call(default, source, nlvr_model)
    assert isinstance(info.value, InputError)


#: (id, call, error type, message pattern); `m` is the default model, `n` the NLVR2 model.
BAD_TEXTS = []
for _verb, _call, _name in [
    ("ground", lambda m, _, t: m.ground(IMAGE, t), "texts"),
    ("match", lambda m, _, t: m.match(IMAGE, t), "texts"),
    ("check", lambda m, _, t: m.check(IMAGE, t), "statements"),
    ("retrieve", lambda m, _, t: m.retrieve([IMAGE], t, k=1), "texts"),
    ("nlvr", lambda _, n, t: n.nlvr(IMAGE, IMAGE, t), "statements"),
    ("answer", lambda m, _, t: m.answer(IMAGE, t, ["red"]), "questions"),
]:
    BAD_TEXTS += [
        (f"{_verb}-none", _call, None, TextError, rf"^{_name} must be a string or a list of strings, got NoneType"),
        (f"{_verb}-int", _call, 7, TextError, rf"^{_name} must be a string or a list of strings, got int"),
        (f"{_verb}-list-with-int", _call, ["a square", 3], TextError, rf"^{_name}\[1\] must be a string, got int"),
        (f"{_verb}-empty-list", _call, [], InputError, rf"^{_name} is an empty list"),
        (f"{_verb}-empty-string", _call, "", TextError, rf"^{_name}\W.*empty"),
        (f"{_verb}-only-punctuation", _call, ["a square", "?!"], TextError, rf"^{_name}\[1\]\W.*empty"),
    ]
BAD_TEXTS += [
    ("answer-answers-int", lambda m, _, t: m.answer(IMAGE, QUESTION, t), 3, TextError, r"^answers must be a string or a list"),
    ("answer-answers-list-with-none", lambda m, _, t: m.answer(IMAGE, QUESTION, t), ["red", None], TextError, r"^answers\[1\] must be a string"),
    ("answer-answers-empty-list", lambda m, _, t: m.answer(IMAGE, QUESTION, t), [], InputError, r"^answers is an empty list"),
    ("retrieve-texts-dict", lambda m, _, t: m.retrieve([IMAGE], t), {"a": 1}, TextError, r"^texts must be a string or a list of strings, got dict"),
    ("match-lone-surrogate", lambda m, _, t: m.match(IMAGE, t), ["a square", "caf\udce9"], TextError, r"^texts\[1\] is not valid Unicode"),
    ("answer-lone-surrogate", lambda m, _, t: m.answer(IMAGE, t, ["red"]), "why\udcff?", TextError, r"^questions is not valid Unicode"),
]


@pytest.mark.parametrize(("call", "text", "error", "pattern"), [c[1:] for c in BAD_TEXTS], ids=[c[0] for c in BAD_TEXTS])
def test_bad_text(default: Model, nlvr_model: Model, call, text: Any, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern) as info:
        call(default, nlvr_model, text)
    assert isinstance(info.value, InputError)


#: (id, call on the default model, message pattern); the default prompt "a picture of " is 4 tokens.
BAD_NUMBERS = [
    ("num_beams-0", lambda m: m.caption(IMAGE, num_beams=0), r"^num_beams must be an integer from 1 to 128, got 0"),
    ("num_beams-2.5", lambda m: m.caption(IMAGE, num_beams=2.5), r"^num_beams must be an integer.*got 2\.5"),
    ("num_beams-True", lambda m: m.caption(IMAGE, num_beams=True), r"^num_beams must be an integer.*got True"),
    ("num_beams-str", lambda m: m.caption(IMAGE, num_beams="3"), r"^num_beams must be an integer.*got '3'"),
    ("num_beams-over-decoder-rows", lambda m: m.caption(IMAGE, num_beams=DECODER_ROWS + 1), r"^num_beams must be an integer from 1 to 128"),
    ("max_length-prompt", lambda m: m.caption(IMAGE, max_length=4), r"^max_length must be an integer from 5 to \d+ \(it counts the 4 prompt tokens\), got 4"),
    ("max_length-0", lambda m: m.caption(IMAGE, max_length=0), r"^max_length must be an integer from 5"),
    ("max_length-float", lambda m: m.caption(IMAGE, max_length=12.0), r"^max_length must be an integer.*got 12\.0"),
    ("max_length-past-positions", lambda m: m.caption(IMAGE, max_length=10**6), r"^max_length must be an integer from 5 to 512"),
    ("min_length-above-max", lambda m: m.caption(IMAGE, max_length=10, min_length=11), r"^min_length .* 0 to 10 \(at most max_length 10\), got 11"),
    ("min_length-negative", lambda m: m.caption(IMAGE, min_length=-1), r"^min_length must be an integer from 0"),
    ("min_length-greedy", lambda m: m.caption(IMAGE, num_beams=1, min_length=8), r"^min_length 8 applies to beam search only"),
    ("retrieve-k-0", lambda m: m.retrieve([IMAGE], ["a"], k=0), r"^k must be an integer >= 1, got 0"),
    ("retrieve-k-negative", lambda m: m.retrieve([IMAGE], ["a"], k=-1), r"^k must be an integer >= 1, got -1"),
    ("retrieve-k-nan", lambda m: m.retrieve([IMAGE], ["a"], k=float("nan")), r"^k must be an integer >= 1, got nan"),
    ("retrieve-k-2.5", lambda m: m.retrieve([IMAGE], ["a"], k=2.5), r"^k must be an integer >= 1, got 2\.5"),
    ("retrieve-k-True", lambda m: m.retrieve([IMAGE], ["a"], k=True), r"^k must be an integer >= 1, got True"),
    ("answer-k-0", lambda m: m.answer(IMAGE, QUESTION, ["red"], k=0), r"^k must be an integer from 1 to 128"),
    ("answer-k-negative", lambda m: m.answer(IMAGE, QUESTION, ["red"], k=-1), r"^k must be an integer from 1 to 128.*got -1"),
    ("answer-k-nan", lambda m: m.answer(IMAGE, QUESTION, ["red"], k=float("nan")), r"^k must be an integer.*got nan"),
    ("answer-k-2.5", lambda m: m.answer(IMAGE, QUESTION, ["red"], k=2.5), r"^k must be an integer.*got 2\.5"),
    ("answer-k-over-decoder-rows", lambda m: m.answer(IMAGE, QUESTION, ["red"], k=DECODER_ROWS + 1), r"^k must be an integer from 1 to 128"),
    ("answer-k-without-candidates", lambda m: m.answer(IMAGE, QUESTION, k=3), r"^k ranks candidate answers, but this call generates"),
    ("threshold-negative", lambda m: m.check(IMAGE, "a", threshold=-0.1), r"^threshold must be a probability from 0 to 1, got -0\.1"),
    ("threshold-above-1", lambda m: m.check(IMAGE, "a", threshold=1.5), r"^threshold must be a probability from 0 to 1, got 1\.5"),
    ("threshold-nan", lambda m: m.check(IMAGE, "a", threshold=float("nan")), r"^threshold must be a probability from 0 to 1, got nan"),
    ("threshold-True", lambda m: m.check(IMAGE, "a", threshold=True), r"^threshold must be a probability.*got True"),
    ("threshold-str", lambda m: m.check(IMAGE, "a", threshold="0.5"), r"^threshold must be a probability.*got '0\.5'"),
    ("answer-images-questions-count", lambda m: m.answer([IMAGE, IMAGE], ["a?", "b?", "c?"]), r"^2 images but 3 questions"),
]


@pytest.mark.parametrize(("call", "pattern"), [c[1:] for c in BAD_NUMBERS], ids=[c[0] for c in BAD_NUMBERS])
def test_bad_number(default: Model, call, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        call(default)


BAD_LOAD_ARGUMENTS = [
    ("threads-0", {"threads": 0}, InputError, r"^threads must be an integer >= 1, got 0"),
    ("threads-negative", {"threads": -1}, InputError, r"^threads must be an integer >= 1, got -1"),
    ("threads-1.5", {"threads": 1.5}, InputError, r"^threads must be an integer >= 1, got 1\.5"),
    ("threads-True", {"threads": True}, InputError, r"^threads must be an integer >= 1, got True"),
    ("threads-str", {"threads": "2"}, InputError, r"^threads must be an integer >= 1, got '2'"),
    ("path-int", {"path": 3}, InputError, r"^path must be a checkpoint directory or an official \.th file path, got int"),
    ("path-empty", {"path": ""}, InputError, r"^path is an empty string"),
    ("backend-int", {"backend": 1}, InputError, r"^backend must be a string"),
    ("backend-unknown", {"backend": "jax"}, XVLMEdgeError, r"^unknown backend 'jax'"),
    ("precision-unknown", {"precision": "int3"}, XVLMEdgeError, r"^unknown precision 'int3'"),
    ("device-int", {"device": 0}, InputError, r"^device must be None, a string"),
]


@pytest.mark.parametrize(("kwargs", "error", "pattern"), [c[1:] for c in BAD_LOAD_ARGUMENTS], ids=[c[0] for c in BAD_LOAD_ARGUMENTS])
def test_bad_load_argument(kwargs: dict, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        xvlm_edge.load(**kwargs)


def test_load_checks_arguments_before_reading_anything(tmp_path: Path) -> None:
    """A bad thread count is reported even when the path does not exist: arguments first, then the disk."""
    with pytest.raises(InputError, match="threads"):
        xvlm_edge.load(tmp_path / "absent", threads=0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random VQA + grounding checkpoint directory; broken copies link to its weights."""
    return make_checkpoint(tmp_path_factory.mktemp("contract") / "model", ("itc", "itm", "bbox", "vqa"))


def _config_with(directory: Path, path: str, value: Any) -> dict:
    config = json.loads((directory / "config.json").read_text())
    *parents, leaf = path.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[leaf] = value
    return config


#: (id, how to break the copy, message pattern). A break is {file: content} (str or bytes; a dict/list is JSON),
#: or a config field path and its bad value.
BAD_DIRECTORIES = [
    ("missing", None, r"no checkpoint at"),
    ("no-config", {"config.json": None}, r"config\.json is missing"),
    ("config-not-json", {"config.json": "{not json"}, r"cannot read model config"),
    ("config-a-list", {"config.json": []}, r"the model config must be a JSON object, got list"),
    ("image_res-big", ("vision.image_res", "big"), r"vision\.image_res must be a positive integer, got 'big'"),
    ("image_res-negative", ("vision.image_res", -128), r"vision\.image_res must be a positive integer, got -128"),
    ("image_res-not-a-multiple", ("vision.image_res", 100), r"vision\.image_res 100 is not a multiple of 16"),
    ("image_res-bool", ("vision.image_res", True), r"vision\.image_res must be a positive integer, got True"),
    ("text-num_heads-0", ("text.num_heads", 0), r"text\.num_heads must be a positive integer, got 0"),
    ("text-num_heads-not-dividing", ("text.num_heads", 3), r"text\.num_heads 3 does not divide text\.hidden_size 128"),
    ("vision-num_heads-0", ("vision.num_heads", [1, 0, 4]), r"vision\.num_heads must be a non-empty list of positive integers"),
    ("vision-num_heads-count", ("vision.num_heads", [1, 2]), r"vision\.num_heads \[1, 2\] must give one head count per stage"),
    ("vision-depths-int", ("vision.depths", 5), r"vision\.depths must be a list, got 5"),
    ("vision-kind-unknown", ("vision.kind", "vit"), r"unknown vision\.kind 'vit'"),
    ("window-not-tiling", ("vision.window_size", 3), r"vision\.window_size 3 does not tile stage 0"),
    ("ape-string", ("vision.ape", "yes"), r"vision\.ape must be true or false"),
    ("hidden_act-unknown", ("text.hidden_act", "relu"), r"text\.hidden_act 'relu' is unknown"),
    ("fusion_layer-past-layers", ("text.fusion_layer", 9), r"text\.fusion_layer 9 outside 0\.\.4"),
    ("layer_norm_eps-negative", ("text.layer_norm_eps", -1e-12), r"text\.layer_norm_eps must be a positive number"),
    ("unknown-head", ("heads", ["itm", "segment"]), r"unknown heads \['segment'\]"),
    ("no-heads", ("heads", []), r"heads must be a non-empty list"),
    ("check_threshold", ("check_threshold", 1.5), r"check_threshold must be a probability in \[0, 1\], got 1\.5"),
    ("temp-nan", ("temp", float("nan")), r"temp must be a positive number, got nan"),
    ("max_tokens-1", ("max_tokens", 1), r"max_tokens must be an integer >= 2, got 1"),
    ("caption_num_beams-0", ("tasks.caption_num_beams", 0), r"tasks\.caption_num_beams must be a positive integer, got 0"),
    ("caption_min-above-max", ("tasks.caption_min_length", 30), r"tasks\.caption_min_length 30 exceeds tasks\.caption_max_length 20"),
    ("vqa_k_test-str", ("tasks.vqa_k_test", "128"), r"tasks\.vqa_k_test must be a positive integer, got '128'"),
    ("unknown-key", ("text.hiden_size", 128), r"unknown TextConfig keys \['hiden_size'\]"),
    ("corrupt-weights", {"model.safetensors": b"\x00garbage" * 64}, r"model\.safetensors is corrupt"),
    ("vocab-size", {"vocab.txt": "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n"}, r"vocab\.txt has 5 tokens but config\.json's text\.vocab_size is 30522"),
    ("answer_list-not-a-list", {"answer_list.json": {"red": 1}}, r"answer_list\.json must be a non-empty list of answer strings, got dict"),
    ("answer_list-empty", {"answer_list.json": []}, r"answer_list\.json must be a non-empty list"),
    ("answer_list-int", {"answer_list.json": ["red", 2]}, r"answer_list\.json\[1\] is 2, not a string"),
    ("answer_list-not-json", {"answer_list.json": "red, blue"}, r"cannot read answer list"),
]


@pytest.mark.parametrize(("broken", "pattern"), [c[1:] for c in BAD_DIRECTORIES], ids=[c[0] for c in BAD_DIRECTORIES])
def test_bad_model_directory(model_dir: Path, tmp_path: Path, broken: Any, pattern: str) -> None:
    directory = tmp_path / "broken"
    if broken is not None:
        directory.mkdir()
        for name in ("config.json", "model.safetensors", "vocab.txt"):
            os.symlink(model_dir / name, directory / name)
        files = {"config.json": _config_with(model_dir, *broken)} if isinstance(broken, tuple) else broken
        for name, content in files.items():
            (directory / name).unlink(missing_ok=True)
            if content is None:
                continue
            if isinstance(content, bytes):
                (directory / name).write_bytes(content)
            else:
                (directory / name).write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(CheckpointError, match=pattern):
        xvlm_edge.load(directory, threads=1)


def test_config_errors_are_raised_when_the_config_is_built() -> None:
    """The same checks guard configs built in code (dataclass __post_init__), not only config.json."""
    with pytest.raises(CheckpointError, match=r"text\.num_heads must be a positive integer, got 0"):
        ModelConfig.from_dict({"text": {"num_heads": 0}})
    with pytest.raises(CheckpointError, match=r"vision\.image_res must be a positive integer"):
        ModelConfig.from_dict({"vision": {"image_res": "big"}})
    for name in ("tiny", "xvlm-base-4m-224", "xvlm-base-16m-384", "clip-vit-b16"):  # every preset is valid
        assert ModelConfig.from_dict(get_preset(name).to_dict()) == get_preset(name)
    assert set(HIDDEN_ACTS) == set(ACTIVATIONS)  # the config accepts exactly the activations the models implement


def test_engine_failure_is_one_line_naming_the_task(default: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (3x7 and 8x9)\n" + "  a torch frame\n" * 40)

    monkeypatch.setattr(default.runtime, "fusion", broken)
    with pytest.raises(EngineError, match=r"^match failed in the torch runtime: RuntimeError: mat1 and mat2 shapes") as info:
        default.match(IMAGE, "a red square")
    assert "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_arguments_are_checked_before_any_work(default: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        pytest.fail("a graph ran before the arguments were checked")

    for graph in ("vision", "text", "fusion"):
        monkeypatch.setattr(default.runtime, graph, forbidden)
    with pytest.raises(InputError, match="^k must"):
        default.retrieve([IMAGE, IMAGE], ["a", "b"], k=0)
    with pytest.raises(InputError, match="^threshold must"):
        default.check(IMAGE, "a", threshold=2)
    with pytest.raises(TextError, match=r"^texts\[2\]"):
        default.ground(IMAGE, ["a", "b", "!!"])
    with pytest.raises(ImageError, match=r"^images\[1\]"):  # every image is decoded before the first is encoded
        default.caption([IMAGE, b"not an image"])


# -- 2. what the numbers mean -----------------------------------------------------------------------------------


def test_caption_probability_and_truncation(default: Model) -> None:
    image = str(EXAMPLES[0])
    for beams in (1, 3):
        short = default.caption(image, num_beams=beams, max_length=6)  # the 4-token prompt + 2 tokens
        assert short.truncated, "two new tokens cannot finish a caption of the default model"
        assert len(short.token_ids) == 6
        assert 0.0 < short.probability <= 1.0
        assert short.probability == pytest.approx(math.exp(short.logprob)) and short.score == short.probability
        full = default.caption(image, num_beams=beams, max_length=40)
        assert not full.truncated and full.token_ids[-1] == default.tokenizer.sep_id and len(full.token_ids) < 40


def test_match_check_and_nlvr_are_probabilities(default: Model, nlvr_model: Model) -> None:
    probs = default.match(IMAGE, ["a red square", "two blue circles"])
    assert all(0.0 <= p <= 1.0 for p in probs)
    verdict = default.check(IMAGE, "a red square")
    assert verdict.threshold == default.config.check_threshold and verdict.probability == pytest.approx(probs[0], abs=ATOL)
    assert default.check(IMAGE, "a red square", threshold=0.0).verdict is True
    assert default.check(IMAGE, "a red square", threshold=1.0).verdict is (verdict.probability >= 1.0)
    assert default.check(IMAGE, "a red square", threshold=verdict.probability).verdict is True  # at the threshold: true
    for found in nlvr_model.nlvr(IMAGE, IMAGE[::-1].copy(), ["two shapes", "a dog"]):
        assert 0.0 <= found.probability <= 1.0 and found.verdict == (found.probability > 0.5) and found.score == found.probability


def test_retrieve_keeps_repeated_inputs_and_reports_probabilities(default: Model) -> None:
    images = [str(EXAMPLES[0]), str(EXAMPLES[1]), str(EXAMPLES[0])]
    texts = ["a red square", "two blue circles", "a red square"]
    found = default.retrieve(images, texts, k=3)
    for i, ranked in enumerate(found.texts_for_image):
        assert sorted(r.index for r in ranked) == [0, 1, 2]  # the repeated text is there twice, by position
        assert [r.logit for r in ranked] == sorted((r.logit for r in ranked), reverse=True)  # official order
        for r in ranked:
            assert 0.0 <= r.probability <= 1.0
            assert r.probability == pytest.approx(default.match(images[i], texts[r.index]), abs=ATOL)
        by_index = {r.index: r for r in ranked}
        assert by_index[0].logit == pytest.approx(by_index[2].logit, abs=ATOL)
    assert all(sorted(r.index for r in ranked) == [0, 1, 2] for ranked in found.images_for_text)
    assert torch.isnan(found.scores.probs).sum() == 0  # k = everything: every pair was fused


def test_single_candidate_answer_reports_the_models_probability(default: Model) -> None:
    image = str(EXAMPLES[0])
    alone = default.answer(image, QUESTION, ["red"])
    assert alone.share == 1.0 and len(alone.candidates) == 1  # the official within-k softmax of one
    assert 0.0 < alone.probability < 1.0 and alone.score == alone.probability  # the model's own probability
    among = default.answer(image, QUESTION, ["blue", "red", "green", "yellow"])
    red = next(c for c in among.candidates if c.text == "red")
    assert red.probability == pytest.approx(alone.probability, rel=1e-4)  # a candidate's probability is its own
    assert sum(c.share for c in among.candidates) == pytest.approx(1.0, abs=ATOL)
    assert [c.share for c in among.candidates] == sorted((c.share for c in among.candidates), reverse=True)
    assert among.text == among.candidates[0].text and among.probability == among.candidates[0].probability
    empty = default.answer(image, QUESTION, [""])
    assert empty.share == 1.0 and 0.0 < empty.probability < 1.0
    free = default.answer(image, QUESTION)
    assert free.share is None and free.candidates == [] and 0.0 < free.probability <= 1.0


def test_answer_ranks_over_the_checkpoints_answer_list(model_dir: Path, tmp_path: Path) -> None:
    listed = tmp_path / "listed"
    answers = ["red", "blue", "two", "on the table"]
    save(Checkpoint(load_directory(model_dir).model, Tokenizer.default(), load_directory(model_dir).config, answer_list=answers), listed)
    assert json.loads((listed / "answer_list.json").read_text()) == answers
    model = xvlm_edge.load(listed, threads=1)
    assert model.answer_list == answers
    found = model.answer(IMAGE, [QUESTION, "how many?"])
    assert all(a.text in answers and len(a.candidates) == len(answers) for a in found)
    assert [a.text for a in found] == [a.text for a in model.answer(IMAGE, [QUESTION, "how many?"], answers)]
    assert len(model.answer(IMAGE, QUESTION, k=2).candidates) == 2
    plain = xvlm_edge.load(model_dir, threads=1)  # no answer list: open-ended
    assert plain.answer_list is None and plain.answer(IMAGE, QUESTION).candidates == []


def test_convert_official_reads_and_save_writes_an_answer_list(reference_dir: Path, tmp_path: Path) -> None:
    meta = json.loads((reference_dir / "inputs/inputs.json").read_text())
    answers = meta["texts"]["vqa_answers"]["answer_list"]
    (tmp_path / "answer_list.json").write_text(json.dumps(answers))
    converted = convert_official(reference_dir / "checkpoints/swin_vqa.th", answer_list=tmp_path / "answer_list.json")
    assert converted.answer_list == answers
    model = xvlm_edge.load(save(converted, tmp_path / "vqa"), threads=1)
    assert model.answer_list == answers
    files = [reference_dir / "inputs/images" / image["file"] for image in meta["images"]]
    questions = [q["question"] for q in meta["vqa"]]
    images = [files[q["image"]] for q in meta["vqa"]]
    expected = torch.load(reference_dir / "expected/swin_vqa.pt", weights_only=True)["pred_answer"]
    assert [a.text for a in model.answer(images, questions)] == expected  # the official answers, from the list
    (tmp_path / "bad.json").write_text('{"red": 1}')
    with pytest.raises(CheckpointError, match=r"bad\.json must be a non-empty list of answer strings"):
        convert_official(reference_dir / "checkpoints/swin_vqa.th", answer_list=tmp_path / "bad.json")
    with pytest.raises(CheckpointError, match="without the vqa head"):
        convert_official(reference_dir / "checkpoints/swin_bbox.th", answer_list=tmp_path / "answer_list.json")


def test_boxes_are_clipped_to_the_image_and_say_so() -> None:
    inside = to_box("a", torch.tensor([0.5, 0.5, 0.2, 0.4], dtype=torch.float64), 100, 50)
    assert not inside.clipped and inside.cxcywh == inside.raw_cxcywh
    assert inside.xyxy == pytest.approx([40.0, 15.0, 60.0, 35.0])
    past = to_box("b", torch.tensor([0.1, 0.9, 0.4, 0.4], dtype=torch.float64), 100, 50)  # reaches past left and bottom
    assert past.clipped and past.raw_cxcywh == pytest.approx([0.1, 0.9, 0.4, 0.4])
    assert past.xyxy == pytest.approx([0.0, 35.0, 30.0, 50.0])
    cx, cy, w, h = past.cxcywh
    assert [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2] == pytest.approx([0.0, 0.7, 0.3, 1.0])  # the clipped box, normalised


def test_ground_clips_a_box_predicted_past_the_image(default: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    fusion = default.runtime.fusion

    def off_the_edge(*args, **kwargs):
        out = fusion(*args, **kwargs)
        out.bbox = torch.tensor([[0.95, 0.5, 0.3, 0.2]]).expand(len(out.bbox), 4).to(out.bbox)
        return out

    monkeypatch.setattr(default.runtime, "fusion", off_the_edge)
    box = default.ground(IMAGE, "a red square")  # 80 x 60
    assert box.clipped and box.xyxy[2] == 80.0 and box.xyxy[0] == pytest.approx(0.8 * 80)
    assert all(0.0 <= v <= 1.0 for v in box.cxcywh)


def test_default_threads_never_exceed_torchs_count() -> None:
    threads, reason = default_threads()
    assert 1 <= threads <= torch.get_num_threads() and reason.startswith("default:")


# -- 3. chunking ----------------------------------------------------------------------------------------------


def _phrases(count: int) -> list[str]:
    colours, shapes = ["red", "blue", "green", "pink", "yellow"], ["square", "circle", "cross", "star", "triangle", "hexagon"]
    return [f"the {colours[i % 5]} {shapes[i // 5 % 6]} number {i}" for i in range(count)]


def _rows_per_call(model: Model, monkeypatch: pytest.MonkeyPatch, graphs: tuple[str, ...]) -> list[int]:
    sizes: list[int] = []
    for graph in graphs:
        original = getattr(model.runtime, graph)

        def spy(*args, _original=original, **kwargs):
            sizes.append(len(args[0]))
            return _original(*args, **kwargs)

        monkeypatch.setattr(model.runtime, graph, spy)
    return sizes


def test_ground_many_phrases_is_chunked_and_equals_one_call(default: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    phrases = _phrases(200)
    encoded = default._encode_images([IMAGE])
    ids, atts = default._encode_texts(phrases)
    index = torch.zeros(len(phrases), dtype=torch.long)
    unchunked = ground_phrases(default.runtime, encoded.image_embeds, ids, atts, index, [(80, 60)], phrases, chunk=10**6)
    sizes = _rows_per_call(default, monkeypatch, ("text", "fusion"))
    boxes = default.ground(IMAGE, phrases)
    assert max(sizes) == TEXT_CHUNK and len(sizes) == 4  # 128 + 72 rows, text then fusion
    assert [b.text for b in boxes] == phrases
    assert np.allclose([b.raw_cxcywh for b in boxes], [b.raw_cxcywh for b in unchunked], atol=ATOL)


def test_match_and_check_many_phrases_are_chunked_and_equal_one_call(default: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    phrases = _phrases(TEXT_CHUNK + 1)  # 129: one row over a TensorRT profile built with the defaults
    encoded = default._encode_images([IMAGE])
    ids, atts = default._encode_texts(phrases)
    unchunked = match_probabilities(default.runtime, encoded.image_embeds, ids, atts, torch.zeros(len(phrases), dtype=torch.long), chunk=10**6)
    sizes = _rows_per_call(default, monkeypatch, ("fusion",))
    probs = default.match(IMAGE, phrases)
    assert sizes == [TEXT_CHUNK, 1]
    assert np.allclose(probs, unchunked.numpy(), atol=ATOL)
    assert [v.probability for v in default.check(IMAGE, phrases)] == pytest.approx(probs, abs=ATOL)


def test_retrieve_reads_at_most_an_image_chunk_per_call(default: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    images = [IMAGE[:, ::-1].copy() if i % 2 else IMAGE for i in range(IMAGE_CHUNK + 4)]
    read: list[int] = []
    fusion = default.runtime.fusion

    def spy(text_embeds, text_atts, image_embeds, image_index, *rest):
        read.append(len(image_embeds))
        return fusion(text_embeds, text_atts, image_embeds, image_index, *rest)

    monkeypatch.setattr(default.runtime, "fusion", spy)
    found = default.retrieve(images, ["a red square", "two circles"], k=IMAGE_CHUNK + 4)
    assert max(read) <= IMAGE_CHUNK and len(read) >= 2
    monkeypatch.undo()
    for i in (0, 1, IMAGE_CHUNK + 3):  # each pair as one match call, one image per call
        assert found.scores.probs[i].tolist() == pytest.approx(default.match(images[i], ["a red square", "two circles"]), abs=ATOL)


def test_row_chunks_respect_rows_and_images() -> None:
    index = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4])
    assert row_chunks(index, chunk=3, max_images=10) == [slice(0, 3), slice(3, 6), slice(6, 8)]
    assert row_chunks(index, chunk=100, max_images=2) == [slice(0, 3), slice(3, 6), slice(6, 8)]
    pairs = torch.tensor([[0, 1], [0, 1], [2, 3]])
    assert row_chunks(pairs, chunk=100, max_images=2) == [slice(0, 2), slice(2, 3)]
    assert row_chunks(torch.zeros(0, dtype=torch.long)) == []


def test_answer_ranking_keeps_decoder_rows_within_the_limit(default: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [f"answer {i}" for i in range(100)]
    questions = [QUESTION, "how many shapes?", "what is on the left?"]
    one_by_one = [default.answer(IMAGE, q, answers, k=100) for q in questions]
    rows: list[int] = []
    decoder = default.runtime.decoder

    def spy(name, states, atts):
        rows.append(len(states))
        return decoder(name, states, atts)

    monkeypatch.setattr(default.runtime, "decoder", spy)
    together = default.answer(IMAGE, questions, answers, k=100)
    assert rows == [1, 1, 1]  # 100 candidates per question: one question (100 rows) per decoder call
    for a, b in zip(together, one_by_one):
        assert a.text == b.text and a.probability == pytest.approx(b.probability, rel=1e-4)
