"""The `xvlm-edge` task commands, run as a user runs them: in a subprocess, on tiny random checkpoints.

Checks the output shapes (human text by default; `--json` is one JSON document on stdout, `--jsonl` one
object per input; lists in input order, so a repeated image or text keeps its own entry, with probabilities
and the raw values beside them), the drawn PNGs, folders, and that user mistakes exit 2 with one line on
stderr and no traceback. The bad-input contract in full is tests/test_cli_contract.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from xvlm_edge.checkpoint import Checkpoint, save
from xvlm_edge.cli._common import EMBEDDED_MODEL_NOTE
from xvlm_edge.config import LAYOUT_HEADS, get_preset
from xvlm_edge.models.xvlm import XVLM
from xvlm_edge.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cli")
    tokenizer = Tokenizer.default()
    models = {}
    for layout in ("pretrain", "captioning", "vqa", "nlvr"):
        torch.manual_seed(0)
        config = get_preset("tiny", LAYOUT_HEADS[layout])
        answers = ["red", "blue", "two"] if layout == "vqa" else None
        models[layout] = str(save(Checkpoint(XVLM(config).eval(), tokenizer, config, answer_list=answers), root / layout))
    torch.manual_seed(0)
    config = get_preset("tiny", LAYOUT_HEADS["vqa"])
    models["vqa_open"] = str(save(Checkpoint(XVLM(config).eval(), tokenizer, config), root / "vqa_open"))
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(48, 80), (90, 60), (64, 64)]):
        cv2.imwrite(str(images / f"img{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (images / "notes.txt").write_text("not an image, skipped by folder expansion")
    (root / "broken.png").write_bytes(b"not a png")
    return {"root": root, "models": models, "images": images}


def run(*args: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "xvlm_edge.cli", *args, "--threads", "1"]
    return subprocess.run(command, capture_output=True, text=True, env=environ, timeout=300, check=False)


def run_json(*args: str) -> dict:
    result = run(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # exactly one document, nothing else on stdout


def test_caption_folder_json_jsonl_and_human(env: dict) -> None:
    model, folder = env["models"]["captioning"], str(env["images"])
    doc = run_json("caption", folder, folder + "/img1.png", "--model", model, "--beams", "1", "--max-length", "12")
    assert [Path(r["image"]).name for r in doc["results"]] == ["img0.png", "img1.png", "img2.png", "img1.png"]
    assert [r["index"] for r in doc["results"]] == [0, 1, 2, 3] and doc["inputs"] == 4 and doc["failed"] == 0
    assert doc["backend"]["backend"] == "torch" and doc["backend"]["requested"] == "auto" and doc["backend"]["threads"] == "1"
    for r in doc["results"]:
        assert isinstance(r["caption"], str) and 0.0 < r["probability"] <= 1.0 and r["logprob"] <= 0.0
        assert isinstance(r["truncated"], bool) and len(r["token_ids"]) <= 12
    assert doc["results"][1]["caption"] == doc["results"][3]["caption"]  # a repeated image keeps its own entry
    lines = run("caption", folder, "--model", model, "--beams", "2", "--min-length", "8", "--jsonl")
    assert lines.returncode == 0, lines.stderr
    assert [json.loads(line)["index"] for line in lines.stdout.splitlines()] == [0, 1, 2]
    human = run("caption", folder + "/img1.png", "--model", model, "--beams", "2")
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith(str(env["images"] / "img1.png") + ": ") and human.stderr == ""


def test_caption_examples_with_the_embedded_model_adds_one_note(env: dict) -> None:
    result = run("caption", "--examples", "--beams", "1")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 4 and all(".png: " in line for line in result.stdout.splitlines())
    assert result.stderr == f"xvlm-edge: note: {EMBEDDED_MODEL_NOTE}\n"
    assert "MODEL_CARD.md" in EMBEDDED_MODEL_NOTE and "synthetic shapes only" in EMBEDDED_MODEL_NOTE


def test_ground_draws_one_png_or_one_per_image(env: dict, tmp_path: Path) -> None:
    out = tmp_path / "boxes.png"
    image = env["images"] / "img0.png"
    model = env["models"]["pretrain"]
    doc = run_json("ground", str(image), "a red bike", "the dog", "a red bike", "--draw", str(out), "--model", model)
    (result,) = doc["results"]
    assert [b["phrase"] for b in result["boxes"]] == ["a red bike", "the dog", "a red bike"]  # a repeated phrase keeps its entry
    assert (result["width"], result["height"]) == (80, 48)
    for box in result["boxes"]:
        assert len(box["xyxy"]) == 4 and len(box["cxcywh"]) == 4 and len(box["raw_cxcywh"]) == 4 and isinstance(box["clipped"], bool)
    drawn = cv2.imread(str(out))
    assert drawn is not None and drawn.shape == cv2.imread(str(image)).shape  # the original size, not the model's
    folder = tmp_path / "drawn"
    folder.mkdir()
    doc = run_json("ground", str(env["images"]), str(image), "--phrases", "the star", "--draw", str(folder), "--model", model)
    assert [Path(r["image"]).name for r in doc["results"]] == ["img0.png", "img1.png", "img2.png", "img0.png"]
    assert sorted(p.name for p in folder.iterdir()) == ["0000-img0.png", "0001-img1.png", "0002-img2.png", "0003-img0.png"]


def test_match_check_retrieve(env: dict) -> None:
    model, image = env["models"]["pretrain"], str(env["images"] / "img2.png")
    doc = run_json("match", image, "a cat", "two dogs", "a cat", "--model", model)
    (result,) = doc["results"]
    assert [m["text"] for m in result["matches"]] == ["a cat", "two dogs", "a cat"]
    assert all(0.0 <= m["probability"] <= 1.0 for m in result["matches"])
    assert result["matches"][0]["probability"] == result["matches"][2]["probability"]
    doc = run_json("match", str(env["images"]), "--texts", "a cat", "--model", model)
    assert len(doc["results"]) == 3 and all(len(r["matches"]) == 1 for r in doc["results"])
    check = run("check", str(env["images"]), "--statement", "three apples", "two pears", "--threshold", "0.25", "--model", model)
    assert check.returncode == 0, check.stderr
    lines = check.stdout.splitlines()
    assert len(lines) == 6 and all("threshold 0.250" in line for line in lines)
    doc = run_json("check", image, "--statement", "three apples", "--threshold", "0", "--model", model)
    assert doc["results"][0]["verdicts"] == [{"statement": "three apples", "verdict": True, "probability": pytest.approx(0.5, abs=0.5), "threshold": 0.0}]
    texts = ["a cat", "a dog", "a bike", "a cat"]
    doc = run_json("retrieve", "--images", str(env["images"]), image, "--texts", *texts, "-k", "2", "--model", model)
    by_image = [r for r in doc["results"] if r["query"] == "image"]
    by_text = [r for r in doc["results"] if r["query"] == "text"]
    assert [r["index"] for r in by_image] == [0, 1, 2, 3] and [r["text"] for r in by_text] == texts
    assert doc["inputs"] == 4 and doc["failed"] == 0
    for r in by_image:
        assert len(r["texts"]) == 2 and all(texts[t["index"]] == t["text"] and 0 <= t["probability"] <= 1 for t in r["texts"])
        assert r["texts"][0]["logit"] >= r["texts"][1]["logit"]  # ranked by the official score
    assert all(len(r["images"]) == 2 and {"index", "image", "probability", "logit"} <= set(r["images"][0]) for r in by_text)


def test_answer_and_nlvr(env: dict) -> None:
    image = str(env["images"] / "img0.png")
    doc = run_json("answer", image, "--question", "what color is it?", "--answers", "red", "blue", "two", "--model", env["models"]["vqa"])
    (result,) = doc["results"]
    assert result["answer"] in ("red", "blue", "two") and len(result["candidates"]) == 3
    assert 0 <= result["probability"] <= 1 and 0 <= result["share"] <= 1
    assert sum(c["share"] for c in result["candidates"]) == pytest.approx(1.0)
    listed = run_json("answer", image, image, "--question", "what color is it?", "-k", "2", "--model", env["models"]["vqa"])
    assert [len(r["candidates"]) for r in listed["results"]] == [2, 2]  # ranked over the model's answer_list.json
    assert all(c["answer"] in ("red", "blue", "two") for r in listed["results"] for c in r["candidates"])
    free = run_json("answer", image, "--question", "what is it?", "--model", env["models"]["vqa_open"])
    assert free["results"][0]["candidates"] == [] and free["results"][0]["share"] is None
    statements = ["both images show dogs", "there are two cats"]
    doc = run_json("nlvr", image, str(env["images"] / "img1.png"), *statements, "--model", env["models"]["nlvr"])
    (result,) = doc["results"]
    assert [v["statement"] for v in result["verdicts"]] == statements
    assert all(isinstance(v["verdict"], bool) and v["threshold"] == 0.5 for v in result["verdicts"])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_image", "image not found"),
        ("unreadable_image", "cannot decode"),
        ("empty_text", "empty"),
        ("wrong_checkpoint", "needs the caption head"),
        ("no_checkpoint", "no checkpoint at"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(env: dict, case: str, message: str) -> None:
    model, image = env["models"]["pretrain"], str(env["images"] / "img0.png")
    args = {
        "missing_image": ("caption", str(env["root"] / "absent.png"), "--model", env["models"]["captioning"]),
        "unreadable_image": ("match", str(env["root"] / "broken.png"), "a cat", "--model", model),
        "empty_text": ("ground", image, " ?! ", "--model", model),
        "wrong_checkpoint": ("caption", image, "--model", model),
        "no_checkpoint": ("match", image, "a cat", "--model", str(env["root"] / "nowhere")),
    }[case]
    result = run(*args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xvlm-edge: error:") and message in lines[0], result.stderr
