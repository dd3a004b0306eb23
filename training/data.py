"""Readers for the official X-VLM pretraining JSON lines, with the official sampling, augmentation and MLM masking.

Formats (X-VLM `dataset/pretrain_dataset.py`; the image is base64 in `"binary"` or a path in `"image"`, relative
to the JSON-lines file):
- image-caption: `{"image" | "binary", "caption": str | [str]}`;
- region/object: `{"image" | "binary", "caption"?: str | [str], "elems": [{"bb": [x, y, w, h], "caption": str |
  [str], "attributes"?: str | [str]}]}`, boxes in pixels of the original image.

What is official here (`ImageTextJsonDataset`, `RegionTextJsonDataset`, `dataset/__init__.py` transforms):
- image-caption: RandomResizedCrop(scale) -> horizontal flip p=0.5 -> RandAugment(2, 7) with the ten official
  ops -> CLIP normalisation; one caption drawn per visit;
- region: a random crop that contains one randomly chosen box; a flip p=0.5 unless (careful_hflip) some text
  of the record says left/right; resize to `image_res`; colour-only RandAugment; the whole-image caption first
  (`is_image` = 1, target box = the whole crop), then up to `max_regions` boxes with more than
  `min_perc_in_image` of their area inside the crop, clipped to it; `image_atts` is the official floor/ceil
  patch mask (`xvlm_edge.concepts.box_to_patch_mask`) and `target_bbox` is normalised cxcywh of the crop;
- collate: `idx_to_group_img` maps texts to images; with `num_texts` the texts are subsampled or padded by
  resampling to a fixed count, as the official region collate does (all ranks must gather equal shapes).

What is ours, and why:
- randomness is a pure function of `(seed, epoch, index)` (`set_epoch` like DistributedSampler): any DataLoader
  worker count, rank layout or resume point sees the same samples, which kill/resume bit-identity needs;
- image-caption flips are careful too (the official flips blindly); synthetic captions say "left of";
- boxes stay float (the official truncates them with `int()`); boxes partly outside the image are clipped,
  boxes entirely outside or with w or h <= 0 are dropped;
- OpenCV does the pixel work: area resize when shrinking, bicubic when enlarging, in place of Pillow;
- a malformed record is counted (`dataset.skipped`, distinct records or elements per kind), logged once per
  kind, and replaced by the next valid record, deterministically; the official prints a traceback per record.
  With DataLoader workers each worker keeps its own counts.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from training import camera
from training.masking import TextMasker, encode_masked
from xvlm_edge.concepts import box_to_patch_mask
from xvlm_edge.errors import InputError, TextError
from xvlm_edge.preprocess import CLIP_MEAN, CLIP_STD, resize_bicubic
from xvlm_edge.text import pre_caption, pre_question
from xvlm_edge.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SKIP_KINDS = (
    "unreadable_record",  # not JSON, not an object, or `elems` is not a list
    "missing_image",  # no image key, or the file cannot be read
    "bad_base64",
    "undecodable_image",
    "degenerate_box",  # an elem whose box is not 4 finite numbers, has w or h <= 0, or lies outside the image
    "missing_caption",  # a caption that is absent or empty after cleaning (record or elem)
    "empty_record",  # a region record with no usable elem left
)
COLOR_OPS = ("identity", "autocontrast", "equalize", "brightness", "sharpness")
ALL_OPS = (*COLOR_OPS, "shear_x", "shear_y", "translate_x", "translate_y", "rotate")
_FILL = (128, 128, 128)  # geometric ops fill uncovered pixels with mid grey, as the official RandomAugment


class MalformedRecordError(InputError):
    """A record (or one of its elems) the readers skip; `kind` is one of `SKIP_KINDS`."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class TextConfig:
    """The official text keys of a pretraining config (Pretrain_XVLM_base_4m.yaml values as defaults)."""

    max_words: int = 40
    max_tokens: int = 40
    mask_prob: float = 0.25
    max_masks: int = 8
    skipgram_prb: float = 0.2
    skipgram_size: int = 3
    mask_whole_word: bool = True
    add_eos: bool = False  # [SEP] after the text: the official captioning pretraining sets it


