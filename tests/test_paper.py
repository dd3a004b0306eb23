"""The evaluation renderer (`training/paper.py`) and the lamp camera (`training/camera.py`).

What makes a figure on the photographed set mean something: training never sees this renderer; boxes follow the
objects through the camera's tilt; every text stays true of the photographed layout; colours stay the colours
they are named.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training import camera, paper, synthetic

REPO = Path(__file__).resolve().parents[1]


def test_training_never_imports_the_evaluation_renderer() -> None:
    code = (
        "import sys, training.train, training.data, training.losses, training.masking, training.synthetic, training.evaluate\n"
        "assert 'training.paper' not in sys.modules, 'training imports the evaluation renderer'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_camera_boxes_follow_what_it_photographs() -> None:
    """A white square on a black page, photographed: the bright pixels' extent is the warped corners' box."""
    size = 128
    page = np.zeros((size, size, 3), np.uint8)
    page[40:80, 30:90] = 255
    for seed in range(5):
        shot = camera.sample_shot(np.random.default_rng(seed), size, size)
        shot = dataclasses.replace(shot, light=np.ones_like(shot.light), white_balance=(1.0, 1.0, 1.0), blur_sigma=0.0,
                                   motion=0, noise_sigma=0.0, jpeg_quality=100, table=(0, 0, 0))  # fmt: skip
        photo = camera.shoot(page, shot)
        ys, xs = np.nonzero(photo.mean(-1) > 128)
        corners = camera.warp_points(np.array([[30, 40], [90, 40], [90, 80], [30, 80]]), shot)
        assert xs.min() == pytest.approx(corners[:, 0].min(), abs=1.5) and xs.max() + 1 == pytest.approx(corners[:, 0].max(), abs=1.5)
        assert ys.min() == pytest.approx(corners[:, 1].min(), abs=1.5) and ys.max() + 1 == pytest.approx(corners[:, 1].max(), abs=1.5)
        assert not np.allclose(shot.homography, np.eye(3))  # the page was tilted


def test_every_effect_is_off_at_strength_zero() -> None:
    shot = camera.sample_shot(np.random.default_rng(0), 64, 48, strength=0.0)
    assert np.allclose(shot.homography, np.eye(3)) and np.allclose(shot.light, 1.0)
    assert shot.white_balance == pytest.approx((1, 1, 1)) and shot.blur_sigma == 0 and shot.noise_sigma == 0


def test_shades_keep_their_colour_name() -> None:
    """Every shade is nearer in hue to its own named colour than to any other."""
    hue = {c: colorsys.rgb_to_hls(*(v / 255 for v in rgb))[0] for c, rgb in synthetic.COLORS.items()}
    rng = np.random.default_rng(0)
    for color in synthetic.COLORS:
        for _ in range(200):
            h = colorsys.rgb_to_hls(*(v / 255 for v in paper.shade(color, rng)))[0]
            nearest = min(hue, key=lambda c: min(abs(hue[c] - h), 1 - abs(hue[c] - h)))
            assert nearest == color


def test_photographed_boxes_hold_their_objects_and_the_texts_stay_true() -> None:
    for index in range(12):
        layout = synthetic.sample_scene(3, index, 256)
        scene, photo = paper.photograph(layout)
        assert photo.shape == (256, 256, 3) and photo.dtype == np.uint8
        assert [(o.shape, o.color, o.size) for o in scene.objects] == [(o.shape, o.color, o.size) for o in layout.objects]
        for before, after in zip(layout.objects, scene.objects):
            x, y, w, h = after.box
            assert min(x, y) >= 0 and x + w <= 256 and y + h <= 256
            assert x <= after.center[0] <= x + w and y <= after.center[1] <= y + h
            # the tilt pulls corners inward by at most 9 %: a box shrinks or moves a little, never jumps
            assert 0.75 * before.box[2] <= w <= 1.1 * before.box[2] + 6 and 0.75 * before.box[3] <= h <= 1.1 * before.box[3] + 6
        texts = synthetic.describe(scene)
        for statement, label, kind in texts.statements:  # counts are the layout's: the camera changes none
            count = statement.split()[2]
            noun = statement.split()[-1]
            color = statement.split()[-2] if statement.split()[-2] in synthetic.COLORS else None
            shape = noun if noun in synthetic.SHAPES else next(s for s, p in synthetic.PLURALS.items() if p == noun)
            found = sum(o.shape == shape and color in (None, o.color) for o in scene.objects)
            assert kind in synthetic.CHECK_KINDS and (found == (0 if count == "no" else synthetic.COUNT_WORDS.index(count))) == label
        assert all(box in [list(o.box) for o in scene.objects] for box, _ in texts.regions)


def test_objects_show_in_their_boxes_at_strength_zero() -> None:
    """A flat scan: the scene's colour is present inside each object's box (drawn filled, outlined or bordered)."""
    for index in range(8):
        scene, photo = paper.photograph(synthetic.sample_scene(4, index, 256), strength=0.0)
        for obj in scene.objects:
            x, y, w, h = obj.box
            crop = photo[y : y + h, x : x + w].reshape(-1, 3).astype(np.float32)
            target = np.asarray(synthetic.COLORS[obj.color], np.float32)
            assert (np.linalg.norm(crop - target, axis=1) < 90).mean() > 0.05, obj


def test_generate_writes_the_generators_files_deterministically(tmp_path: Path) -> None:
    first = paper.generate(tmp_path / "a", 3, seed=3, image_size=96)
    second = paper.generate(tmp_path / "b", 3, seed=3, image_size=96)
    for name in synthetic.FILES:
        assert (first / f"{name}.jsonl").read_text() == (second / f"{name}.jsonl").read_text()
    assert sorted(p.read_bytes() for p in (first / "images").iterdir()) == sorted(p.read_bytes() for p in (second / "images").iterdir())
    record = json.loads((first / "check.jsonl").read_text().splitlines()[0])
    assert record["type"] in synthetic.CHECK_KINDS and (first / record["image"]).is_file()
    assert paper.main(["--out", str(tmp_path / "c"), "--num-scenes", "0", "--seed", "3"]) == 2
