"""Image decoding (OpenCV) behind header size checks, Pillow-exact bicubic resize + CLIP normalisation, boxes.

The official X-VLM test transform is ``Image.open(p).convert("RGB").resize((res, res), BICUBIC)`` (squash, no
crop) -> ``/255`` -> ``Normalize(CLIP_MEAN, CLIP_STD)``. torch and OpenCV bicubic resizers differ from Pillow's
by up to 64 levels, so Pillow's ``libImaging/Resample.c`` arithmetic is reproduced twice: in C++
(``xvlm_edge._C``, multi-threaded) and in NumPy below (the reference; both are bit-exact with Pillow 13).

Encoded images are decoded only after a small pure-Python reader has taken the pixel count from the format's
header (``_FORMATS``), so a decompression bomb is refused before the decoder allocates anything. Bytes of a
format without a reader are refused, never handed to OpenCV blind; ``IMAGE_SUFFIXES`` lists those formats'
file suffixes for folder scans. Loading an image imports neither torch nor Pillow.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Union

import cv2
import numpy as np

if TYPE_CHECKING:  # Pillow is optional and torch is only needed by preprocess(): named for checkers only
    import PIL.Image
    import torch

from xvlm_edge.errors import BackendUnavailableError, ImageError, InputError

try:
    from xvlm_edge import _C
except ImportError:  # a source checkout without a build: the NumPy reference still works
    _C = None

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGE_SUFFIXES",
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
# larger is refused with ImageError (for encoded images from the header, before decoding).
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

    Encoded images must be in a format of ``IMAGE_SUFFIXES`` (JPEG, PNG, BMP, WebP, TIFF, GIF, PNM/PAM/PFM,
    Sun raster, Radiance HDR, JPEG 2000). Their size is read from the header, and one above ``max_pixels``
    pixels (or a decoder work area above it: TIFF tiles and strips, the JPEG 2000 tile grid) is refused
    before anything is decoded, so a small file cannot make the decoder allocate gigabytes.
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
    fmt, (image, *buffers) = _read_header(data, name)
    if image.width <= 0 or image.height <= 0:
        raise ImageError(f"{name}: {fmt.name} header gives an empty image ({image.width}x{image.height})")
    _check_pixels(image.width, image.height, max_pixels, name=name)
    for buffer in buffers:  # a decoder work area the header makes larger than the image
        _check_pixels(buffer.width, buffer.height, max_pixels, name=name, what=f"{fmt.name} {buffer.what}")
    if fmt.name == "JPEG" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        # libjpeg decodes a truncated scan with a warning and grey fill; an end-of-image marker after the
        # last start-of-scan is the cheap proof that the scan is complete (entropy data never holds 0xFFD9).
        raise ImageError(f"{name}: JPEG data is truncated (no end-of-image marker after the last scan)")
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), _DECODE_FLAGS)
    except cv2.error as e:  # OpenCV's own size assertions, outside the decoders' try blocks
        reason = str(e).strip().splitlines()[-1]
        raise ImageError(f"{name}: cannot decode {fmt.name} image data ({reason})") from e
    if arr is None:
        raise ImageError(f"{name}: cannot decode {fmt.name} image data (corrupt or truncated)")
    return _from_array(arr, bgr=arr.ndim == 3, max_pixels=max_pixels)


def _check_pixels(width: int, height: int, max_pixels: int, *, name: str = "", what: str = "image") -> None:
    if width * height > max_pixels:
        raise ImageError(
            f"{name + ': ' if name else ''}{what} is {width}x{height} = {width * height / 1e6:.1f} megapixels, "
            f"above the limit of {max_pixels / 1e6:g} megapixels",
            hint="downscale the image first or pass a larger max_pixels",
        )


# ---------------------------------------------------------------- header readers (decompression-bomb guard)
#
# One reader per format OpenCV decodes in this build (cv2.getBuildInformation(), "Media I/O"), each taking
# the size the decoder will allocate from the same header fields the decoder reads. A signature is OpenCV's
# own checkSignature test, so the reader that runs is the one for the decoder that will run (a bypass needs
# the two to disagree; tests/test_fuzz.py checks that no decoded image is larger than its header said).
# Refused on purpose: AVIF/HEIF (the decode size lives in the AV1/HEVC sequence header inside the item
# data; with its `ispe` box patched to 8x8 a file still decodes, so the box is not what the decoder sizes
# by), raw WebP bitstreams without a RIFF container, and OpenEXR/JPEG XL/DICOM/GDAL (not built here).


class _Extent(NamedTuple):
    """A size a decoder allocates from the header: the image first, then larger work areas if any."""

    what: str
    width: int
    height: int


class _Header:
    """Bounds-checked reads of one header; every failure is an ImageError naming the source, format and problem."""

    def __init__(self, data: bytes, name: str, fmt: str) -> None:
        self.data, self.name, self.fmt = data, name, fmt

    def error(self, problem: str) -> ImageError:
        return ImageError(f"{self.name}: {self.fmt} header {problem}", hint="the file is corrupt or not a real image")

    def need(self, end: int, what: str) -> None:
        if end > len(self.data):
            raise self.error(f"is truncated: the {what} ends at byte {end}, the data has {len(self.data)} bytes")

    def uint(self, offset: int, size: int, what: str, order: Literal["big", "little"] = "big") -> int:
        self.need(offset + size, what)
        return int.from_bytes(self.data[offset : offset + size], order)

    def match(self, pattern: re.Pattern[bytes], pos: int, what: str) -> re.Match[bytes]:
        m = pattern.match(self.data, pos)
        if m is None:
            self.need(pos + 1, what)
            raise self.error(f"has no valid {what} at byte {pos}")
        return m

    def decimal(self, digits: bytes, what: str, limit: int = 2**31 - 1) -> int:
        """A decimal field the C decoder reads as an int: more than 10 digits or above INT_MAX is refused."""
        value = int(digits) if len(digits.lstrip(b"+-")) <= 10 else limit + 1  # int() of a huge run is slow
        if abs(value) > limit:
            raise self.error(f"{what} {digits[:20].decode('latin-1')} is out of range")
        return value


_WS = rb"[ \t\n\v\f\r]"  # C isspace() in the "C" locale


def _png(h: _Header) -> list[_Extent]:
    # IHDR must be the first chunk (libpng refuses anything else, Apple's CgBI included); APNG frames are
    # checked against it by OpenCV.
    if h.uint(8, 4, "IHDR length") != 13 or h.data[12:16] != b"IHDR":
        raise h.error("does not start with a 13-byte IHDR chunk")
    return [_Extent("image", h.uint(16, 4, "IHDR width"), h.uint(20, 4, "IHDR height"))]


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start of frame, all coding processes
_JPEG_FILL = re.compile(rb"\xff+")


def _jpeg(h: _Header) -> list[_Extent]:
    # libjpeg's read_markers: after SOI, bytes other than a marker are skipped (with a warning), FF fill
    # bytes are skipped, RSTn/TEM stand alone, every other marker carries a 16-bit segment length.
    data, i = h.data, 2
    while True:
        i = data.find(b"\xff", i)
        if i < 0:
            raise h.error("is truncated: no start-of-frame marker before the end of the data")
        i = _JPEG_FILL.match(data, i).end()
        marker = h.uint(i, 1, "marker")
        i += 1
        if marker == 0x00 or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # stuffed byte, RSTn, TEM
            continue
        if marker in (0xD8, 0xD9, 0xDA):
            raise h.error(f"has marker 0x{marker:02X} before the start-of-frame marker")
        length = h.uint(i, 2, "marker segment length")
        if marker in _JPEG_SOF:
            return [_Extent("image", h.uint(i + 5, 2, "SOF width"), h.uint(i + 3, 2, "SOF height"))]
        if length < 2:
            raise h.error(f"has a marker segment of length {length} at byte {i}")
        i += length


_TIFF_INT_TYPES = {1: 1, 3: 2, 4: 4, 16: 8, 6: -1, 8: -2, 9: -4, 17: -8}  # type -> bytes; negative = signed


def _tiff(h: _Header) -> list[_Extent]:
    # The first IFD (the page imdecode reads): ImageWidth, ImageLength, and the strip or tile that OpenCV
    # decodes into a buffer of its own (up to 1 GB, so a 1x1 image with 16384x16384 tiles is a bomb too).
    order: Literal["big", "little"] = "little" if h.data[:2] == b"II" else "big"
    big = h.uint(2, 2, "version", order) == 43
    if big and (h.uint(4, 2, "BigTIFF offset size", order), h.uint(6, 2, "BigTIFF reserved field", order)) != (8, 0):
        raise h.error("is BigTIFF with an offset size other than 8")
    word = 8 if big else 4  # offset / count / inline value size
    ifd = h.uint(8 if big else 4, word, "first IFD offset", order)
    count_size, entry_size = (8, 20) if big else (2, 12)
    count = h.uint(ifd, count_size, "first IFD entry count", order)
    h.need(ifd + count_size + count * entry_size, f"first IFD ({count} entries)")
    fields: dict[int, int] = {}
    for entry in range(ifd + count_size, ifd + count_size + count * entry_size, entry_size):
        tag = h.uint(entry, 2, "IFD tag", order)
        if tag not in (256, 257, 278, 322, 323):  # ImageWidth, ImageLength, RowsPerStrip, TileWidth, TileLength
            continue
        kind, n = h.uint(entry + 2, 2, "IFD field type", order), h.uint(entry + 4, word, "IFD value count", order)
        size = _TIFF_INT_TYPES.get(kind)
        if size is None or n != 1:
            raise h.error(f"tag {tag} is not one integer (type {kind}, count {n})")
        at = entry + 4 + word if abs(size) <= word else h.uint(entry + 4 + word, word, "IFD value offset", order)
        h.need(at + abs(size), f"tag {tag} value")
        value = int.from_bytes(h.data[at : at + abs(size)], order, signed=size < 0)
        if value < 0:
            raise h.error(f"tag {tag} is negative ({value})")
        fields[tag] = max(value, fields.get(tag, 0))  # a repeated tag counts with its largest value
    if 256 not in fields or 257 not in fields:
        raise h.error("first IFD has no ImageWidth or ImageLength")
    width, height = fields[256], fields[257]
    extents = [_Extent("image", width, height)]
    if 322 in fields or 323 in fields:
        extents.append(_Extent("tile", fields.get(322) or width, fields.get(323) or height))
    elif fields.get(278, 0) not in (0, 2**32 - 1) and fields[278] > height:
        extents.append(_Extent("strip", width, fields[278]))
    return extents


def _webp(h: _Header) -> list[_Extent]:
    # libwebp's WebPGetFeatures on the RIFF container: VP8X gives the canvas (libwebp refuses a still image
    # whose bitstream differs from it, and every animation frame must fit in it), else the first chunk is
    # the bitstream: VP8 (14-bit sizes after the key-frame start code) or VP8L (14-bit size - 1 fields).
    chunk = h.data[12:16]
    if chunk == b"VP8X":
        return [_Extent("image", h.uint(24, 3, "VP8X canvas width", "little") + 1, h.uint(27, 3, "VP8X canvas height", "little") + 1)]
    if chunk == b"VP8 ":
        if h.uint(20, 3, "VP8 frame tag", "little") & 1 or h.data[23:26] != b"\x9d\x01\x2a":
            h.need(26, "VP8 frame header")
            raise h.error("first VP8 frame is not a key frame")
        return [_Extent("image", h.uint(26, 2, "VP8 width", "little") & 0x3FFF, h.uint(28, 2, "VP8 height", "little") & 0x3FFF)]
    if chunk == b"VP8L":
        if h.uint(20, 1, "VP8L signature") != 0x2F:
            raise h.error("has a VP8L chunk without the 0x2F signature byte")
        bits = h.uint(21, 4, "VP8L size fields", "little")
        return [_Extent("image", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)]
    h.need(16, "first chunk")
    raise h.error(f"first chunk {chunk!r} is not VP8X, VP8 or VP8L")


def _gif(h: _Header) -> list[_Extent]:
    # OpenCV allocates the logical screen and asserts that each frame fits in it; the first image descriptor
    # (after the global colour table and any extension blocks) is read as well.
    if h.data[3:6] not in (b"87a", b"89a"):
        h.need(6, "version")
        raise h.error(f"version {h.data[3:6]!r} is not 87a or 89a")
    screen = _Extent("image", h.uint(6, 2, "screen width", "little"), h.uint(8, 2, "screen height", "little"))
    flags = h.uint(10, 1, "screen flags")
    i = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while True:
        block = h.uint(i, 1, "block introducer")
        if block == 0x2C:  # image descriptor: left, top, width, height
            left, top = h.uint(i + 1, 2, "frame left", "little"), h.uint(i + 3, 2, "frame top", "little")
            width, height = h.uint(i + 5, 2, "frame width", "little"), h.uint(i + 7, 2, "frame height", "little")
            return [screen, _Extent("first frame", left + width, top + height)]
        if block != 0x21:
            raise h.error(f"has block 0x{block:02X} at byte {i} before the first image (expected 0x21 or 0x2C)")
        i += 2  # extension introducer and label, then data sub-blocks up to a zero length
        while (length := h.uint(i, 1, "extension sub-block")) != 0:
            i += length + 1
        i += 1


def _bmp(h: _Header) -> list[_Extent]:
    # OpenCV's BmpDecoder: a DIB header of 12 bytes (OS/2, 16-bit sizes) or >= 36 (32-bit signed sizes; a
    # negative height means top-down rows).
    size = h.uint(14, 4, "DIB header size", "little")
    if size == 12:
        return [_Extent("image", h.uint(18, 2, "width", "little"), h.uint(20, 2, "height", "little"))]
    if not 36 <= size < 2**31:
        raise h.error(f"has an unsupported DIB header size {size}")
    h.need(26, "DIB width and height")
    width, height = (int.from_bytes(h.data[k : k + 4], "little", signed=True) for k in (18, 22))
    return [_Extent("image", width, abs(height))]


_PNM_SKIP = re.compile(rb"(?:" + _WS + rb"|#[^\n\r]*[\n\r])*")  # whitespace and '#' comments to the line end
_PNM_NUMBER = re.compile(rb"\d{1,11}")


def _pnm(h: _Header) -> list[_Extent]:
    # OpenCV's ReadNumber: skip whitespace and comments, then decimal digits up to INT_MAX.
    pos, sizes = 2, []
    for what in ("width", "height"):
        pos = _PNM_SKIP.match(h.data, pos).end()
        m = h.match(_PNM_NUMBER, pos, what)
        sizes.append(h.decimal(m.group(), what))
        pos = m.end()
    return [_Extent("image", *sizes)]


_PAM_LINE = re.compile(rb"" + _WS + rb"*(?:#[^\n\r]*[\n\r]|([^ \t\n\v\f\r]{1,8})(" + _WS + rb"))")
_PAM_VALUE = re.compile(rb"" + _WS + rb"*([^\n\r]{0,255})[\n\r]")
_PAM_INT = re.compile(rb"-?\d+")


def _pam(h: _Header) -> list[_Extent]:
    # OpenCV's PAMDecoder: "P7" + newline, then "IDENT value" lines up to ENDHDR; WIDTH and HEIGHT once each.
    if h.data[2:3] not in (b"\n", b"\r"):
        raise h.error("has no line break after P7")
    pos, sizes = 3, {}
    while True:
        m = h.match(_PAM_LINE, pos, "header line")
        pos, ident = m.end(), m.group(1)
        if ident is None:  # a comment
            continue
        if ident == b"ENDHDR":
            break
        if ident not in (b"WIDTH", b"HEIGHT", b"DEPTH", b"MAXVAL", b"TUPLTYPE"):
            raise h.error(f"has an unknown field {ident!r}")
        value = b""
        if m.group(2) not in (b"\n", b"\r"):
            v = h.match(_PAM_VALUE, pos, f"{ident.decode()} value")
            pos, value = v.end(), v.group(1).rstrip(b" \t\v\f")
        if ident in (b"WIDTH", b"HEIGHT"):
            if ident in sizes or not _PAM_INT.fullmatch(value):
                raise h.error(f"has a repeated or non-integer {ident.decode()} field")
            sizes[ident] = h.decimal(value, ident.decode())
    if len(sizes) != 2:
        raise h.error("has no WIDTH or HEIGHT field before ENDHDR")
    return [_Extent("image", sizes[b"WIDTH"], sizes[b"HEIGHT"])]


_PFM_TOKEN = re.compile(rb"([^ \t\n\v\f\r]{0,32})" + _WS)
_ATOI = re.compile(rb"[+-]?\d+")


def _pfm(h: _Header) -> list[_Extent]:
    # OpenCV's PFMDecoder: "PF"/"Pf" + '\n', then tokens each ended by one whitespace byte, read with atoi()
    # (no skipping: a second space makes an empty token, which atoi reads as 0).
    if h.data[2:3] != b"\n":
        raise h.error("has no line break after the PF/Pf magic")
    pos, sizes = 3, []
    for what in ("width", "height"):
        m = h.match(_PFM_TOKEN, pos, what)
        number = _ATOI.match(m.group(1))
        sizes.append(h.decimal(number.group(), what) if number else 0)
        pos = m.end()
    return [_Extent("image", *sizes)]


def _sun(h: _Header) -> list[_Extent]:
    return [_Extent("image", h.uint(4, 4, "width"), h.uint(8, 4, "height"))]


_HDR_SIZE = re.compile(rb"-Y" + _WS + rb"*([+-]?\d+)" + _WS + rb"*\+X" + _WS + rb"*([+-]?\d+)")


def _hdr(h: _Header) -> list[_Extent]:
    # OpenCV's RGBE_ReadHeader reads with fgets(buf, 128): a line longer than 127 bytes is read in pieces,
    # and a piece that is just "\n" ends the header. Lines are cut the same way here, so a long line cannot
    # hide a second resolution string from this reader.
    def fgets(pos: int) -> tuple[bytes, int]:
        if pos >= len(h.data):
            raise h.error("is truncated before the resolution line")
        newline = h.data.find(b"\n", pos, pos + 127)
        end = newline + 1 if newline >= 0 else min(pos + 127, len(h.data))
        return h.data[pos:end], end

    _, pos = fgets(0)  # "#?RADIANCE" / "#?RGBE"
    has_format = False
    while True:
        line, pos = fgets(pos)
        if line[:1] == b"\n":
            break
        has_format |= line.split(b"\0")[0] == b"FORMAT=32-bit_rle_rgbe\n"
    if not has_format:
        raise h.error("has no FORMAT=32-bit_rle_rgbe line")
    line, pos = fgets(pos)
    m = _HDR_SIZE.match(line.split(b"\0")[0])
    if m is None:
        raise h.error("has no '-Y height +X width' resolution line")
    return [_Extent("image", h.decimal(m.group(2), "width"), h.decimal(m.group(1), "height"))]


# OpenJPEG keeps about 4 KB of coding parameters per tile and component, allocated from the SIZ marker
# before any pixel: 255 x 257 pixels in 1 x 1 tiles take 800 MB. The tile grid is therefore counted as
# 64 x 64 pixels per tile, about what that bookkeeping costs for a 3-component image.
_J2K_TILE_COST = 64


def _j2k(h: _Header, pos: int = 0) -> list[_Extent]:
    # The SIZ marker segment that OpenJPEG reads (image size = Xsiz - XOsiz by Ysiz - YOsiz).
    if h.data[pos : pos + 4] != b"\xff\x4f\xff\x51":
        h.need(pos + 4, "SOC and SIZ markers")
        raise h.error(f"has no SOC + SIZ markers at byte {pos}")
    xsiz, ysiz, x0, y0, xt, yt, xt0, yt0 = (h.uint(pos + 8 + 4 * k, 4, "SIZ image and tile fields") for k in range(8))
    components = h.uint(pos + 40, 2, "SIZ component count")
    if not (x0 < xsiz and y0 < ysiz and xt > 0 and yt > 0 and xt0 <= x0 and yt0 <= y0):
        raise h.error(f"has an inconsistent SIZ marker (image {xsiz}x{ysiz} at {x0},{y0}, tiles {xt}x{yt} at {xt0},{yt0})")
    if not 1 <= components <= 4:
        raise h.error(f"has {components} components; 1 to 4 are supported")
    tiles_x, tiles_y = -(-(xsiz - xt0) // xt), -(-(ysiz - yt0) // yt)
    grid = f"tile grid of {tiles_x}x{tiles_y} tiles ({_J2K_TILE_COST}x{_J2K_TILE_COST} pixels each)"
    return [_Extent("image", xsiz - x0, ysiz - y0), _Extent(grid, tiles_x * _J2K_TILE_COST, tiles_y * _J2K_TILE_COST)]


def _jp2(h: _Header) -> list[_Extent]:
    # Top-level boxes up to the contiguous codestream box ('jp2c'), whose SIZ marker OpenJPEG decodes by.
    pos = 0
    while pos < len(h.data):
        length, kind, start = h.uint(pos, 4, "box length"), h.data[pos + 4 : pos + 8], pos + 8
        if length == 1:
            length, start = h.uint(pos + 8, 8, "box extended length"), pos + 16
        elif length == 0:
            length = len(h.data) - pos
        if length < start - pos:
            raise h.error(f"has a box of length {length} at byte {pos}")
        if kind == b"jp2c":
            return _j2k(h, start)
        pos += length
    raise h.error("has no codestream (jp2c) box")


@dataclass(frozen=True)
class _Format:
    name: str
    signature: re.Pattern[bytes]  # OpenCV's checkSignature for the decoder, matched at byte 0
    suffixes: tuple[str, ...]
    read: Callable[[_Header], list[_Extent]]


# The signatures differ in their first two bytes, so the order is only that of the messages. OpenCV tries
# its AVIF decoder before most of these (loadsave.cpp), which is why ISO-BMFF data is refused first.
_FORMATS = (
    _Format("JPEG", re.compile(rb"\xff\xd8\xff"), (".jpg", ".jpeg", ".jpe"), _jpeg),
    _Format("PNG", re.compile(rb"\x89PNG\r\n\x1a\n"), (".png",), _png),
    _Format("BMP", re.compile(rb"BM"), (".bmp", ".dib"), _bmp),
    _Format("WebP", re.compile(rb"RIFF.{4}WEBP", re.DOTALL), (".webp",), _webp),
    _Format("TIFF", re.compile(rb"II\*\x00|MM\x00\*|II\+\x00|MM\x00\+"), (".tif", ".tiff"), _tiff),
    _Format("GIF", re.compile(rb"GIF"), (".gif",), _gif),
    _Format("PNM", re.compile(rb"P[1-6]" + _WS), (".pbm", ".pgm", ".ppm", ".pnm"), _pnm),
    _Format("PAM", re.compile(rb"P7" + _WS), (".pam",), _pam),
    _Format("PFM", re.compile(rb"P[fF]" + _WS), (".pfm",), _pfm),
    _Format("Sun raster", re.compile(rb"\x59\xa6\x6a\x95"), (".sr", ".ras"), _sun),
    _Format("Radiance HDR", re.compile(rb"#\?(?:RGBE|RADIANCE)"), (".hdr", ".pic"), _hdr),
    _Format("JPEG 2000", re.compile(rb"\x00\x00\x00\x0cjP  \r\n\x87\n"), (".jp2",), _jp2),
    _Format("JPEG 2000 codestream", re.compile(rb"\xff\x4f\xff\x51"), (".j2k", ".j2c"), _j2k),
)

# File suffixes of exactly the formats load_image decodes; folder scans (the CLI, INT8 calibration) use these.
IMAGE_SUFFIXES = tuple(suffix for fmt in _FORMATS for suffix in fmt.suffixes)


def _read_header(data: bytes, name: str) -> tuple[_Format, list[_Extent]]:
    """The format of encoded bytes and the sizes its header makes the decoder allocate (image first)."""
    if data[4:8] == b"ftyp":  # ISO-BMFF (AVIF, HEIF): OpenCV's AVIF decoder would claim it before the rest
        raise ImageError(
            f"{name}: cannot decode image data: AVIF/HEIF is not supported (its size is not in a header that "
            "can be checked before decoding)",
            hint="convert the image to PNG or JPEG",
        )
    for fmt in _FORMATS:
        if fmt.signature.match(data):
            return fmt, fmt.read(_Header(data, name, fmt.name))
    raise ImageError(
        f"{name}: cannot decode image data: not a supported image format (supported: "
        f"{', '.join(fmt.name for fmt in _FORMATS)})",
        hint="convert the image to PNG or JPEG",
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
    import torch  # here, not at the top: decoding and resizing an image never pay torch's import

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
