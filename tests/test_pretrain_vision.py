"""Stage 1 of the staged recipe (`training/pretrain_vision.py`): exact dense labels, and a checkpoint that the
multi-grained stage starts from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from training import camera, synthetic
from training import pretrain_vision as P
from training import train as T

SMALL = ["--model.image_res=64", "--progress=false", "--threads=1"]


def test_each_large_objects_centre_patch_carries_its_shape_and_colour() -> None:
    checked = 0
    for index in range(30):
        scene = synthetic.sample_scene(0, index, 256)
        shapes, colors = P.patch_labels(scene, 128, 8)
        assert shapes.shape == colors.shape == (64,)
        for obj in scene.objects:
            if obj.size != "large":
                continue
            col, row = (int(c * 128 / 256) // 16 for c in obj.center)
            assert synthetic.SHAPES[shapes[row * 8 + col] - 1] == obj.shape, (index, obj)
            assert P.COLOR_NAMES[colors[row * 8 + col] - 1] == obj.color
            checked += 1
        covered = np.zeros(64, bool)
        for obj in scene.objects:  # every labelled patch touches some object's box
            x, y, w, h = (v * 128 / 256 for v in obj.box)
            cols, rows = np.arange(8) * 16, np.arange(8) * 16
            hit = (rows[:, None] < y + h) & (rows[:, None] + 16 > y) & (cols[None, :] < x + w) & (cols[None, :] + 16 > x)
            covered |= hit.flatten()
        assert not (shapes > 0)[~covered].any()
    assert checked > 20


def test_photographed_labels_follow_the_tilt() -> None:
    """A photographed scene's labels are the photo's: each large object's warped centre lies on a patch of its
    shape, and the same scene is photographed alike in any batch."""
    checked = 0
    for index in range(30):
        scene = synthetic.sample_scene(0, index, 256)
        shot = P.photograph(0, index, scene, camera=1.0)
        assert P.photograph(0, index, scene, camera=0.0) is None
        assert np.array_equal(P.photograph(0, index, scene, camera=1.0).homography, shot.homography)
        shapes, _ = P.patch_labels(scene, 128, 8, shot)
        for obj in scene.objects:
            if obj.size != "large":
                continue
            col, row = (int(c * 128 / 256) // 16 for c in camera.warp_points([obj.center], shot)[0])
            assert synthetic.SHAPES[shapes[row * 8 + col] - 1] == obj.shape, (index, obj)
            checked += 1
    assert checked > 20
    pixels, shapes, _, scenes = P.render_batch(0, [3, 4], 64, 4, camera=1.0)
    assert pixels.shape == (2, 3, 64, 64) and shapes.shape == (2, 16) and all(shot is not None for _, shot in scenes)


def test_the_stage_writes_a_checkpoint_the_next_stage_starts_from(tmp_path: Path) -> None:
    recipe = T.load_recipe(str(Path(__file__).resolve().parents[1] / "training/recipes/tiny_synthetic.yaml"), SMALL)
    runs = [P.pretrain(recipe, tmp_path / name, steps=3, lr=1e-3, batch_size=4, seed=0, eval_scenes=4, progress=False) for name in ("a", "b")]
    first, second = (load_file(tmp_path / name / "model" / "model.safetensors") for name in ("a", "b"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)  # a pure function of the seed
    assert runs[0]["history"][-1]["step"] == 3 and (tmp_path / "a" / "metrics.json").is_file()
    assert 0 <= runs[0]["history"][-1]["photographed_object_shape_accuracy"] <= 1

    untouched = T.XVLM(T.model_config(recipe, len(T.build_tokenizer(recipe))))
    T.init_weights(untouched, recipe.model.init_std)
    T.start_from(untouched, str(tmp_path / "a" / "model"))
    state = untouched.state_dict()
    assert all(torch.equal(state[k], first[k]) for k in first if k.startswith("vision_encoder."))
