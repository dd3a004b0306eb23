"""Stage 3 of the staged recipe (`training/finetune_grounding.py`): it starts from stage 2's boxes exactly, trains
the box head and nothing else, deterministically, and writes a checkpoint the package serves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import xvlm_edge
from training import finetune_grounding as G
from training import train as T
from xvlm_edge.checkpoint import Checkpoint, load_directory, save
from xvlm_edge.models.xvlm import XVLM

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(samples=24, steps=30, batch=16, lr=1e-3, position_lr=1e-1, seed=3, eval_scenes=6, progress=False)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth"), 24, seed=0)


def recipe_for(synth: Path, stage2: Path, box_head: str = "attend") -> T.TrainRecipe:
    overrides = [f"--data.train_dir={synth}", f"--out={stage2}", f"--model.box_head={box_head}", "--model.image_res=64",
                 f"--data.calibration_dir={synth}", "--threads=1"]  # fmt: skip
    return T.load_recipe(None, overrides)


@pytest.fixture(scope="module")
def stage2(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> T.TrainRecipe:
    """A stage-2 stand-in: a random `attend` model of the recipe, saved where stage 2 leaves its model."""
    recipe = recipe_for(synth, tmp_path_factory.mktemp("stage2"))
    tokenizer = T.build_tokenizer(recipe)
    torch.manual_seed(0)
    model = XVLM(T.model_config(recipe, len(tokenizer)))
    T.init_weights(model)
    save(Checkpoint(model.eval(), tokenizer, model.config), Path(recipe.out) / "model")
    return recipe


def test_the_stage_starts_from_stage_2s_boxes(stage2: T.TrainRecipe, synth: Path) -> None:
    start = load_directory(Path(stage2.out) / "model")
    model = G.grounded_model(start.model)
    assert model.config.box_head == "attend_position"
    dataset = G.region_samples(stage2, start.tokenizer, model, seed=0)
    features = G.frozen_features(model, dataset, range(4), progress=False)
    boxes = []
    with torch.no_grad():
        for head in (start.model.bbox_head, model.bbox_head):
            weights = head.weigh(features.phrase, features.patches, features.index)
            boxes.append(head.box(features.phrase, weights, features.patches[features.index]))
    torch.testing.assert_close(boxes[1], boxes[0], rtol=0, atol=0)


def test_only_the_box_head_trains_and_reruns_are_identical(stage2: T.TrainRecipe, tmp_path: Path) -> None:
    metrics = G.finetune(stage2, tmp_path / "a", **SMALL)
    G.finetune(stage2, tmp_path / "b", **SMALL)
    before = load_directory(Path(stage2.out) / "model").model.state_dict()
    after = load_directory(tmp_path / "a" / "model").model.state_dict()
    again = load_directory(tmp_path / "b" / "model").model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("bbox_head.") for k in changed)
    assert (after["bbox_head.position.weight"] != 0).any()
    assert all(torch.equal(after[k], again[k]) for k in after)
    written = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert written["history"] == metrics["history"] and written["phrases"] > SMALL["samples"]
    assert 0 <= written["held_out"]["after"]["acc_iou50"] <= 1 and written["held_out"]["scenes"] == SMALL["eval_scenes"]
    served = xvlm_edge.load(tmp_path / "a" / "model", threads=1)
    assert served.config.box_head == "attend_position"
    box = served.ground(torch.zeros(64, 64, 3, dtype=torch.uint8).numpy(), "the red circle")
    assert 0 <= box.xyxy[0] <= box.xyxy[2] <= 64


def test_a_stage_2_without_the_attend_head_is_refused(synth: Path, tmp_path: Path) -> None:
    recipe = recipe_for(synth, tmp_path, box_head="cls")
    tokenizer = T.build_tokenizer(recipe)
    with pytest.raises(SystemExit, match="starts from an `attend` box head"):
        G.grounded_model(XVLM(T.model_config(recipe, len(tokenizer))))
    with pytest.raises(SystemExit, match="no stage-2 model there"):
        G.finetune(recipe_for(synth, tmp_path / "missing"), tmp_path / "out", **SMALL)
