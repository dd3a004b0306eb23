"""Synthetic multi-grained data: rendered shape scenes with captions, regions, objects, VQA and `check` statements.

Why synthetic: the embedded default model must be trained on this 2-core box in minutes, and X-VLM's claim (text
aligned with regions and objects beats image-level alignment) needs data where every region has an exact box and
every sentence is true by construction. Scenes hold 1-6 shapes of 8 kinds, 8 colours and 2 sizes on low-contrast
textured backgrounds, each shape in a shade of its colour, filled, bordered or outlined (`STYLES`); all text is
generated from the layout, so it is correct and closed-vocabulary (`build_vocab` makes a tiny WordPiece vocab
in which every generated word is one token).

Determinism: scene `i` of seed `s` draws from its own generators `np.random.default_rng([s, i, stream])`, one
stream each for layout, pixels and text, so scene `i` is byte-identical however many scenes are generated, in
which order, and whichever of its parts are asked for.

Files written by `generate` (JSON lines; image paths are relative to the output directory):
- `captions.jsonl`  official image-caption records: `{"image", "caption": [str, ...]}` (`caption[0]` is canonical).
- `regions.jsonl`   official region records: `{"image", "caption": str, "elems": [{"bb": [x, y, w, h],
                    "caption": [str, ...]}]}`; every elem caption names its object uniquely in the scene.
- `objects.jsonl`   official object records: `{"image", "elems": [{"bb", "caption": shape, "attributes": [...]}]}`.
- `vqa.jsonl`       `{"question_id": int, "image", "question": str, "answer": [str], "type": str}`; type is one
                    of count / color / shape / size / exist / relation.
- `check.jsonl`     `{"image", "statement": str, "label": bool, "type": str}`; as many true as false per scene, type
                    one of CHECK_KINDS (counts of shapes and colour+shape groups, "no X", near misses).
- `scenes.jsonl`    ground truth for evaluation: `{"index", "image", "background", "objects": [{"shape",
                    "color", "size", "bb"}]}`.
Boxes are `[x, y, w, h]` integer pixels of the original image. With `binary=True` records carry the PNG as base64
in `"binary"` instead of `"image"`, and no image files are written.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from xvlm_edge.errors import InputError

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "pentagon", "diamond", "cross")
PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
# Saturated colours (RGB), far from the grey backgrounds; each object gets a small jitter around its colour.
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 215, 40),
    "orange": (245, 135, 25),
    "purple": (145, 60, 190),
    "pink": (245, 125, 190),
    "cyan": (40, 205, 215),
}
SIZES = ("small", "large")
# Radius as a fraction of the image side, per size: small and large never overlap, so "small" stays meaningful.
RADIUS = {"small": (0.055, 0.075), "large": (0.10, 0.13)}
BACKGROUNDS = ("plain", "shaded", "striped", "checkered", "speckled")
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
RELATIONS = ("left of", "right of", "above", "below")
ORDINALS = ("leftmost", "rightmost", "top", "bottom")
MAX_OBJECTS = 6
#: Kinds of `check` statements: a shape's count, a colour+shape group's count, "there are no X", and near misses
#: (a true count off by one: the wrong answer a child most often writes).
CHECK_KINDS = ("shape_count", "color_shape_count", "none", "near_miss")
# Every other word a template can emit, plus the captioning prompt ("a picture of").
FUNCTION_WORDS = (
    "a", "an", "the", "and", "is", "are", "there", "on", "of", "background", "how", "many", "what", "color",
    "shape", "shapes", "object", "or", "yes", "no", "with", "left", "right", "above", "below", "picture",
)  # fmt: skip
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PUNCTUATION = tuple(".,?!;:'\"-()/")
FILES = ("captions", "regions", "objects", "vqa", "check", "scenes")

_LAYOUT, _PIXELS, _TEXT = 0, 1, 2  # generator streams of one scene


@dataclass(frozen=True)
class SceneObject:
    """One rendered shape; `box` is the tight integer box [x, y, w, h] of its drawn outline."""

    shape: str
    color: str
    size: str
    center: tuple[float, float]
    radius: float
    angle: float
    box: tuple[int, int, int, int]

    @property
    def x2(self) -> int:
        return self.box[0] + self.box[2]

    @property
    def y2(self) -> int:
        return self.box[1] + self.box[3]


@dataclass(frozen=True)
class Scene:
    """The layout of scene `index`: what `render` draws and `describe` talks about."""

    seed: int
    index: int
    image_size: int
    background: str
    objects: tuple[SceneObject, ...]


@dataclass(frozen=True)
class SceneTexts:
    """Everything said about one scene; regions/objects are (box, captions[, attributes]) per object."""

    captions: list[str]
    regions: list[tuple[list[int], list[str]]]
    objects: list[tuple[list[int], str, list[str]]]
    questions: list[tuple[str, str, str]]  # (question, answer, type)
    statements: list[tuple[str, bool, str]]  # (statement, label, kind): see CHECK_KINDS


# ---------------------------------------------------------------------------------------------- layout


def shape_outline(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Polygon vertices (V, 2) in pixels; circles are 64-gons so every shape is drawn and boxed the same way."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif shape == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * 0.8
    elif shape == "diamond":
        pts = np.array([[0, -1], [0.7, 0], [0, 1], [-0.7, 0]])
    elif shape == "cross":
        a = 0.33
        pts = np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]]
        )
    else:
        corners = {"triangle": 3, "pentagon": 5, "hexagon": 6, "star": 5}[shape]
        if shape == "star":  # alternate outer and inner radius, 10 vertices
            t = -np.pi / 2 + np.arange(10) * np.pi / 5
            rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        else:
            t = -np.pi / 2 + np.arange(corners) * 2 * np.pi / corners
            rad = np.ones(corners)
        t = t + angle
        pts = np.stack([rad * np.cos(t), rad * np.sin(t)], 1)
    return pts * r + np.array([cx, cy])


def box_of(pts: np.ndarray, image_size: int) -> tuple[int, int, int, int]:
    x0, y0 = np.floor(pts.min(0)).astype(int)
    x1, y1 = np.ceil(pts.max(0)).astype(int)
    x0, y0 = max(int(x0), 0), max(int(y0), 0)
    x1, y1 = min(int(x1), image_size), min(int(y1), image_size)
    return x0, y0, x1 - x0, y1 - y0


def _overlaps(box: tuple[int, int, int, int], others: Sequence[SceneObject], gap: float) -> bool:
    x, y, w, h = box
    return any(x < o.x2 + gap and o.box[0] < x + w + gap and y < o.y2 + gap and o.box[1] < y + h + gap for o in others)


def sample_scene(seed: int, index: int, image_size: int = 256) -> Scene:
    """The layout of scene `index`: objects placed without overlap, a few shapes repeated so counts matter."""
    if image_size < 64:
        msg = f"image_size must be at least 64 pixels, got {image_size}"
        raise InputError(msg)
    rng = np.random.default_rng([seed, index, _LAYOUT])
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    # Few distinct shapes and a shared colour per shape make "two red circles" and counting questions common.
    kinds = list(rng.choice(len(SHAPES), size=int(rng.integers(1, min(n, 3) + 1)), replace=False))
    group_color = {k: int(rng.integers(len(COLORS))) for k in kinds}
    names = list(COLORS)
    objects: list[SceneObject] = []
    gap = 0.03 * image_size
    for _ in range(n):
        k = int(rng.choice(kinds))
        color = names[group_color[k]] if rng.random() < 0.6 else names[int(rng.integers(len(COLORS)))]
        size = SIZES[int(rng.integers(2))]
        placed = None
        for attempt in range(200):
            if attempt == 100:  # crowded scene: try the small size before giving up on this object
                size = "small"
            lo, hi = RADIUS[size]
            r = float(rng.uniform(lo, hi)) * image_size
            angle = float(rng.uniform(-0.17, 0.17)) if SHAPES[k] in ("triangle", "star", "pentagon", "hexagon") else 0.0
            margin = r + 0.02 * image_size
            cx, cy = rng.uniform(margin, image_size - margin, size=2)
            box = box_of(shape_outline(SHAPES[k], cx, cy, r, angle), image_size)
            if not _overlaps(box, objects, gap):
                placed = SceneObject(SHAPES[k], color, size, (float(cx), float(cy)), r, angle, box)
                break
        if placed is not None:
            objects.append(placed)
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return Scene(seed, index, image_size, background, tuple(objects))


# ---------------------------------------------------------------------------------------------- pixels


def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A low-contrast grey-ish texture (H, W, 3) uint8: visible structure, never mistaken for an object."""
    base = rng.uniform(100, 160) + rng.uniform(-15, 15, size=3)
    axis = np.arange(size, dtype=np.float32) / size
    xx, yy = axis[None, :], axis[:, None]  # broadcast to (S, S) on use
    if kind == "plain":
        pattern = np.zeros((size, size), np.float32)
    elif kind == "shaded":
        theta = rng.uniform(0, 2 * np.pi)
        pattern = ((xx * np.cos(theta) + yy * np.sin(theta)) * 2 - 1) * rng.uniform(15, 30)
    elif kind == "striped":
        theta, period = rng.uniform(0, np.pi), rng.uniform(0.05, 0.15)
        pattern = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period) * rng.uniform(8, 16)
    elif kind == "checkered":
        cells = int(rng.integers(4, 12))
        parity = ((xx * cells).astype(int) + (yy * cells).astype(int)) % 2
        pattern = (parity * 2 - 1) * rng.uniform(8, 14)
    else:  # speckled: blurred noise
        noise = rng.standard_normal((size, size), dtype=np.float32)
        noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=float(rng.uniform(2.0, 4.0)))
        pattern = noise / (noise.std() + 1e-6) * rng.uniform(8, 14)
    tint = rng.uniform(0.7, 1.0, size=3)
    # No per-pixel grain: it would make every PNG ~85 kB instead of 5-50 kB. OpenCV does the per-pixel work
    # (several times faster than NumPy here): the signed pattern is offset into uint8, then one affine colour
    # transform gives base + tint * pattern with saturation.
    pattern = np.broadcast_to(np.asarray(pattern, np.float32), (size, size))
    offset = cv2.convertScaleAbs(pattern, alpha=1.0, beta=128.0)
    colour = np.stack([tint, base - 128.0 * tint], axis=1)  # (3, 2): dst_c = tint_c * src + (base_c - 128 tint_c)
    return cv2.transform(offset[:, :, None], colour)


