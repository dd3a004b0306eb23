"""A second scene renderer, for evaluation only: the generator's layouts drawn by other code, on paper, then
photographed by a desk lamp's camera.

    python -m training.paper --out data/paper-eval --num-scenes 500 --seed 3

Training never imports this module (`tests/test_paper.py` checks it), so a figure measured on its scenes is
generalisation to another drawing of the same world, not memory of one renderer's pixels. Everything but the
layout and the texts differs from `synthetic.render`: Pillow instead of OpenCV; circles as true ellipses; each
shape filled, outlined, or filled with a border, in another shade of its named colour; pages of plain, shaded,
ruled ("striped"), squared ("checkered") or recycled ("speckled") paper instead of grey textures; and every
page photographed (`camera.py`: tilt, lamp light and shadow, colour cast, blur, noise, JPEG). Boxes and the
texts are those of the photographed scene: outlines are warped with the page, and `synthetic.describe` talks
about the warped layout, so every statement stays true by construction. The files are the generator's
(`synthetic.write_dataset`), so `training.evaluate` reads both the same way.
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import io
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from training import camera
from training.synthetic import COLORS, Scene, SceneObject, box_of, sample_scene, shape_outline, write_dataset
from xvlm_edge.errors import InputError

#: Supersampling of the page: Pillow draws without anti-aliasing, so pages are drawn this much larger and
#: reduced with a Lanczos filter.
SUPERSAMPLE = 4
#: How each object is drawn, with its probability.
STYLES = {"filled": 0.4, "bordered": 0.4, "outline": 0.2}
_STREAM = 7  # this renderer's generator stream of a scene (the generator's are 0-2)


def shade(color: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """Another shade of a named colour: its hue within +-5 degrees, lightness +-0.08, saturation x0.7-1."""
    h, lightness, s = colorsys.rgb_to_hls(*(c / 255 for c in COLORS[color]))
    h = (h + rng.uniform(-0.014, 0.014)) % 1.0
    lightness = float(np.clip(lightness + rng.uniform(-0.08, 0.08), 0.2, 0.85))
    s = s * rng.uniform(0.7, 1.0)
    return tuple(round(255 * float(c)) for c in colorsys.hls_to_rgb(h, lightness, s))  # type: ignore[return-value]


def _paper(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A page of `size` pixels (already supersampled) in the style the scene's background word names."""
    white = rng.uniform(222, 250) + rng.uniform(-6, 6, 3)
    page = Image.new("RGB", (size, size), tuple(int(v) for v in white))
    draw = ImageDraw.Draw(page)
    ink = tuple(int(v) for v in rng.uniform([120, 150, 190], [170, 200, 235]))  # pale blue printing
    line = max(1, size // 300)
    if kind == "shaded":
        fade = np.linspace(0, rng.uniform(20, 45), size, dtype=np.float32)
        pixels = np.asarray(page, np.float32) - (fade[None, :, None] if rng.random() < 0.5 else fade[:, None, None])
        page = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    elif kind == "striped":  # ruled paper, sometimes with a margin
        step = rng.uniform(0.06, 0.1) * size
        for y in np.arange(rng.uniform(0, step), size, step):
            draw.line([(0, y), (size, y)], fill=ink, width=line)
        if rng.random() < 0.5:
            x = rng.uniform(0.08, 0.15) * size
            draw.line([(x, 0), (x, size)], fill=(220, 120, 120), width=line)
    elif kind == "checkered":  # squared paper
        step = rng.uniform(0.04, 0.07) * size
        for v in np.arange(rng.uniform(0, step), size, step):
            draw.line([(0, v), (size, v)], fill=ink, width=line)
            draw.line([(v, 0), (v, size)], fill=ink, width=line)
    elif kind == "speckled":  # recycled paper: fibres and specks
        for _ in range(int(rng.integers(150, 400))):
            x, y = rng.uniform(0, size, 2)
            r = rng.uniform(0.5, 2.5) * SUPERSAMPLE
            grey = int(rng.uniform(120, 200))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(grey, grey, grey - 10))
    return page


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, fill: tuple[int, int, int], style: str, width: float) -> None:
    """One shape on the supersampled page; `width` is the stroke in page pixels."""
    s = SUPERSAMPLE
    stroke = max(1, round(float(width) * s))
    edge = tuple(int(c * 0.55) for c in fill)
    if obj.shape == "circle":
        cx, cy, r = obj.center[0] * s, obj.center[1] * s, obj.radius * s
        box = [cx - r, cy - r, cx + r, cy + r]
        if style == "outline":
            draw.ellipse(box, outline=fill, width=stroke)
        else:
            draw.ellipse(box, fill=fill, outline=edge if style == "bordered" else None, width=stroke)
        return
    points = [(float(x) * s, float(y) * s) for x, y in shape_outline(obj.shape, *obj.center, obj.radius, obj.angle)]
    if style != "outline":
        draw.polygon(points, fill=fill)
    if style != "filled":
        draw.line([*points, points[0]], fill=edge if style == "bordered" else fill, width=stroke, joint="curve")


