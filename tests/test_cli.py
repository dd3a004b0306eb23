"""The `xvlm-edge` task commands, run as a user runs them: in a subprocess, on tiny random checkpoints.

Checks the output contract (human text by default; `--json` is one JSON document on stdout), the drawn
PNG, folders, and that user mistakes exit 2 with one line on stderr and no traceback.
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
        models[layout] = str(save(Checkpoint(XVLM(config).eval(), tokenizer, config), root / layout))
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
    return subprocess.run([sys.executable, "-m", "xvlm_edge.cli", *args], capture_output=True, text=True, env=environ, timeout=300, check=False)


def run_json(*args: str) -> dict:
    result = run(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # exactly one document, nothing else on stdout


def test_caption_folder_json_and_human(env: dict) -> None:
    doc = run_json("caption", str(env["images"]), "--model", env["models"]["captioning"], "--beams", "1")
    assert [Path(r["image"]).name for r in doc["results"]] == ["img0.png", "img1.png", "img2.png"]
    assert doc["backend"]["backend"] == "torch" and doc["backend"]["requested"] == "auto"
    assert all(isinstance(r["caption"], str) for r in doc["results"])
    human = run("caption", str(env["images"] / "img1.png"), "--model", env["models"]["captioning"], "--beams", "2")
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith(str(env["images"] / "img1.png") + ": ")


def test_ground_draw(env: dict, tmp_path: Path) -> None:
    out = tmp_path / "boxes.png"
    image = env["images"] / "img0.png"
    doc = run_json("ground", str(image), "a red bike", "the dog", "--draw", str(out), "--model", env["models"]["pretrain"])
    assert [r["phrase"] for r in doc["results"]] == ["a red bike", "the dog"]
    assert all(len(r["xyxy"]) == 4 and len(r["cxcywh"]) == 4 for r in doc["results"])
    drawn = cv2.imread(str(out))
    assert drawn is not None and drawn.shape == cv2.imread(str(image)).shape  # the original size, not the model's


def test_match_check_retrieve(env: dict) -> None:
    model, image = env["models"]["pretrain"], str(env["images"] / "img2.png")
    doc = run_json("match", image, "a cat", "two dogs", "--model", model)
    assert [r["text"] for r in doc["results"]] == ["a cat", "two dogs"]
    assert all(0.0 <= r["probability"] <= 1.0 for r in doc["results"])
    check = run("check", str(env["images"]), "--statement", "three apples", "--model", model)
    assert check.returncode == 0, check.stderr
    assert len(check.stdout.splitlines()) == 3 and all(("true" in line) ^ ("false" in line) for line in check.stdout.splitlines())
    doc = run_json("retrieve", "--images", str(env["images"]), "--texts", "a cat", "a dog", "a bike", "-k", "2", "--model", model)
    assert all(len(ranked) == 2 for ranked in doc["results"]["texts_for_image"].values())
    assert all(len(ranked) == 2 for ranked in doc["results"]["images_for_text"].values())


def test_answer_and_nlvr(env: dict) -> None:
    image = str(env["images"] / "img0.png")
    doc = run_json("answer", image, "--question", "what color is it?", "--answers", "red", "blue", "two", "--model", env["models"]["vqa"])
    (result,) = doc["results"]
    assert result["answer"] in ("red", "blue", "two") and len(result["candidates"]) == 3
    free = run("answer", image, "--question", "what is it?", "--model", env["models"]["vqa"])
    assert free.returncode == 0, free.stderr
    doc = run_json("nlvr", image, str(env["images"] / "img1.png"), "both images show dogs", "--model", env["models"]["nlvr"])
    assert isinstance(doc["results"][0]["verdict"], bool)


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
