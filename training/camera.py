"""What a desk lamp's camera does to the page it photographs: tilt, uneven light and shadow, a colour cast,
blur, sensor noise and JPEG compression.

`sample_shot(rng, width, height)` draws one photograph's settings; `shoot(image, shot)` applies them to an RGB image;
`warp_points` maps points (object outlines) through the same tilt, so boxes follow their objects. The tilt only
ever pulls the page's corners inward (the lamp sees the whole page and some table around it), so nothing drawn on
the page leaves the picture. Training augments with it (`data.camera` in a recipe); the evaluation renderer (`training/paper.py`)
photographs every page with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Shot:
    """One photograph's settings; every field is drawn by `sample_shot`."""

    homography: np.ndarray  # (3, 3) page pixels -> photo pixels
    table: tuple[int, int, int]  # RGB of what is around the page
    light: np.ndarray  # (H, W) float32 multiplicative gain: the lamp's falloff and a shadow, in [0.35, 1.15]
    white_balance: tuple[float, float, float]  # per-channel gains (a warm or cool cast)
    blur_sigma: float  # Gaussian blur (focus), pixels; 0 = sharp
    motion: int  # length of a horizontal motion-blur kernel, pixels; 0 or 1 = none
    noise_sigma: float  # sensor noise at mid-grey, in 0-255 units (shot noise grows with brightness)
    jpeg_quality: int
    noise_seed: int


def sample_shot(rng: np.random.Generator, width: int, height: int, strength: float = 1.0) -> Shot:
    """Settings of one photograph of a `width` x `height` page; `strength` scales every effect (0: none)."""
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    inward = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], np.float32) * np.array([width, height], np.float32)
    moved = corners + inward * rng.uniform(0, 0.09 * strength, (4, 2)).astype(np.float32)
    homography = cv2.getPerspectiveTransform(corners, moved)
    table = tuple(int(v) for v in rng.uniform(40, 120) + rng.uniform(-20, 20, 3))

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    xx, yy = xx / width, yy / height
    spot = rng.uniform(-0.2, 1.2, 2)  # the lamp's bright spot, possibly off the page
    falloff = np.exp(-((xx - spot[0]) ** 2 + (yy - spot[1]) ** 2) / (2 * rng.uniform(0.35, 0.9) ** 2))
    light = 1.0 + strength * (rng.uniform(-0.4, -0.1) * (1 - falloff) + rng.uniform(0, 0.12))
    if rng.random() < 0.5 * strength:  # a hand's or the lamp arm's shadow: a soft-edged half plane
        theta = rng.uniform(0, 2 * np.pi)
        edge = (xx - 0.5) * np.cos(theta) + (yy - 0.5) * np.sin(theta) - rng.uniform(0.1, 0.45)
        soft = 1 / (1 + np.exp(-edge / rng.uniform(0.02, 0.08)))
        light = light * (1 - soft * rng.uniform(0.2, 0.45) * strength)
    light = np.clip(light, 0.35, 1.15).astype(np.float32)

    cast = 1 + strength * rng.uniform(-0.12, 0.12, 3)
    return Shot(
        homography=homography,
        table=table,  # type: ignore[arg-type]
        light=light,
        white_balance=tuple(float(c) for c in cast / cast.mean()),  # type: ignore[arg-type]
        blur_sigma=float(rng.uniform(0, 1.3 * strength)),
        motion=int(rng.integers(3, 7)) if rng.random() < 0.25 * strength else 0,
        noise_sigma=float(rng.uniform(1, 6) * strength),
        jpeg_quality=round(95 - float(rng.uniform(0, 60)) * strength),
        noise_seed=int(rng.integers(2**31)),
    )


def warp_points(points: np.ndarray, shot: Shot) -> np.ndarray:
    """(N, 2) page pixels -> (N, 2) photo pixels under the shot's tilt."""
    return cv2.perspectiveTransform(np.asarray(points, np.float64)[None], shot.homography)[0]


def warp_box(box: tuple[float, float, float, float], shot: Shot) -> tuple[float, float, float, float]:
    """An [x, y, w, h] page box -> the [x, y, w, h] photo box around its four warped corners (the tilt only
    pulls inward, so it stays in the picture)."""
    x, y, w, h = box
    corners = warp_points(np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]]), shot)
    (x0, y0), (x1, y1) = corners.min(0), corners.max(0)
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def shoot(image: np.ndarray, shot: Shot) -> np.ndarray:
    """The photograph (H, W, 3) uint8 RGB of a page image of the shot's size."""
    size = image.shape[1], image.shape[0]
    photo = cv2.warpPerspective(image, shot.homography, size, flags=cv2.INTER_LINEAR, borderValue=shot.table)
    x = photo.astype(np.float32) * shot.light[..., None] * np.asarray(shot.white_balance, np.float32)
    if shot.blur_sigma > 0.3:
        x = cv2.GaussianBlur(x, (0, 0), shot.blur_sigma)
    if shot.motion > 1:
        x = cv2.filter2D(x, -1, np.full((1, shot.motion), 1 / shot.motion, np.float32))
    noise = np.random.default_rng(shot.noise_seed).standard_normal(x.shape).astype(np.float32)
    x = x + noise * shot.noise_sigma * np.sqrt(np.clip(x, 0, 255) / 128 + 0.1)
    x = np.clip(x + 0.5, 0, 255).astype(np.uint8)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(x, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, shot.jpeg_quality])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB image
        raise RuntimeError("OpenCV could not encode the photo as JPEG")
    return cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