@dataclass(frozen=True)
class Sample:
    """One image and its T texts; `key` seeds the collate's subsampling so batches stay deterministic."""

    image: torch.Tensor  # (3, R, R) float32, CLIP-normalised
    text_ids: torch.Tensor  # (T, L)
    text_atts: torch.Tensor  # (T, L)
    text_ids_masked: torch.Tensor  # (T, L)
    masked_pos: torch.Tensor  # (T, M)
    masked_ids: torch.Tensor  # (T, M)
    image_atts: torch.Tensor  # (T, 1 + P*P)
    target_bbox: torch.Tensor  # (T, 4) normalised cxcywh
    is_image: torch.Tensor  # (T,)
    key: int
    scene: dict[str, torch.Tensor] = field(default_factory=dict)  # per-image task fields (`SCENE_FIELDS`), (1, ...)


# ---------------------------------------------------------------------------------------------- pixels


def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8 RGB; grey and alpha images become RGB, EXIF rotation is applied."""
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        msg = f"OpenCV cannot decode the image: {e}"
        raise MalformedRecordError(msg, "undecodable_image") from e
    if bgr is None or bgr.size == 0:
        msg = f"OpenCV cannot decode {len(data)} bytes as an image"
        raise MalformedRecordError(msg, "undecodable_image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The served resize (Pillow-exact bicubic, `xvlm_edge.preprocess`), so a model trains on the pixels it is
    served; one thread, as DataLoader workers run side by side."""
    return resize_bicubic(np.ascontiguousarray(image), (width, height), num_threads=1)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, `/255` then CLIP mean/std (the official Normalize).

    NumPy, not torch: small torch ops in DataLoader workers contend for the intra-op thread pool.
    """
    scale = (1.0 / (255.0 * np.asarray(CLIP_STD))).astype(np.float32)
    shift = (-np.asarray(CLIP_MEAN) / np.asarray(CLIP_STD)).astype(np.float32)
    x = image.astype(np.float32) * scale + shift  # (H, W, 3)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """torchvision's RandomResizedCrop: 10 tries at a random area and aspect, else a centre crop; then resize."""
    height, width = image.shape[:2]
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            return resize(image[top : top + h, left : left + w], size, size)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return resize(image[top : top + h, left : left + w], size, size)


def _affine(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Pillow-style affine: `matrix` maps output pixels to input pixels."""
    h, w = image.shape[:2]
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=_FILL)


def _autocontrast(image: np.ndarray) -> np.ndarray:
    lut = np.tile(np.arange(256, dtype=np.float32)[:, None], (1, 3))
    lo, hi = image.reshape(-1, 3).min(0).astype(np.float32), image.reshape(-1, 3).max(0).astype(np.float32)
    stretch = hi > lo
    lut[:, stretch] = (lut[:, stretch] - lo[stretch]) * (255.0 / (hi[stretch] - lo[stretch]))
    return cv2.LUT(image, np.clip(lut, 0, 255).astype(np.uint8)[None])


def _sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with Pillow's SMOOTH filter; the one-pixel border keeps the original, as in Pillow."""
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13
    smooth = image.copy()
    smooth[1:-1, 1:-1] = cv2.filter2D(image, -1, kernel)[1:-1, 1:-1]
    return cv2.addWeighted(image, factor, smooth, 1.0 - factor, 0.0)


def apply_op(image: np.ndarray, op: str, magnitude: int, rng: np.random.Generator) -> np.ndarray:
    """One RandAugment op at the official level mapping (levels out of 10; signs random for geometry)."""
    level = magnitude / 10
    sign = 1.0 if rng.random() < 0.5 else -1.0
    h, w = image.shape[:2]
    if op == "identity":
        return image
    if op == "autocontrast":
        return _autocontrast(image)
    if op == "equalize":
        return cv2.merge([cv2.equalizeHist(c) for c in cv2.split(image)])
    if op == "brightness":  # enhance factor level * 1.8 + 0.1: a fixed brightening, as official
        return cv2.convertScaleAbs(image, alpha=level * 1.8 + 0.1)
    if op == "sharpness":
        return _sharpness(image, level * 1.8 + 0.1)
    if op == "shear_x":
        return _affine(image, np.array([[1, sign * 0.3 * level, 0], [0, 1, 0]], np.float32))
    if op == "shear_y":
        return _affine(image, np.array([[1, 0, 0], [sign * 0.3 * level, 1, 0]], np.float32))
    if op == "translate_x":  # translate_const 10 -> 7 pixels at magnitude 7
        return _affine(image, np.array([[1, 0, sign * 10 * level], [0, 1, 0]], np.float32))
    if op == "translate_y":
        return _affine(image, np.array([[1, 0, 0], [0, 1, sign * 10 * level]], np.float32))
    if op == "rotate":
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), sign * 30 * level, 1.0)
        return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_NEAREST, borderValue=_FILL)
    msg = f"unknown RandAugment op {op!r}; choose from {ALL_OPS}"
    raise InputError(msg)