#: How an object is drawn, with its probability: filled with a darker border, filled, or outlined in its
#: colour. A lamp photographs worksheets drawn every way, and a model that saw one style names the others wrong.
STYLES = {"bordered": 0.5, "filled": 0.25, "outline": 0.25}


def shade(color: str, rng: np.random.Generator) -> np.ndarray:
    """Another shade of a named colour (RGB int): hue within +-4 degrees, saturation x0.8-1, value x0.88-1.04."""
    hsv = cv2.cvtColor(np.uint8([[COLORS[color]]]), cv2.COLOR_RGB2HSV_FULL)[0, 0].astype(np.float64)
    hsv[0] = (hsv[0] + rng.uniform(-3.0, 3.0)) % 256  # _FULL: hue in 0..255
    hsv[1] *= rng.uniform(0.8, 1.0)
    hsv[2] *= rng.uniform(0.88, 1.04)
    hsv = np.clip(np.round(hsv), 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv[None, None], cv2.COLOR_HSV2RGB_FULL)[0, 0].astype(int)


def render(scene: Scene) -> np.ndarray:
    """Draw a scene: (S, S, 3) uint8 RGB. Objects are anti-aliased polygons in a shade of their colour, each
    in one of `STYLES`."""
    rng = np.random.default_rng([scene.seed, scene.index, _PIXELS])
    img = np.ascontiguousarray(_background(scene.background, scene.image_size, rng))
    border = max(1, scene.image_size // 160)
    styles = list(STYLES)
    for obj in scene.objects:
        color = shade(obj.color, rng)
        style = styles[int(rng.choice(len(styles), p=list(STYLES.values())))]
        pts = np.round(shape_outline(obj.shape, *obj.center, obj.radius, obj.angle) * 16).astype(np.int32)
        if style == "outline":  # a stroke of about 1.5 % of the image, centred on the outline (the box)
            stroke = max(2, scene.image_size // 80)
            cv2.polylines(img, [pts], True, color.tolist(), thickness=stroke, lineType=cv2.LINE_AA, shift=4)
            continue
        cv2.fillPoly(img, [pts], color.tolist(), lineType=cv2.LINE_AA, shift=4)
        if style == "bordered":
            edge = (color * 0.55).astype(int).tolist()
            cv2.polylines(img, [pts], True, edge, thickness=border, lineType=cv2.LINE_AA, shift=4)
    return img


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB image (OpenCV writes BGR)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV only fails here for unsupported layouts
        msg = "OpenCV could not encode the scene as PNG"
        raise InputError(msg)
    return buf.tobytes()


# ---------------------------------------------------------------------------------------------- text


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _count_phrase(count: int, color: str | None, shape: str) -> str:
    words = ([color] if color else []) + [shape if count == 1 else PLURALS[shape]]
    head = _article(words[0]) if count == 1 else COUNT_WORDS[count]
    return " ".join([head, *words])


def _join(phrases: Sequence[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _matches(obj: SceneObject, shape: str, color: str | None, size: str | None) -> bool:
    return obj.shape == shape and (color is None or obj.color == color) and (size is None or obj.size == size)


def _relation(a: SceneObject, b: SceneObject, rel: str) -> bool:
    """Spatial relations need disjoint extents along their axis, so they are never a judgement call."""
    if rel == "left of":
        return a.x2 < b.box[0]
    if rel == "right of":
        return b.x2 < a.box[0]
    if rel == "above":
        return a.y2 < b.box[1]
    return b.y2 < a.box[1]  # below


_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_ORDINAL_RELATION = {"leftmost": "left of", "rightmost": "right of", "top": "above", "bottom": "below"}


def _attribute_names(scene: Scene, obj: SceneObject) -> list[str]:
    """Attribute-only names of `obj` ("circle", "red circle", ...) that fit no other object, shortest first."""
    names = []
    for color, size in ((None, None), (obj.color, None), (None, obj.size), (obj.color, obj.size)):
        if sum(_matches(o, obj.shape, color, size) for o in scene.objects) == 1:
            names.append(" ".join(w for w in (size, color, obj.shape) if w))
    return names


def _groups(scene: Scene) -> list[tuple[int, str, str]]:
    """(count, color, shape) groups, most numerous first, then left to right: the canonical caption order."""
    counts = Counter((o.color, o.shape) for o in scene.objects)
    first_x = {}
    for o in scene.objects:
        key = (o.color, o.shape)
        first_x[key] = min(first_x.get(key, math.inf), o.center[0])
    order = sorted(counts, key=lambda key: (-counts[key], first_x[key]))
    return [(counts[key], *key) for key in order]


def _there(phrase_count: int) -> str:
    return "there is" if phrase_count == 1 else "there are"


def describe(scene: Scene) -> SceneTexts:
    """All texts about a scene, true by construction; the random choices come from the scene's text stream."""
    rng = np.random.default_rng([scene.seed, scene.index, _TEXT])
    objs = scene.objects
    groups = _groups(scene)
    listing = _join([_count_phrase(c, color, shape) for c, color, shape in groups])
    n = len(objs)
    captions = [
        listing,
        f"{_there(groups[0][0])} {listing} on a {scene.background} background",
        f"{COUNT_WORDS[n]} {'shape' if n == 1 else 'shapes'} on a {scene.background} background",
    ]
    unique = {i: _attribute_names(scene, o) for i, o in enumerate(objs)}
    pairs = [
        (i, j, rel)
        for i in range(n)
        for j in range(n)
        if i != j and unique[i] and unique[j]
        for rel in RELATIONS
        if _relation(objs[i], objs[j], rel)
    ]
    if pairs:
        i, j, rel = pairs[int(rng.integers(len(pairs)))]
        captions.append(f"the {unique[i][-1]} is {rel} the {unique[j][-1]}")

    regions = []
    for i, obj in enumerate(objs):
        names = [f"the {name}" for name in dict.fromkeys([*unique[i][:1], *unique[i][-1:]])]
        full = f"{obj.color} {obj.shape}"
        same = [o for o in objs if _matches(o, obj.shape, obj.color, None)]
        for ordinal, rel in _ORDINAL_RELATION.items():
            if len(same) > 1 and all(_relation(obj, o, rel) for o in same if o is not obj):
                names.append(f"the {ordinal} {full}")
        relational = []
        for j, anchor in enumerate(objs):
            if j == i or not unique[j]:
                continue
            for rel in RELATIONS:
                if _relation(obj, anchor, rel) and [o for o in same if _relation(o, anchor, rel)] == [obj]:
                    relational.append(f"the {obj.size} {full} {rel} the {unique[j][0]}")
        if relational:
            picks = rng.choice(len(relational), size=min(2, len(relational)), replace=False)
            names.extend(relational[int(p)] for p in sorted(picks))
        if names:
            regions.append((list(obj.box), names))

    objects = [(list(o.box), o.shape, [o.color, f"{o.size} {o.color}"]) for o in objs]
    return SceneTexts(captions, regions, objects, _questions(scene, unique, rng), _statements(scene, rng))


def _questions(scene: Scene, unique: dict[int, list[str]], rng: np.random.Generator) -> list[tuple[str, str, str]]:
    objs = scene.objects
    shape_counts = Counter(o.shape for o in objs)
    color_counts = Counter(o.color for o in objs)
    present = sorted(shape_counts, key=SHAPES.index)
    absent = [s for s in SHAPES if s not in shape_counts]

    def pick(seq: Sequence) -> Any:
        return seq[int(rng.integers(len(seq)))]

    shape = pick(present)
    qa = [
        (f"how many {PLURALS[shape]} are there?", COUNT_WORDS[shape_counts[shape]], "count"),
        ("how many shapes are there?", COUNT_WORDS[len(objs)], "count"),
        (f"is there a {shape}?", "yes", "exist"),
        (f"is there a {pick(absent)}?", "no", "exist"),
    ]
    count, color, shape = pick(_groups(scene))
    qa.append((f"how many {color} {PLURALS[shape]} are there?", COUNT_WORDS[count], "count"))
    if rng.random() < 0.3:
        qa.append((f"how many {PLURALS[pick(absent)]} are there?", "zero", "count"))
    nameable = [i for i in range(len(objs)) if unique[i]]
    if nameable:
        i = pick(nameable)
        obj = objs[i]
        qa.append((f"what color is the {unique[i][0]}?", obj.color, "color"))
        if sum(_matches(o, obj.shape, obj.color, None) for o in objs) == 1:
            qa.append((f"is the {obj.color} {obj.shape} small or large?", obj.size, "size"))
    lone_colors = [c for c in color_counts if color_counts[c] == 1]
    if lone_colors:
        color = pick(sorted(lone_colors))
        shape = next(o.shape for o in objs if o.color == color)
        qa.append((f"what shape is the {color} object?", shape, "shape"))
    # Only pairs separated along the asked axis: "no" then means "the opposite", never "they overlap".
    clear = [
        (i, j, rel)
        for i in nameable
        for j in nameable
        if i != j
        for rel in RELATIONS
        if _relation(objs[i], objs[j], rel) or _relation(objs[i], objs[j], _OPPOSITE[rel])
    ]
    if clear:
        i, j, rel = pick(clear)
        truth = _relation(objs[i], objs[j], rel)
        qa.append((f"is the {unique[i][0]} {rel} the {unique[j][0]}?", "yes" if truth else "no", "relation"))
    return qa


def _statement(count: int, color: str | None, shape: str) -> str:
    noun = " ".join(w for w in (color, shape if count == 1 else PLURALS[shape]) if w)
    if count == 0:
        return f"there are no {noun}"
    return f"{_there(count)} {COUNT_WORDS[count]} {noun}"


def _statements(scene: Scene, rng: np.random.Generator) -> list[tuple[str, bool, str]]:
    """Counting statements (statement, label, kind), as many true as false in every scene.

    True: the count of every shape in the scene and of every colour+shape group, "there are no X" for a shape
    that is absent and for a colour that a present shape does not have. False: the near misses a child writes
    (one fewer, one more, never zero) of every true count, and "there are no X" for a present shape. The larger
    side is subsampled to the size of the other with the scene's text generator.
    """
    objs = scene.objects
    shape_counts = Counter(o.shape for o in objs)
    present = sorted(shape_counts, key=SHAPES.index)
    absent = [s for s in SHAPES if s not in shape_counts]
    true: list[tuple[str, bool, str]] = []
    false: list[tuple[str, bool, str]] = []
    counted = [(shape_counts[s], None, s, "shape_count") for s in present]
    counted += [(count, color, shape, "color_shape_count") for count, color, shape in _groups(scene)]
    for count, color, shape, kind in counted:
        true.append((_statement(count, color, shape), True, kind))
        false += [(_statement(w, color, shape), False, "near_miss") for w in (count - 1, count + 1) if 0 < w <= MAX_OBJECTS]
    shape = present[int(rng.integers(len(present)))]
    other_colors = [c for c in COLORS if not any(_matches(o, shape, c, None) for o in objs)]
    true.append((_statement(0, None, absent[int(rng.integers(len(absent)))]), True, "none"))
    true.append((_statement(0, other_colors[int(rng.integers(len(other_colors)))], shape), True, "none"))
    false.append((_statement(0, None, shape), False, "none"))
    keep = min(len(true), len(false))
    out = []
    for side in (true, false):
        chosen = sorted(rng.choice(len(side), size=keep, replace=False)) if len(side) > keep else range(keep)
        out += [side[int(i)] for i in chosen]
    return out


# ---------------------------------------------------------------------------------------------- files


def scene_records(scene: Scene, png: bytes, *, binary: bool) -> dict[str, list[dict]]:
    """The JSON-lines records of one scene, per output file (see the module docstring)."""
    texts = describe(scene)
    image = {"binary": base64.b64encode(png).decode("ascii")} if binary else {"image": f"images/{scene.index:06d}.png"}
    records: dict[str, list[dict]] = {name: [] for name in FILES}
    records["captions"].append({**image, "caption": texts.captions})
    if texts.regions:
        elems = [{"bb": box, "caption": names} for box, names in texts.regions]
        records["regions"].append({**image, "caption": texts.captions[0], "elems": elems})
    elems = [{"bb": box, "caption": shape, "attributes": attrs} for box, shape, attrs in texts.objects]
    records["objects"].append({**image, "elems": elems})
    for k, (question, answer, kind) in enumerate(texts.questions):
        records["vqa"].append(
            {"question_id": scene.index * 100 + k, **image, "question": question, "answer": [answer], "type": kind}
        )
    for statement, label, kind in texts.statements:
        records["check"].append({**image, "statement": statement, "label": label, "type": kind})
    truth = [{"shape": o.shape, "color": o.color, "size": o.size, "bb": list(o.box)} for o in scene.objects]
    ref = {} if binary else image
    records["scenes"].append({"index": scene.index, **ref, "background": scene.background, "objects": truth})
    return records


def iter_scenes(seed: int, indices: Sequence[int] | range, image_size: int = 256) -> Iterator[tuple[Scene, bytes]]:
    """(scene, png bytes) for each index; any subset or order yields the same bytes per index."""
    for index in indices:
        scene = sample_scene(seed, index, image_size)
        yield scene, encode_png(render(scene))


def generate(
    out: str | Path,
    num_scenes: int,
    seed: int,
    *,
    image_size: int = 256,
    start: int = 0,
    binary: bool = False,
    progress: bool = False,
) -> Path:
    """Write scenes `start .. start + num_scenes - 1` of `seed` under `out`; returns the output directory."""
    if num_scenes < 1:
        msg = f"num_scenes must be positive, got {num_scenes}"
        raise InputError(msg)
    scenes = iter_scenes(seed, range(start, start + num_scenes), image_size)
    return write_dataset(out, scenes, num_scenes, binary=binary, progress=progress)


def write_dataset(out: str | Path, scenes: Iterable[tuple[Scene, bytes]], total: int, *, binary: bool = False, progress: bool = False) -> Path:
    """Write (scene, png) pairs as the files of the module docstring under `out`: the one writer of this format,
    for this renderer and the evaluation one (`training/paper.py`)."""
    out = Path(out)
    (out if binary else out / "images").mkdir(parents=True, exist_ok=True)
    if progress:
        from tqdm import tqdm

        scenes = tqdm(scenes, total=total, desc="scenes", unit="scene")
    handles = {name: (out / f"{name}.jsonl").open("w", encoding="utf-8") for name in FILES}
    try:
        for scene, png in scenes:
            if not binary:
                (out / "images" / f"{scene.index:06d}.png").write_bytes(png)
            for name, records in scene_records(scene, png, binary=binary).items():
                for record in records:
                    handles[name].write(json.dumps(record) + "\n")
    finally:
        for handle in handles.values():
            handle.close()
    return out


# ---------------------------------------------------------------------------------------------- vocab


def vocabulary_words() -> list[str]:
    """Every word a template can produce, sorted (tests check generated text against this list)."""
    words = {*SHAPES, *PLURALS.values(), *COLORS, *SIZES, *BACKGROUNDS, *COUNT_WORDS, *ORDINALS, *FUNCTION_WORDS}
    for phrase in RELATIONS:
        words.update(phrase.split())
    return sorted(words)


def build_vocab() -> list[str]:
    """A WordPiece vocab for the synthetic domain: specials, punctuation, digits, letters, then whole words.

    Letters and `##` letters keep any stray word tokenisable without [UNK]; the generated words are whole
    tokens, so the embedded model's embedding table has a few hundred rows instead of 30522.
    """
    chars = [*PUNCTUATION, *"0123456789", *"abcdefghijklmnopqrstuvwxyz"]
    pieces = [f"##{c}" for c in "0123456789abcdefghijklmnopqrstuvwxyz"]
    words = [w for w in vocabulary_words() if w not in chars]
    return [*SPECIAL_TOKENS, *chars, *pieces, *words]


def write_vocab(path: str | Path) -> Path:
    """Write `build_vocab()` as vocab.txt, one token a line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(token + "\n" for token in build_vocab()), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m training.synthetic [generate] --out DIR --num-scenes N --seed S` or `... vocab --out vocab.txt`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["vocab"]:
        parser = argparse.ArgumentParser(prog="python -m training.synthetic vocab", description=build_vocab.__doc__)
        parser.add_argument("--out", required=True, type=Path, help="vocab.txt to write")
        args = parser.parse_args(argv[1:])
        path = write_vocab(args.out)
        print(f"wrote {len(build_vocab())} tokens to {path}")
        return 0
    if argv[:1] == ["generate"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(
        prog="python -m training.synthetic",
        description="Render synthetic shape scenes and write the official JSON-lines files.",
        epilog="example: python -m training.synthetic --out data/synth-train --num-scenes 20000 --seed 0",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--num-scenes", required=True, type=int)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--start", type=int, default=0, help="first scene index (scene i never depends on this)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--binary", action="store_true", help="embed PNGs as base64 in the records")
    args = parser.parse_args(argv)
    try:
        out = generate(
            args.out,
            args.num_scenes,
            args.seed,
            image_size=args.image_size,
            start=args.start,
            binary=args.binary,
            progress=True,
        )
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.num_scenes} scenes to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
