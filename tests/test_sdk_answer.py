"""The SDK's VQA `answer` (xvlm_answer, `xvlm-lamp answer`) against `Model.answer` on the same export.

The micro random model here has the check/caption heads the SDK opens with plus the vqa head, and an answer
list of 15 answers (more than the export's 8 decoder rows, so re-scoring the default k is cut in two). A copy
without the answer list generates open-ended answers. Ranked: the candidates' order and text equal, their
probabilities and shares within 1e-5 of both Python backends (measured: 3.2e-6 against torch); generated:
the text equal, the probability within 1e-5 (measured: 4e-7). Under -m slow, the embedded model (no answer
list: open-ended, and ranking a given list). The C API's answer cases run in its bad-input suite.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from _sdk import EXAMPLES, PROBABILITY_ATOL, export_for, lamp
from test_export_executorch import micro_checkpoint

import xvlm_edge
from xvlm_edge.config import LAYOUT_HEADS
from xvlm_edge.export import export_model

pytest.importorskip("executorch", reason="the SDK builds against the executorch wheel: pip install 'xvlm-edge[sdk]'")

QUESTIONS = ["what shape is the red object?", "how many stars are there?"]
ANSWER_LIST = ["red", "blue", "green", "yellow", "pink", "purple", "orange", "cyan", "one", "two", "three", "four", "a red circle", "yes", "no"]
GIVEN = ["a star", "a circle", "a square", "three", "two", "red", "blue", "green", "on the left", "nothing"]  # 10: past 8 rows


@pytest.fixture(scope="session")
def vqa_model(tmp_path_factory) -> Path:
    directory = micro_checkpoint(tmp_path_factory.mktemp("sdk-vqa") / "model", ("itc", "itm", "bbox", "caption", *LAYOUT_HEADS["vqa"]))
    (directory / "answer_list.json").write_text(json.dumps(ANSWER_LIST))
    export_model(directory, "fp32", "executorch", threads=1)
    return directory


@pytest.fixture(scope="session")
def open_vqa_model(vqa_model: Path, tmp_path_factory) -> Path:
    """The same model and export without the answer list: answers are generated."""
    directory = tmp_path_factory.mktemp("sdk-vqa-open") / "model"
    shutil.copytree(vqa_model, directory)
    export = export_for(directory)
    for answers in (directory / "answer_list.json", export / "answer_list.json"):
        answers.unlink()
    manifest = json.loads((export / "manifest.json").read_text())
    del manifest["assets"]["answer_list"]
    (export / "manifest.json").write_text(json.dumps(manifest))
    return directory


def answer(build: Path, model_dir: Path, image: Path, question: str, *options: str | int, expect: int = 0) -> dict:
    return lamp(build, "answer", image, question, "--model", export_for(model_dir), *options, expect=expect)


def check_ranked(build: Path, model_dir: Path, images: list[Path], answers: list[str] | None, k: int | None) -> None:
    options = [*(("--answers", *answers) if answers else ()), *(("-k", k) if k else ())]
    python = {name: xvlm_edge.load(model_dir, backend=name, threads=1) for name in ("executorch", "torch")}
    for image in images:
        for question in QUESTIONS:
            found = answer(build, model_dir, image, question, *options)
            assert found["ranked"] is True
            for name, reference in python.items():
                expected = reference.answer(image, question, answers, **({"k": k} if k else {}))
                assert [c["answer"] for c in found["candidates"]] == [c.text for c in expected.candidates], (name, image.name, question)
                assert found["answer"] == expected.text
                for got, want in zip(found["candidates"], expected.candidates):
                    assert got["probability"] == pytest.approx(want.probability, abs=PROBABILITY_ATOL), (name, image.name, want.text)
                    assert got["share"] == pytest.approx(want.share, abs=PROBABILITY_ATOL), (name, image.name, want.text)


def check_generated(build: Path, model_dir: Path, images: list[Path]) -> None:
    python = {name: xvlm_edge.load(model_dir, backend=name, threads=1) for name in ("executorch", "torch")}
    for image in images:
        for question in QUESTIONS:
            found = answer(build, model_dir, image, question)
            assert found["ranked"] is False and found["candidates"] == [] and found["share"] is None
            for name, reference in python.items():
                expected = reference.answer(image, question)
                assert found["answer"] == expected.text, (name, image.name, question)
                assert found["probability"] == pytest.approx(expected.probability, abs=PROBABILITY_ATOL), (name, image.name, question)


def test_ranking_the_answer_list_equals_python(sdk_build: Path, vqa_model: Path) -> None:
    """The default k (128) keeps all 15 answers: re-scoring is cut into 8 + 7 decoder rows."""
    check_ranked(sdk_build, vqa_model, EXAMPLES, None, None)


def test_ranking_given_answers_equals_python(sdk_build: Path, vqa_model: Path) -> None:
    check_ranked(sdk_build, vqa_model, EXAMPLES[:2], GIVEN, 10)
    check_ranked(sdk_build, vqa_model, EXAMPLES[:1], GIVEN, 3)


def test_open_ended_answers_equal_python(sdk_build: Path, open_vqa_model: Path) -> None:
    check_generated(sdk_build, open_vqa_model, EXAMPLES)


def test_lamp_answer_refusals(sdk_build: Path, micro_model: Path, open_vqa_model: Path) -> None:
    refused = answer(sdk_build, micro_model, EXAMPLES[0], "what color?", "--answers", "red", expect=1)["stderr"]
    assert "XVLM_ERR_MODEL" in refused and "no answer decoder" in refused
    assert "k ranks candidate answers" in answer(sdk_build, open_vqa_model, EXAMPLES[0], "what color?", "-k", 3, expect=2)["stderr"]
    assert "XVLM_ERR_TEXT" in answer(sdk_build, open_vqa_model, EXAMPLES[0], "?!", expect=2)["stderr"]
    assert "apply to answer" in lamp(sdk_build, "check", EXAMPLES[0], "a star", "--model", export_for(micro_model), "-k", 3, expect=2)["stderr"]


def test_c_api_answer_cases(sdk_build: Path, micro_model: Path, vqa_model: Path, tmp_path: Path) -> None:
    """The bad-input suite with a vqa export: the answer cases past the model check run too."""
    done = subprocess.run(
        [sdk_build / "xvlm_edge_test_c_api", export_for(micro_model), EXAMPLES[0], tmp_path, export_for(vqa_model)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0 and "0 failures" in done.stdout, done.stdout + done.stderr[-4000:]


@pytest.mark.slow
def test_answers_equal_python_on_the_embedded_model(sdk_build: Path, embedded_model: Path) -> None:
    """The embedded model ships no answer list: open-ended, and ranking a given list past the 8 rows."""
    check_generated(sdk_build, embedded_model, EXAMPLES)
    check_ranked(sdk_build, embedded_model, EXAMPLES, GIVEN, 10)