def _outline_points(obj: SceneObject) -> np.ndarray:
    """Points on the drawn outline (page pixels): true ellipse samples for circles, the polygon otherwise."""
    if obj.shape == "circle":
        t = np.linspace(0, 2 * np.pi, 180, endpoint=False)
        return np.stack([obj.center[0] + obj.radius * np.cos(t), obj.center[1] + obj.radius * np.sin(t)], 1)
    return shape_outline(obj.shape, *obj.center, obj.radius, obj.angle)


def photograph(scene: Scene, strength: float = 1.0) -> tuple[Scene, np.ndarray]:
    """(the scene as photographed: boxes and centres in photo pixels; the photo (S, S, 3) uint8 RGB)."""
    rng = np.random.default_rng([scene.seed, scene.index, _STREAM])
    size = scene.image_size
    page = _paper(scene.background, size * SUPERSAMPLE, rng)
    draw = ImageDraw.Draw(page)
    strokes = []
    for obj in scene.objects:
        style = str(rng.choice(list(STYLES), p=list(STYLES.values())))
        width = rng.uniform(2.5, 4.0) if style == "outline" else rng.uniform(1.0, 2.5)
        _draw_object(draw, obj, shade(obj.color, rng), style, width)
        strokes.append(width if style != "filled" else 0.0)
    page = page.resize((size, size), Image.Resampling.LANCZOS)
    shot = camera.sample_shot(rng, size, size, strength)
    photo = camera.shoot(np.asarray(page), shot)
    objects = []
    for obj, width in zip(scene.objects, strokes):
        centre = np.asarray(obj.center)
        outer = centre + (_outline_points(obj) - centre) * (1 + width / 2 / obj.radius)  # the stroke's outer edge
        warped = camera.warp_points(outer, shot)
        cx, cy = camera.warp_points(np.array([obj.center]), shot)[0]
        objects.append(dataclasses.replace(obj, center=(float(cx), float(cy)), box=box_of(warped, size)))
    return dataclasses.replace(scene, objects=tuple(objects)), photo


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def iter_photos(seed: int, indices: Sequence[int] | range, image_size: int = 256, strength: float = 1.0) -> Iterator[tuple[Scene, bytes]]:
    """(photographed scene, PNG of the photo) for each index of `seed`'s layouts."""
    for index in indices:
        scene, photo = photograph(sample_scene(seed, index, image_size), strength)
        yield scene, _png(photo)


def generate(out: str | Path, num_scenes: int, seed: int, *, image_size: int = 256, strength: float = 1.0, progress: bool = False) -> Path:
    """Write `num_scenes` photographed scenes of `seed` under `out` in the generator's files."""
    if num_scenes < 1:
        raise InputError(f"num_scenes must be positive, got {num_scenes}")
    photos = iter_photos(seed, range(num_scenes), image_size, strength)
    return write_dataset(out, photos, num_scenes, progress=progress)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.paper", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--num-scenes", required=True, type=int)
    parser.add_argument("--seed", required=True, type=int, help="layout seed (use one training never sees: 3)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--strength", type=float, default=1.0, help="scale of every camera effect (0: a flat scan)")
    args = parser.parse_args(argv)
    try:
        out = generate(args.out, args.num_scenes, args.seed, image_size=args.image_size, strength=args.strength, progress=True)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.num_scenes} photographed scenes to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