def rand_augment(
    image: np.ndarray, rng: np.random.Generator, ops: Sequence[str], n: int = 2, magnitude: int = 7
) -> np.ndarray:
    """The official RandomAugment(N, M): N ops drawn with replacement, each applied with probability 0.5."""
    for k in rng.integers(len(ops), size=n).tolist():
        if rng.random() < 0.5:
            image = apply_op(image, ops[k], magnitude, rng)
    return image


# ---------------------------------------------------------------------------------------------- region sampling


@dataclass(frozen=True)
class RegionCrop:
    """Where a region sample looks: the crop, the flip, and the kept boxes in crop pixels (after the flip)."""

    crop: tuple[int, int, int, int]  # x0, y0, w0, h0 in original pixels
    flipped: bool
    kept: list[tuple[int, tuple[float, float, float, float]]]  # (elem index, [x, y, w, h]) in shuffled order


def sample_region_crop(
    boxes: np.ndarray,
    width: int,
    height: int,
    rng: np.random.Generator,
    *,
    allow_flip: bool,
    min_perc_in_image: float = 0.5,
    whole_image: bool = False,
) -> RegionCrop:
    """The official region sampling on valid boxes (E, 4) `[x, y, w, h]` inside a `width` x `height` image.

    A random crop contains one randomly chosen box; every box with more than `min_perc_in_image` of its area
    inside the crop is kept, clipped to the crop, and mirrored if the crop is flipped. `whole_image`: the crop
    is the image itself (how the tasks see it), and every box is kept.
    """
    if whole_image:
        x0, y0, x1, y1 = 0, 0, width, height
    else:
        x, y, w, h = (float(v) for v in boxes[int(rng.integers(len(boxes)))])
        x0 = int(rng.integers(0, math.floor(x) + 1))
        y0 = int(rng.integers(0, math.floor(y) + 1))
        x1 = int(rng.integers(min(math.ceil(x + w), width), width + 1))
        y1 = int(rng.integers(min(math.ceil(y + h), height), height + 1))
    w0, h0 = x1 - x0, y1 - y0
    flipped = bool(rng.random() < 0.5) and allow_flip
    kept = []
    for i in rng.permutation(len(boxes)).tolist():
        bx, by, bw, bh = (float(v) for v in boxes[i])
        xx, yy = max(x0, bx), max(y0, by)
        xm, ym = min(x1, bx + bw), min(y1, by + bh)
        if xm > xx and ym > yy and (xm - xx) * (ym - yy) / (bw * bh) > min_perc_in_image:
            cx, cy, cw, ch = xx - x0, yy - y0, xm - xx, ym - yy
            if flipped:
                cx = w0 - cx - cw
            kept.append((i, (cx, cy, cw, ch)))
    return RegionCrop((x0, y0, w0, h0), flipped, kept)


def mentions_left_or_right(texts: Sequence[str]) -> bool:
    """The official careful-hflip test: a plain substring check, so "bright" also blocks the flip (harmless)."""
    return any("left" in t.lower() or "right" in t.lower() for t in texts)


# ---------------------------------------------------------------------------------------------- datasets


def _as_texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return []


