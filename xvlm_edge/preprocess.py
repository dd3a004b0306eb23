"""Image decoding (OpenCV), Pillow-exact bicubic resize + CLIP normalisation (C++ fast path, NumPy reference), boxes.

The official X-VLM test transform is ``Image.open(p).convert("RGB").resize((res, res), BICUBIC)`` (squash, no
crop) -> ``/255`` -> ``Normalize(CLIP_MEAN, CLIP_STD)``. torch and OpenCV bicubic resizers differ from Pillow's
by up to 64 levels, so Pillow's ``libImaging/Resample.c`` arithmetic is reproduced twice: in C++
(``xvlm_edge._C``, multi-threaded) and in NumPy below (the reference; both are bit-exact with Pillow 13).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import cv2
import numpy as np
import torch

if TYPE_CHECKING:  # Pillow is optional: its image type is named for checkers, never imported at run time
    import PIL.Image

from xvlm_edge.errors import BackendUnavailableError, ImageError, InputError

try:
    from xvlm_edge import _C
except ImportError:  # a source checkout without a build: the NumPy reference still works
    _C = None

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "MAX_PIXELS",
    "box_xywh_to_resized",
    "load_image",
    "preprocess",
    "resize_bicubic",
    "resolve_backend",
    "to_pixel_values",
]

# Normalisation statistics of the official test transform (CLIP's), used for every backbone.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Largest accepted image, in pixels, inclusive: 10000 x 10000 (300 MB as RGB uint8) still loads; anything
# larger is refused with ImageError (for PNG and JPEG files from the header, before decoding).
MAX_PIXELS = 100_000_000

Backend = Literal["auto", "cpp", "numpy"]
ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, "PIL.Image.Image"]

# Pillow's fixed-point taps: 22 fraction bits (32 - 8 for the pixel - 2 for the negative-lobe overshoot).
_PRECISION_BITS = 22

# Largest output side: a model input, not a poster (the C++ core's own limit is far higher).
_MAX_OUT_SIDE = 16384

# Decode flags: ANYDEPTH keeps 16 bits, ANYCOLOR keeps gray as one channel, and unlike IMREAD_UNCHANGED
# (which implies IMREAD_IGNORE_ORIENTATION) OpenCV applies the EXIF orientation. Alpha is dropped without
# compositing, exactly what PIL's convert("RGB") does, so IMREAD_UNCHANGED would buy nothing.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


# ---------------------------------------------------------------- decoding


def load_image(source: ImageSource, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image into an (H, W, 3) uint8 RGB array, or raise ImageError naming the problem.

    ``source`` is a path, encoded bytes, a NumPy array ((H, W) gray or (H, W, 1|3|4) RGB[A]; uint8, uint16
    (rounded v/257) or float in [0, 1]) or a PIL image. Files get their EXIF orientation applied, gray is
    repeated to 3 channels and alpha is dropped (as PIL's ``convert("RGB")``). A PIL image is taken as
    given: call ``ImageOps.exif_transpose`` first if it needs rotating.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"image file not found: {path}", hint="check the path")
        data = path.read_bytes()
        if not data:
            raise ImageError(f"image file is empty (0 bytes): {path}")
        return _decode(data, str(path), max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageError("image bytes are empty (0 bytes)")
        return _decode(data, "image bytes", max_pixels)
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels=max_pixels)
    pil_image = sys.modules.get("PIL.Image")  # a PIL image can only exist if Pillow is already imported
    if pil_image is not None and isinstance(source, pil_image.Image):
        return _from_pil(source, max_pixels)
    raise ImageError(
        f"unsupported image source type {type(source).__name__}; expected a path, bytes, a NumPy array "
        "or a PIL image"
    )


def _from_pil(img: Any, max_pixels: int) -> np.ndarray:
    if img.mode.startswith("I;16"):  # convert("RGB") would clip 16-bit values at 255; scale them instead
        return _from_array(np.asarray(img).astype(np.uint16), max_pixels=max_pixels)
    if img.mode in ("I", "F"):
        raise ImageError(f"PIL mode {img.mode!r} (32-bit) is not supported; convert the image to 8-bit first")
    _check_pixels(img.width, img.height, max_pixels)
    return np.asarray(img.convert("RGB"))


def _decode(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    size = _header_size(data)
    if size is not None:
        _check_pixels(*size, max_pixels)
    if data.startswith(b"\xff\xd8") and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        # libjpeg decodes a truncated scan with a warning and grey fill; an end-of-image marker after the
        # last start-of-scan is the cheap proof that the scan is complete (entropy data never holds 0xFFD9).
        raise ImageError(f"{name}: JPEG data is truncated (no end-of-image marker after the last scan)")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), _DECODE_FLAGS)
    if arr is None:
        raise ImageError(f"{name}: cannot decode image data (not an image, an unsupported format, or truncated)")
    return _from_array(arr, bgr=arr.ndim == 3, max_pixels=max_pixels)


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header, so decompression bombs are refused before decoding."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 <= len(data) and data[i] == 0xFF:
            marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
            i += 2 + length
    return None


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels, above the limit of "
            f"{max_pixels / 1e6:g} megapixels",
            hint="downscale the image first or pass a larger max_pixels",
        )


def _from_array(arr: np.ndarray, *, bgr: bool = False, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3):
        raise ImageError(f"image array must be (H, W) or (H, W, C), got {arr.ndim} dimensions {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] not in (3, 4):
        raise ImageError(f"image has {arr.shape[2]} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    height, width = arr.shape[:2]
    if height == 0 or width == 0:
        raise ImageError(f"image is empty ({width}x{height})")
    _check_pixels(width, height, max_pixels)
    arr = _to_uint8(arr)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    arr = arr[:, :, 2::-1] if bgr else arr[:, :, :3]
    return np.ascontiguousarray(arr)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        # round(v / 257) maps 0..65535 onto 0..255 (257 * 255 = 65535); v / 257 is never a tie.
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ImageError("image contains NaN or infinite values")
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise ImageError(f"float image values must lie in [0, 1], got [{arr.min():g}, {arr.max():g}]")
        return np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    raise ImageError(f"unsupported image dtype {arr.dtype}; expected uint8, uint16 or float in [0, 1]")


# ---------------------------------------------------------------- resize + normalise


def resolve_backend(backend: Backend = "auto") -> Literal["cpp", "numpy"]:
    """The backend that will run: ``auto`` picks the compiled one when it is built, else NumPy."""
    if backend == "auto":
        return "cpp" if _C is not None else "numpy"
    if backend == "cpp" and _C is None:
        raise BackendUnavailableError(
            "backend='cpp' asked for, but xvlm_edge._C is not built",
            hint="reinstall with `pip install -e .` or use backend='numpy'",
        )
    if backend not in ("cpp", "numpy"):
        raise InputError(f"unknown backend {backend!r}; expected 'auto', 'cpp' or 'numpy'")
    return backend


def resize_bicubic(
    img: np.ndarray, size: tuple[int, int], *, backend: Backend = "auto", num_threads: int = 0
) -> np.ndarray:
    """Pillow-exact ``Image.resize(size, BICUBIC)`` of an (H, W, 3) uint8 array; ``size`` is (width, height).

    ``num_threads`` <= 0 uses every core (C++ backend only; results do not depend on it).
    """
    _check_rgb(img)
    out_w, out_h = _check_size(size)
    if resolve_backend(backend) == "cpp":
        return _C.resize_bicubic(img, out_w, out_h, num_threads)
    return _resize_numpy(img, out_w, out_h)


def to_pixel_values(
    img: np.ndarray,
    res: int,
    *,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    backend: Backend = "auto",
    num_threads: int = 0,
) -> np.ndarray:
    """The official test transform of one (H, W, 3) uint8 RGB image: (3, res, res) float32."""
    _check_rgb(img)
    _check_side(res, "res")
    mean3, std3 = _check_stats(mean, "mean"), _check_stats(std, "std")
    if any(s == 0.0 for s in std3):
        raise InputError(f"std must be non-zero, got {std3}")
    if resolve_backend(backend) == "cpp":
        return _C.preprocess(img, res, mean3, std3, num_threads)
    resized = _resize_numpy(img, res, res).astype(np.float32)
    # ToTensor then Normalize, in float32 and in that order, to match the official values bit for bit.
    values = (resized / np.float32(255.0) - np.asarray(mean3, np.float32)) / np.asarray(std3, np.float32)
    return np.ascontiguousarray(values.transpose(2, 0, 1))  # (res, res, 3) -> (3, res, res)


def preprocess(
    sources: ImageSource | Sequence[ImageSource],
    res: int,
    *,
    backend: Backend = "auto",
    num_threads: int = 0,
) -> torch.Tensor:
    """Load and transform images as the official test loader does: (N, 3, res, res) float32.

    ``sources`` is one image source or a list/tuple of them (see ``load_image``).
    """
    items = list(sources) if isinstance(sources, (list, tuple)) else [sources]
    if not items:
        raise InputError("no images given")
    batch = [to_pixel_values(load_image(s), res, backend=backend, num_threads=num_threads) for s in items]
    return torch.from_numpy(np.stack(batch))


def _check_rgb(img: Any) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"{img.dtype} array of shape {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ImageError(f"expected an (H, W, 3) uint8 RGB array, got {desc}; use load_image() to convert")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageError(f"image is empty ({img.shape[1]}x{img.shape[0]})")


def _check_side(value: Any, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 0 < value <= _MAX_OUT_SIDE:
        raise InputError(f"{name} must be an int in 1..{_MAX_OUT_SIDE}, got {value!r}")
    return int(value)


def _check_size(size: Any) -> tuple[int, int]:
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise InputError(f"output size must be (width, height), got {size!r}")
    return _check_side(size[0], "output width"), _check_side(size[1], "output height")


def _check_stats(values: Sequence[float], name: str) -> tuple[float, float, float]:
    out = tuple(float(v) for v in values)
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise InputError(f"{name} must be 3 finite numbers (one per RGB channel), got {values!r}")
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------- NumPy reference of Pillow's resampler


def _bicubic_kernel(x: np.ndarray) -> np.ndarray:
    """Keys' cubic kernel, a = -0.5, in Pillow's operation order (float64)."""
    a = -0.5
    x = np.abs(x)
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    outer = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output index: first input index (out,) and int32 fixed-point weights (out, ksize)."""
    # Pillow resizes the float box (0, 0, W, H): scale = float(in) / out. Shrinking widens the kernel.
    scale = float(np.float32(in_size)) / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = math.ceil(support) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)  # astype truncates toward 0, as C
    count = np.minimum((center + support + 0.5).astype(np.int64), in_size) - first
    k = np.arange(ksize)
    valid = k[None, :] < count[:, None]
    w = np.where(valid, _bicubic_kernel((k[None, :] + first[:, None] - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    total = np.zeros(out_size)
    for j in range(ksize):  # left-to-right like Pillow; np.sum's pairwise order rounds differently
        total = total + w[:, j]
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    scaled = w * float(1 << _PRECISION_BITS)
    fixed = np.where(w < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int32)
    return first, fixed


def _resample_axis(img: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """One separable pass along ``axis`` (0 = rows, 1 = columns) of an (H, W, 3) uint8 image."""
    in_size = img.shape[axis]
    first, weights = _taps(in_size, out_size)
    shape = [1, 1, 1]
    shape[axis] = out_size
    acc = np.full((*img.shape[:axis], out_size, *img.shape[axis + 1 :]), 1 << (_PRECISION_BITS - 1), np.int32)
    for k in range(weights.shape[1]):  # int32 cannot overflow: |sum of taps| < 1.25 * 2**22
        src = np.take(img, np.minimum(first + k, in_size - 1), axis=axis)  # clamped taps have weight 0
        acc += src.astype(np.int32) * weights[:, k].reshape(shape)
    return np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)


def _resize_numpy(img: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    h, w = img.shape[:2]
    # The pass order changes the uint8 rounding of the intermediate image. Pillow 13 resamples vertically
    # first when the image loses more than twice as many rows as columns (measured against Pillow 13.0.0;
    # the tests keep checking it). An axis whose size is unchanged is not resampled at all.
    if out_h < h and out_w != w and h - out_h > 2 * (w - out_w):
        return _resample_axis(_resample_axis(img, out_h, axis=0), out_w, axis=1)
    if out_w != w:
        img = _resample_axis(img, out_w, axis=1)
    if out_h != h:
        img = _resample_axis(img, out_h, axis=0)
    return np.ascontiguousarray(img)


# ---------------------------------------------------------------- boxes


def box_xywh_to_resized(
    box: Sequence[float], orig_w: int, orig_h: int, res: int
) -> tuple[float, float, float, float]:
    """Map a pixel box [x, y, w, h] of the original image onto the squashed res x res image.

    The official region loader scales x and w by res / W, y and h by res / H (floats, no rounding).
    """
    values = tuple(float(v) for v in box)
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InputError(f"box must be 4 finite numbers [x, y, w, h], got {box!r}")
    if orig_w <= 0 or orig_h <= 0 or res <= 0:
        raise InputError(f"image size and res must be positive, got {orig_w}x{orig_h} and res={res}")
    x, y, w, h = values
    sx, sy = res / orig_w, res / orig_h
    return (sx * x, sy * y, sx * w, sy * h)