class _JsonlDataset(Dataset):
    """Line-indexed JSON-lines file; records are read on demand, so base64 images never sit in memory."""

    def __init__(
        self,
        path: str | Path,
        tokenizer: Tokenizer,
        *,
        image_res: int,
        patch_size: int,
        text: TextConfig,
        seed: int,
        augment: bool,
        camera: float = 0.0,
    ) -> None:
        self.path = Path(path)
        if not 0.0 <= camera <= 1.0:
            msg = f"camera is the probability of photographing a sample, in [0, 1]; got {camera}"
            raise InputError(msg)
        if image_res % patch_size:
            msg = f"image_res {image_res} is not a multiple of patch_size {patch_size}"
            raise InputError(msg)
        self._offsets: list[int] = []  # byte offset of each non-blank line, found by streaming the file once
        try:
            with self.path.open("rb") as f:
                position = 0
                for line in f:
                    if line.strip():
                        self._offsets.append(position)
                    position += len(line)
        except OSError as e:
            msg = f"cannot read {self.path}: {e}"
            raise InputError(msg, hint="pass an existing JSON-lines file") from e
        if not self._offsets:
            msg = f"{self.path} holds no records"
            raise InputError(msg)
        self.tokenizer = tokenizer
        self.text = text
        self.masker = TextMasker(
            tokenizer,
            mask_prob=text.mask_prob,
            max_masks=text.max_masks,
            skipgram_prb=text.skipgram_prb,
            skipgram_size=text.skipgram_size,
            whole_word=text.mask_whole_word,
        )
        self.image_res = image_res
        self.patch_size = patch_size
        self.seed = seed
        self.augment = augment
        self.camera = camera
        self.epoch = 0
        self._skipped: dict[str, set[tuple[int, int]]] = {}

    def __len__(self) -> int:
        return len(self._offsets)

    def set_epoch(self, epoch: int) -> None:
        """New random draws per epoch, as `DistributedSampler.set_epoch`."""
        self.epoch = epoch

    @property
    def skipped(self) -> dict[str, int]:
        """Distinct malformed records (or elems) skipped so far in this process, per kind."""
        return {kind: len(where) for kind, where in self._skipped.items()}

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            msg = f"index {index} out of range for {len(self)} records"
            raise IndexError(msg)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        for attempt in range(len(self)):
            j = (index + attempt) % len(self)
            try:
                return self._load(self._read(j), j, rng)
            except MalformedRecordError as e:
                self._note(e, j)
        msg = f"every record of {self.path} is malformed: {self.skipped}"
        raise InputError(msg, hint="check the file; the log names the first record of each kind")

    def _load(self, record: dict, index: int, rng: np.random.Generator) -> Sample:
        raise NotImplementedError

    def _note(self, error: MalformedRecordError, index: int, elem: int = -1) -> None:
        where = self._skipped.setdefault(error.kind, set())
        if not where:
            log.warning(
                "%s record %d: skipping %s (%s); later ones are only counted in dataset.skipped",
                self.path, index + 1, error.kind, error,
            )  # fmt: skip
        where.add((index, elem))

    def _read(self, index: int) -> dict:
        with self.path.open("rb") as f:
            f.seek(self._offsets[index])
            line = f.readline()
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            msg = f"not JSON: {e}"
            raise MalformedRecordError(msg, "unreadable_record") from e
        if not isinstance(record, dict):
            msg = f"a record must be an object, got {type(record).__name__}"
            raise MalformedRecordError(msg, "unreadable_record")
        return record

    def _photograph(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, camera.Shot | None]:
        """With probability `camera`, the image as a desk lamp's camera photographs it (`training/camera.py`),
        and the shot (to move boxes with it); draws nothing from `rng` when `camera` is 0."""
        if self.camera <= 0 or rng.random() >= self.camera:
            return image, None
        shot = camera.sample_shot(rng, image.shape[1], image.shape[0])
        return camera.shoot(image, shot), shot

    def _image(self, record: dict) -> np.ndarray:
        if "binary" in record:
            if not isinstance(record["binary"], str):
                msg = "`binary` must be a base64 string"
                raise MalformedRecordError(msg, "bad_base64")
            try:
                data = base64.b64decode(record["binary"], validate=True)
            except (binascii.Error, ValueError) as e:
                msg = f"`binary` is not valid base64: {e}"
                raise MalformedRecordError(msg, "bad_base64") from e
            return decode_image(data)
        if not isinstance(record.get("image"), str):
            msg = "the record has neither `binary` nor an `image` path"
            raise MalformedRecordError(msg, "missing_image")
        path = Path(record["image"])
        path = path if path.is_absolute() else self.path.parent / path
        try:
            return decode_image(path.read_bytes())
        except OSError as e:
            msg = f"cannot read {path}: {e}"
            raise MalformedRecordError(msg, "missing_image") from e

    def _clean(self, value: Any) -> list[str]:
        """The usable captions of a record or elem field, cleaned by the official `pre_caption`."""
        cleaned = []
        for text in _as_texts(value):
            try:
                cleaned.append(pre_caption(text, self.text.max_words))
            except TextError:
                continue
        return cleaned

    def _encode(self, texts: Sequence[str], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        try:
            encoded = [
                encode_masked(
                    t, self.tokenizer, self.masker, rng, max_tokens=self.text.max_tokens, add_eos=self.text.add_eos
                )
                for t in texts
            ]
        except TextError as e:
            raise MalformedRecordError(str(e), "missing_caption") from e
        fields = ("text_ids", "text_atts", "text_ids_masked", "masked_pos", "masked_ids")
        return {f: torch.stack([getattr(e, f) for e in encoded]) for f in fields}

    @property
    def num_patches(self) -> int:
        """1 + P*P: the [CLS] slot plus the patch grid the box masks are drawn on."""
        return 1 + (self.image_res // self.patch_size) ** 2


class ImageTextDataset(_JsonlDataset):
    """Image-caption records; one caption per visit, pretraining augmentations unless `augment=False`."""

    def __init__(
        self,
        path: str | Path,
        tokenizer: Tokenizer,
        *,
        image_res: int = 224,
        patch_size: int = 32,
        text: TextConfig = TextConfig(),  # a frozen dataclass: safe as a default
        seed: int = 0,
        augment: bool = True,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        careful_hflip: bool = True,
        camera: float = 0.0,
    ) -> None:
        super().__init__(
            path, tokenizer, image_res=image_res, patch_size=patch_size, text=text, seed=seed, augment=augment,
            camera=camera,
        )
        if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            msg = f"crop_scale must satisfy 0 < lo <= hi <= 1, got {crop_scale}"
            raise InputError(msg)
        self.crop_scale = crop_scale
        self.careful_hflip = careful_hflip

    def _load(self, record: dict, index: int, rng: np.random.Generator) -> Sample:
        key = int(rng.integers(2**32))
        captions = self._clean(record.get("caption"))
        if not captions:
            msg = "no usable `caption`"
            raise MalformedRecordError(msg, "missing_caption")
        caption = captions[int(rng.integers(len(captions)))]
        image, _ = self._photograph(self._image(record), rng)
        res = self.image_res
        if self.augment:
            image = random_resized_crop(image, rng, res, self.crop_scale)
            flip = rng.random() < 0.5
            if flip and not (self.careful_hflip and mentions_left_or_right([caption])):
                image = np.ascontiguousarray(image[:, ::-1])
            image = rand_augment(image, rng, ALL_OPS)
        else:
            image = resize(image, res, res)
        texts = self._encode([caption], rng)
        return Sample(
            image=to_tensor(image),
            **texts,
            image_atts=torch.ones(1, self.num_patches, dtype=torch.int64),
            target_bbox=torch.tensor([[0.5, 0.5, 1.0, 1.0]]),
            is_image=torch.ones(1, dtype=torch.int64),
            key=key,
        )


@dataclass(frozen=True)
class _Elem:
    box: tuple[float, float, float, float]
    captions: list[str]
    attributes: list[str]


class RegionTextDataset(_JsonlDataset):
    """Region/object records with the official region sampling (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        tokenizer: Tokenizer,
        *,
        image_res: int = 224,
        patch_size: int = 32,
        text: TextConfig = TextConfig(),  # a frozen dataclass: safe as a default
        seed: int = 0,
        augment: bool = True,
        max_regions: int = 5,
        min_perc_in_image: float = 0.5,
        careful_hflip: bool = True,
        camera: float = 0.0,
        whole_image: float = 0.0,
    ) -> None:
        super().__init__(
            path, tokenizer, image_res=image_res, patch_size=patch_size, text=text, seed=seed, augment=augment,
            camera=camera,
        )
        if max_regions < 1:
            msg = f"max_regions must be at least 1, got {max_regions}"
            raise InputError(msg)
        if not 0.0 <= whole_image <= 1.0:
            msg = f"whole_image is a probability, got {whole_image}"
            raise InputError(msg)
        self.max_regions = max_regions
        self.whole_image = whole_image
        self.min_perc_in_image = min_perc_in_image
        self.careful_hflip = careful_hflip

    def _elems(self, record: dict, index: int, width: int, height: int) -> list[_Elem]:
        elems = record.get("elems")
        if not isinstance(elems, list):
            msg = "a region record needs an `elems` list"
            raise MalformedRecordError(msg, "unreadable_record")
        usable = []
        for e, elem in enumerate(elems):
            try:
                usable.append(self._elem(elem, width, height))
            except MalformedRecordError as err:
                self._note(err, index, e)
        if not usable:
            msg = "no elem has both a usable box and a usable caption"
            raise MalformedRecordError(msg, "empty_record")
        return usable

    def _elem(self, elem: Any, width: int, height: int) -> _Elem:
        box = elem.get("bb") if isinstance(elem, dict) else None
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            msg = f"`bb` must be [x, y, w, h] numbers, got {box!r}"
            raise MalformedRecordError(msg, "degenerate_box")
        x, y, w, h = (float(v) for v in box)
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            msg = f"box {box} is not finite with w, h > 0"
            raise MalformedRecordError(msg, "degenerate_box")
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
        if x1 <= x0 or y1 <= y0:
            msg = f"box {box} lies outside the {width}x{height} image"
            raise MalformedRecordError(msg, "degenerate_box")
        captions = self._clean(elem.get("caption"))
        if not captions:
            msg = "elem without a usable `caption`"
            raise MalformedRecordError(msg, "missing_caption")
        return _Elem((x0, y0, x1 - x0, y1 - y0), captions, self._clean(elem.get("attributes")))

    def _load(self, record: dict, index: int, rng: np.random.Generator) -> Sample:
        key = int(rng.integers(2**32))
        image, shot = self._photograph(self._image(record), rng)
        height, width = image.shape[:2]
        elems = self._elems(record, index, width, height)
        if shot is not None:  # the boxes move with the page
            elems = [dataclasses.replace(e, box=camera.warp_box(e.box, shot)) for e in elems]
        whole = self._clean(record.get("caption"))
        if "caption" in record and not whole:
            self._note(MalformedRecordError("unusable whole-image `caption`", "missing_caption"), index)
        said = whole + [t for e in elems for t in e.captions + e.attributes]
        allow_flip = not (self.careful_hflip and mentions_left_or_right(said))
        boxes = np.array([e.box for e in elems], dtype=np.float64)
        # drawn only when asked for, so that recipes without it keep their random stream
        whole_image = self.whole_image > 0 and bool(rng.random() < self.whole_image)
        region = sample_region_crop(
            boxes, width, height, rng, allow_flip=allow_flip, min_perc_in_image=self.min_perc_in_image,
            whole_image=whole_image,
        )  # fmt: skip

        x0, y0, w0, h0 = region.crop
        crop = image[y0 : y0 + h0, x0 : x0 + w0]
        if region.flipped:
            crop = crop[:, ::-1]
        res = self.image_res
        crop = resize(np.ascontiguousarray(crop), res, res)
        if self.augment:
            crop = rand_augment(crop, rng, COLOR_OPS)

        texts, targets, pixel_boxes = [], [], []
        if whole:
            texts.append(whole[int(rng.integers(len(whole)))])
        for i, (bx, by, bw, bh) in region.kept[: self.max_regions - len(texts)]:
            elem = elems[i]
            caption = elem.captions[int(rng.integers(len(elem.captions)))]
            if elem.attributes:
                attribute = elem.attributes[int(rng.integers(len(elem.attributes)))]
                caption = pre_caption(f"{attribute} {caption}", self.text.max_words)
            texts.append(caption)
            box = (bx * res / w0, by * res / h0, bw * res / w0, bh * res / h0)  # crop pixels -> model input pixels
            pixel_boxes.append(box)
            targets.append(((box[0] + box[2] / 2) / res, (box[1] + box[3] / 2) / res, box[2] / res, box[3] / res))
        n_image = 1 if whole else 0
        image_atts = torch.ones(n_image, self.num_patches, dtype=torch.int64)
        if pixel_boxes:
            masks = box_to_patch_mask(torch.tensor(pixel_boxes, dtype=torch.float64), res, self.patch_size)
            image_atts = torch.cat([image_atts, masks])
        target_bbox = torch.tensor([[0.5, 0.5, 1.0, 1.0]] * n_image + targets, dtype=torch.float32).reshape(-1, 4)
        return Sample(
            image=to_tensor(crop),
            **self._encode(texts, rng),
            image_atts=image_atts,
            target_bbox=target_bbox,
            is_image=torch.tensor([1] * n_image + [0] * len(pixel_boxes), dtype=torch.int64),
            key=key,
        )


#: Per-image task fields of a `SceneTaskDataset` batch: row b belongs to image b (not to a text row).
SCENE_FIELDS = (
    "caption_ids", "caption_atts",  # [CLS] prompt caption [SEP] [PAD]..: the captioning decoder's teacher forcing
    "question_ids", "question_atts", "answer_ids", "answer_atts",  # one VQA question and its answer
    "statement_ids", "statement_atts", "check_label",  # one `check` statement, labelled true (1) or false (0)
)  # fmt: skip


def _pad_row(ids: list[int], width: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, width) ids and attention mask of one token row, cut or padded to `width`."""
    ids = ids[:width]
    out = torch.full((1, width), pad_id, dtype=torch.int64)
    out[0, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    atts = torch.zeros((1, width), dtype=torch.int64)
    atts[0, : len(ids)] = 1
    return out, atts


class SceneTaskDataset(ImageTextDataset):
    """Image-caption records plus, per image, the fine-tuning tasks of the same scene (multi-task pretraining).

    Each visit is an `ImageTextDataset` sample (ITC/ITM/MLM) whose `scene` fields also carry a caption for the
    captioning decoder (`prompt` + caption + [SEP], official `model_captioning.py` layout), one VQA question
    with its answer (`vqa.jsonl`, official `[CLS] answer [SEP]`), and one labelled `check` statement
    (`check.jsonl`), all drawn from the sample's generator. One image encoding then serves every loss.
    VQA and check records are joined to the caption record by their `image` (or `binary`) field; an image
    with no question or no statement is a malformed record (`missing_caption`) and skipped.
    """

    def __init__(
        self,
        path: str | Path,
        tokenizer: Tokenizer,
        *,
        vqa: str | Path,
        check: str | Path,
        prompt: str = "a picture of ",
        answer_tokens: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(path, tokenizer, **kwargs)
        self.questions = self._index(Path(vqa), lambda r: (r["question"], _as_texts(r["answer"])[0]))
        self.statements = self._index(Path(check), lambda r: (r["statement"], bool(r["label"])))
        self.prompt_ids = tokenizer.caption_prompt_ids(prompt).tolist()
        self.answer_tokens = answer_tokens

    @staticmethod
    def _index(path: Path, read: Callable[[dict], tuple]) -> dict[str, list[tuple]]:
        """Records of a task file grouped by image key; small (text only), so held in memory."""
        out: dict[str, list[tuple]] = {}
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            msg = f"cannot read {path}: {e}"
            raise InputError(msg, hint="generate the data with python -m training.synthetic") from e
        for line in lines:
            if line.strip():
                record = json.loads(line)
                out.setdefault(record.get("image") or record.get("binary"), []).append(read(record))
        return out

    def _load(self, record: dict, index: int, rng: np.random.Generator) -> Sample:
        sample = super()._load(record, index, rng)
        key = record.get("image") or record.get("binary")
        questions, statements = self.questions.get(key), self.statements.get(key)
        if not questions or not statements:
            msg = "the image has no VQA question or no check statement"
            raise MalformedRecordError(msg, "missing_caption")
        tok, width = self.tokenizer, self.text.max_tokens
        caption = self._clean(record.get("caption"))
        caption = caption[int(rng.integers(len(caption)))]
        pieces = tok.encode([caption]).input_ids[0, 1:].tolist()[: width - len(self.prompt_ids) - 1]
        caption_ids, caption_atts = _pad_row([*self.prompt_ids, *pieces, tok.sep_id], width, tok.pad_id)
        question, answer = questions[int(rng.integers(len(questions)))]
        question_ids, question_atts = _pad_row(
            tok.encode([pre_question(question, self.text.max_words)]).input_ids[0].tolist(), width, tok.pad_id
        )
        answer_ids, answer_atts = _pad_row(
            tok.encode_answers([answer]).input_ids[0].tolist(), self.answer_tokens, tok.pad_id
        )
        statement, label = statements[int(rng.integers(len(statements)))]
        statement_ids, statement_atts = _pad_row(
            tok.encode([pre_caption(statement, self.text.max_words)]).input_ids[0].tolist(), width, tok.pad_id
        )
        scene = {
            "caption_ids": caption_ids, "caption_atts": caption_atts,
            "question_ids": question_ids, "question_atts": question_atts,
            "answer_ids": answer_ids, "answer_atts": answer_atts,
            "statement_ids": statement_ids, "statement_atts": statement_atts,
            "check_label": torch.tensor([int(label)], dtype=torch.int64),
        }  # fmt: skip
        return dataclasses.replace(sample, scene=scene)


# ---------------------------------------------------------------------------------------------- collate

_TEXT_FIELDS = (
    "text_ids", "text_atts", "text_ids_masked", "masked_pos", "masked_ids", "image_atts", "target_bbox", "is_image",
)  # fmt: skip


def collate(samples: Sequence[Sample], num_texts: int | None = None) -> dict[str, torch.Tensor]:
    """Stack samples into the batch dict of the training step.

    `images` (B, 3, R, R); every text field (K, ...) with `idx_to_group_img` (K,) naming its image. With
    `num_texts`, K is fixed: texts are subsampled without replacement, or padded by resampling (official).
    """
    if not samples:
        msg = "collate got an empty batch"
        raise InputError(msg)
    counts = torch.tensor([len(s.is_image) for s in samples])
    batch = {"images": torch.stack([s.image for s in samples])}
    batch["idx_to_group_img"] = torch.repeat_interleave(torch.arange(len(samples)), counts)
    for name in _TEXT_FIELDS:
        batch[name] = torch.cat([getattr(s, name) for s in samples])
    for name in samples[0].scene:
        batch[name] = torch.cat([s.scene[name] for s in samples])  # (B, ...): one row per image
    if num_texts is not None:
        keep = _fixed_count(int(counts.sum()), num_texts, np.random.default_rng([s.key for s in samples]))
        for name in ("idx_to_group_img", *_TEXT_FIELDS):
            batch[name] = batch[name][keep]
    return batch


def _fixed_count(n: int, k: int, rng: np.random.Generator) -> torch.Tensor:
    if k < 1:
        msg = f"num_texts must be at least 1, got {k}"
        raise InputError(msg)
    if n >= k:
        keep = np.sort(rng.choice(n, size=k, replace=False))
    elif 2 * n >= k:  # pad by sampling distinct texts a second time
        keep = np.sort(np.concatenate([np.arange(n), rng.choice(n, size=k - n, replace=False)]))
    else:  # too few: repeat the whole list
        keep = np.tile(np.arange(n), math.ceil(k / n))[:k]
    return torch.from_numpy(keep)


def make_collate(num_texts: int | None = None) -> Callable[[Sequence[Sample]], dict[str, torch.Tensor]]:
    """A picklable collate for DataLoader workers."""
    return partial(collate, num_texts=num_texts)
