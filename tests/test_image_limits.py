"""Decompression bombs and header checks: every format load_image decodes is sized from its header first.

Per format: a small valid image decodes, the same file with its size fields claiming 12000 x 12000 (144
megapixels, above MAX_PIXELS yet below OpenCV's own 2**30 limit) is refused before OpenCV is called, and every
prefix that cuts the header short is an ImageError naming the format. The TIFF and WebP bombs are real: a
few kilobytes that OpenCV alone decodes into more than a gigabyte (shown under -m slow). Their peak memory
through load_image is measured with resource.getrusage in a child process, so this process's does not count.
"""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from xvlm_edge import preprocess as P
from xvlm_edge.errors import ImageError

H, W = 48, 64  # every sample; JPEG 2000 needs more than a few pixels per side to encode
BOMB = 12000  # claimed side of every bomb: 144 MP, above MAX_PIXELS (100 MP), below OpenCV's 2**30 pixels
BOMB_MESSAGE = re.escape(f"{BOMB}x{BOMB} = 144.0 megapixels, above the limit of 100 megapixels")
PEAK_RSS_LIMIT_MB = 200


def rgb(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def cv2_encode(ext: str, img: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok, ext
    return buf.tobytes()


def put(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


# ---------------------------------------------------------------- hand-built files


def tiff_bytes(
    img: np.ndarray | None,
    width: int,
    height: int,
    *,
    order: str = "<",
    big: bool = False,
    rows_per_strip: int = 16,
    tile: tuple[int, int] | None = None,
) -> bytes:
    """A deflate-compressed RGB TIFF (classic or BigTIFF, either byte order) written field by field.

    With ``img`` None every strip is rows of zeros and all strip offsets point at one compressed strip, so a
    12000 x 12000 image (432 MB decoded) takes a few kilobytes: a real decompression bomb. ``tile`` only
    writes TileWidth/TileLength fields (for header tests; there is no tile data).
    """
    word, count_fmt, entry_size = (8, "Q", 20) if big else (4, "I", 12)
    n_strips = -(-height // rows_per_strip)
    if img is None:
        full = zlib.compress(bytes(width * rows_per_strip * 3), 9)
        last = zlib.compress(bytes(width * (height - (n_strips - 1) * rows_per_strip) * 3), 9)
        blobs = [full, last]
        strip_blob = [0] * (n_strips - 1) + [1]
    else:
        blobs = [zlib.compress(img[y : y + rows_per_strip].tobytes(), 9) for y in range(0, height, rows_per_strip)]
        strip_blob = list(range(n_strips))
    long_type, long_fmt = (16, "Q") if big else (4, "I")
    entries: list[tuple[int, int, str, list[int]]] = [  # tag, type, struct code, values
        (256, 4, "I", [width]),
        (257, 4, "I", [height]),
        (258, 3, "H", [8, 8, 8]),
        (259, 3, "H", [8]),  # Adobe deflate
        (262, 3, "H", [2]),  # RGB
        (273, long_type, long_fmt, [0] * n_strips),  # StripOffsets, filled in below
        (277, 3, "H", [3]),
        (278, 4, "I", [rows_per_strip]),
        (279, 4, "I", [len(blobs[b]) for b in strip_blob]),
        (284, 3, "H", [1]),
    ]
    if tile is not None:
        entries += [(322, 4, "I", [tile[0]]), (323, 4, "I", [tile[1]])]
    header_size = 16 if big else 8
    ifd_size = (8 if big else 2) + len(entries) * entry_size + word
    area_start = header_size + ifd_size
    area_size = sum(-(-struct.calcsize(order + code * len(v)) // 2) * 2 for _, _, code, v in entries if struct.calcsize(code * len(v)) > word)
    blob_offsets, at = [], area_start + area_size
    for blob in blobs:
        blob_offsets.append(at)
        at += len(blob)
    entries[5] = (273, long_type, long_fmt, [blob_offsets[b] for b in strip_blob])

    out = bytearray(order.encode().replace(b"<", b"II").replace(b">", b"MM"))
    out += struct.pack(order + "H", 43 if big else 42)
    out += struct.pack(order + "HHQ", 8, 0, header_size) if big else struct.pack(order + "I", header_size)
    area = bytearray()
    out += struct.pack(order + ("Q" if big else "H"), len(entries))
    for tag, kind, code, values in entries:
        raw = struct.pack(order + code * len(values), *values)
        out += struct.pack(order + "HH" + count_fmt, tag, kind, len(values))
        if len(raw) <= word:
            out += raw.ljust(word, b"\0")
        else:
            out += struct.pack(order + count_fmt, area_start + len(area))
            area += raw + b"\0" * (len(raw) % 2)
    out += bytes(word)  # no next IFD
    assert len(out) == area_start and len(area) == area_size
    return bytes(out + area + b"".join(blobs))


def _riff_chunk(fourcc: bytes, payload: bytes) -> bytes:
    return fourcc + len(payload).to_bytes(4, "little") + payload + b"\0" * (len(payload) % 2)


def webp_animation(canvas_w: int, canvas_h: int) -> bytes:
    """An animated WebP: a canvas of any size and one 1 x 1 lossless frame. WebPAnimDecoder allocates and
    clears the whole RGBA canvas before drawing the frame, so a large canvas is a real bomb."""
    frame = cv2_encode(".webp", np.zeros((1, 1, 3), np.uint8))  # lossless by default: RIFF + one VP8L chunk
    assert frame[12:16] == b"VP8L"
    vp8x = _riff_chunk(b"VP8X", bytes([0x02, 0, 0, 0]) + (canvas_w - 1).to_bytes(3, "little") + (canvas_h - 1).to_bytes(3, "little"))
    anim = _riff_chunk(b"ANIM", bytes(6))  # background colour, loop count
    # x/2, y/2, width - 1, height - 1 (24 bits each), duration (24 bits), flags, then the frame's bitstream chunk
    anmf = _riff_chunk(b"ANMF", bytes(12) + (100).to_bytes(3, "little") + bytes(1) + frame[12:])
    body = b"WEBP" + vp8x + anim + anmf
    return b"RIFF" + len(body).to_bytes(4, "little") + body


def bmp_os2(img: np.ndarray) -> bytes:
    """A 24-bit BMP with the 12-byte OS/2 BITMAPCOREHEADER (16-bit sizes), bottom-up BGR rows padded to 4."""
    h, w = img.shape[:2]
    stride = (w * 3 + 3) & ~3
    rows = b"".join(img[y, :, ::-1].tobytes().ljust(stride, b"\0") for y in range(h - 1, -1, -1))
    return b"BM" + struct.pack("<IHHI", 26 + len(rows), 0, 0, 26) + struct.pack("<IHHHH", 12, w, h, 1, 24) + rows


def j2k_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG2000", no_jp2=True)
    return buf.getvalue()


def webp_vp8x(img: np.ndarray) -> bytes:
    """A still VP8X file (alpha forces the extended format): VP8X + ALPH + VP8."""
    buf = io.BytesIO()
    Image.fromarray(np.dstack([img, np.full(img.shape[:2], 200, np.uint8)])).save(buf, "WEBP", quality=90)
    assert buf.getvalue()[12:16] == b"VP8X"
    return buf.getvalue()


# ---------------------------------------------------------------- one sample per format and variant


@dataclass(frozen=True)
class Sample:
    """A small valid file and the same file with its header claiming BOMB x BOMB."""

    id: str
    data: bytes
    bomb: bytes
    suffix: str


def _siz(data: bytes) -> int:
    return data.index(b"\xff\x4f\xff\x51")


def _sof(data: bytes) -> int:
    return data.index(b"\xff\xc0")


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) >= 1, (old, data[:64])
    return data.replace(old, new, 1)


def samples(h: int = H, w: int = W) -> list[Sample]:
    """One valid (h, w) file per format and variant (tests/test_fuzz.py seeds its image fuzzer with these)."""
    img = rgb(h, w)
    gray = img[:, :, 0].copy()
    bgr = img[:, :, ::-1].copy()  # OpenCV encodes BGR: these files decode to rgb()
    half = (bgr // 2).astype(np.float32) / 255
    png, jpeg = cv2_encode(".png", bgr), cv2_encode(".jpg", bgr)
    bmp = cv2_encode(".bmp", bgr)
    stride = (w * 3 + 3) & ~3
    top_down = put(bmp[:54], 22, "<i", -h) + b"".join(bmp[54:][y * stride : (y + 1) * stride] for y in range(h - 1, -1, -1))
    webp_lossless, webp_lossy, webp_ext = cv2_encode(".webp", bgr), cv2_encode(".webp", bgr, cv2.IMWRITE_WEBP_QUALITY, 90), webp_vp8x(img)
    vp8l_bits = int.from_bytes(webp_lossless[21:25], "little") & ~((1 << 28) - 1)
    gif, os2 = cv2_encode(".gif", bgr), bmp_os2(img)
    ppm, pgm, pbm, pam = (cv2_encode(e, a) for e, a in ((".ppm", bgr), (".pgm", gray), (".pbm", gray), (".pam", bgr)))
    pfm, hdr, sun = cv2_encode(".pfm", half), cv2_encode(".hdr", half), cv2_encode(".sr", bgr)
    jp2, j2k = cv2_encode(".jp2", bgr), j2k_bytes(img)
    size_text = f"{w} {h}".encode()
    bomb_text = f"{BOMB} {BOMB}".encode()
    return [
        Sample("png", png, put(png, 16, ">II", BOMB, BOMB), ".png"),
        Sample("jpeg", jpeg, put(jpeg, _sof(jpeg) + 5, ">HH", BOMB, BOMB), ".jpg"),
        Sample("bmp", bmp, put(bmp, 18, "<ii", BOMB, BOMB), ".bmp"),
        Sample("bmp-top-down", top_down, put(top_down, 18, "<ii", BOMB, -BOMB), ".bmp"),
        Sample("bmp-os2", os2, put(os2, 18, "<HH", BOMB, BOMB), ".dib"),
        Sample("webp-vp8l", webp_lossless, put(webp_lossless, 21, "<I", vp8l_bits | (BOMB - 1) | (BOMB - 1) << 14), ".webp"),
        Sample("webp-vp8", webp_lossy, put(webp_lossy, 26, "<HH", BOMB, BOMB), ".webp"),
        Sample("webp-vp8x", webp_ext, put(webp_ext, 24, "<HBHB", (BOMB - 1) & 0xFFFF, (BOMB - 1) >> 16, (BOMB - 1) & 0xFFFF, (BOMB - 1) >> 16), ".webp"),
        Sample("webp-animated", webp_animation(w, h), webp_animation(BOMB, BOMB), ".webp"),
        Sample("tiff-le", tiff_bytes(img, w, h), tiff_bytes(None, BOMB, BOMB, rows_per_strip=64), ".tif"),
        Sample("tiff-be", tiff_bytes(img, w, h, order=">"), tiff_bytes(None, BOMB, BOMB, order=">", rows_per_strip=64), ".tiff"),
        Sample("bigtiff-le", tiff_bytes(img, w, h, big=True), tiff_bytes(None, BOMB, BOMB, big=True, rows_per_strip=64), ".tif"),
        Sample("bigtiff-be", tiff_bytes(img, w, h, order=">", big=True), tiff_bytes(None, BOMB, BOMB, order=">", big=True, rows_per_strip=64), ".tif"),
        Sample("tiff-opencv", cv2_encode(".tif", bgr), b"", ".tif"),
        Sample("gif", gif, put(gif, 6, "<HH", BOMB, BOMB), ".gif"),
        Sample("ppm", ppm, _replace_once(ppm, size_text, bomb_text), ".ppm"),
        Sample("pgm", pgm, _replace_once(pgm, size_text, bomb_text), ".pgm"),
        Sample("pbm", pbm, _replace_once(pbm, size_text, bomb_text), ".pbm"),
        Sample("pam", pam, _replace_once(_replace_once(pam, b"WIDTH %d" % w, b"WIDTH 12000"), b"HEIGHT %d" % h, b"HEIGHT 12000"), ".pam"),
        Sample("pfm", pfm, _replace_once(pfm, size_text, bomb_text), ".pfm"),
        Sample("hdr", hdr, _replace_once(hdr, b"-Y %d +X %d" % (h, w), b"-Y 12000 +X 12000"), ".hdr"),
        Sample("sun-raster", sun, put(sun, 4, ">II", BOMB, BOMB), ".ras"),
        Sample("jp2", jp2, put(jp2, _siz(jp2) + 8, ">II", BOMB, BOMB), ".jp2"),
        Sample("j2k", j2k, put(j2k, 8, ">II", BOMB, BOMB), ".j2k"),
    ]


SAMPLES = samples()
BOMBS = [s for s in SAMPLES if s.bomb]


def format_of(data: bytes) -> P._Format:
    return next(fmt for fmt in P._FORMATS if fmt.signature.match(data))


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if OpenCV is asked to decode: a refusal must come from the header alone."""

    def refuse(*_: object) -> None:
        pytest.fail("cv2.imdecode was called; the header check should have refused first")

    monkeypatch.setattr(cv2, "imdecode", refuse)


# ---------------------------------------------------------------- per format


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.id)
def test_valid_small_image_decodes(sample: Sample, tmp_path: Path) -> None:
    out = P.load_image(sample.data)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    path = tmp_path / f"image{sample.suffix}"
    path.write_bytes(sample.data)
    np.testing.assert_array_equal(P.load_image(path), out)
    assert sample.suffix in P.IMAGE_SUFFIXES


def test_lossless_samples_keep_their_pixels() -> None:
    """The hand-built files are what they claim: TIFF in both byte orders, BigTIFF, a top-down BMP.

    (OpenCV 5.1 decodes a 12-byte-header OS/2 BMP as gray: its BmpDecoder never sets `iscolor` on that path.)
    """
    expected = rgb()
    for sample in SAMPLES:
        if sample.id.startswith(("tiff", "bigtiff", "bmp", "png", "webp-vp8l", "ppm", "pam", "sun", "j2k")) and sample.id != "bmp-os2":
            np.testing.assert_array_equal(P.load_image(sample.data), expected, err_msg=sample.id)


@pytest.mark.parametrize("sample", BOMBS, ids=lambda s: s.id)
def test_bomb_is_refused_from_its_header(sample: Sample, no_decoding: None) -> None:
    with pytest.raises(ImageError, match=BOMB_MESSAGE):
        P.load_image(sample.bomb)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.id)
def test_truncated_header_names_the_format(sample: Sample, no_decoding: None) -> None:
    """Every prefix shorter than the header is an ImageError naming the format, never an IndexError or struct.error."""
    fmt = format_of(sample.data)

    def header_reads(prefix: bytes) -> bool:
        try:
            P._read_header(prefix, "image bytes")
        except ImageError:
            return False
        return True

    header_end = next(k for k in range(len(sample.data) + 1) if header_reads(sample.data[:k]))
    start = fmt.signature.match(sample.data).end()
    assert header_end > start
    for k in range(start, header_end):
        with pytest.raises(ImageError, match=re.escape(f"{fmt.name} header")):
            P.load_image(sample.data[:k])


# ---------------------------------------------------------------- work areas larger than the image


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (tiff_bytes(None, 64, 48, tile=(16384, 16384)), "TIFF tile is 16384x16384 = 268.4 megapixels"),
        (tiff_bytes(None, 200, 48, rows_per_strip=1_000_000), "TIFF strip is 200x1000000 = 200.0 megapixels"),
        (put(j2k_bytes(rgb()), 8, ">IIIIII", 255, 257, 0, 0, 1, 1), "tile grid of 255x257 tiles"),
    ],
)
def test_decoder_work_area_is_checked(data: bytes, message: str, no_decoding: None) -> None:
    """A 64x48 TIFF with 16384x16384 tiles makes OpenCV allocate a 1 GB tile buffer; 255x257 JPEG 2000
    pixels in 1x1 tiles make OpenJPEG allocate 800 MB of per-tile state. Both are refused from the header."""
    with pytest.raises(ImageError, match=re.escape(message)):
        P.load_image(data)


def test_gif_frame_outside_the_screen_is_checked(no_decoding: None) -> None:
    gif = cv2_encode(".gif", rgb())
    descriptor = gif.index(b"\x2c\x00\x00\x00\x00")  # the first image descriptor at (0, 0)
    with pytest.raises(ImageError, match=re.escape("GIF first frame is 12000x12000")):
        P.load_image(put(gif, descriptor + 5, "<HH", BOMB, BOMB))


def test_zero_size_header_is_refused(no_decoding: None) -> None:
    with pytest.raises(ImageError, match=re.escape("PNG header gives an empty image (0x48)")):
        P.load_image(put(cv2_encode(".png", rgb()), 16, ">I", 0))


# ---------------------------------------------------------------- formats without a reader


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (cv2_encode(".avif", rgb()), "AVIF/HEIF is not supported"),
        (cv2_encode(".webp", rgb())[12 + 8 :], "not a supported image format"),  # a raw VP8L bitstream, which OpenCV would decode
        (b"qoif" + bytes(20), "not a supported image format"),
        (b"\x00\x00\x02\x00" + bytes(40), "not a supported image format"),  # TGA-like
    ],
)
def test_formats_without_a_reader_are_refused(data: bytes, message: str, no_decoding: None) -> None:
    with pytest.raises(ImageError, match=message) as info:
        P.load_image(data)
    assert "cannot decode" in str(info.value)
    if "supported image format" in message:
        assert "supported: JPEG, PNG, BMP, WebP, TIFF, GIF" in str(info.value)


def test_every_codec_opencv_has_here_is_covered() -> None:
    """The Media I/O codecs of this OpenCV build each have a reader, or are refused on purpose; a new codec
    (an OpenCV upgrade that adds OpenEXR or JPEG XL) fails here until it gets a reader."""
    info = cv2.getBuildInformation()
    media = info[info.index("Media I/O") : info.index("Video I/O")]
    built = {m.group(1).strip() for m in re.finditer(r"^\s{4}(\w[\w ]*?):\s+(?!NO\b)\S", media, re.MULTILINE)}
    readers = {"JPEG": "JPEG", "PNG": "PNG", "TIFF": "TIFF", "WEBP": "WebP", "GIF": "GIF", "HDR": "Radiance HDR",
               "SUNRASTER": "Sun raster", "PXM": "PNM", "PFM": "PFM", "JPEG 2000": "JPEG 2000"}  # fmt: skip
    refused = {"AVIF"}
    not_codecs = {"ZLib"}
    assert built - not_codecs <= readers.keys() | refused, built
    assert {readers[codec] for codec in built & readers.keys()} <= {fmt.name for fmt in P._FORMATS}
    assert {".gif", ".webp", ".tif", ".tiff", ".jpg", ".jpeg", ".png", ".bmp"} <= set(P.IMAGE_SUFFIXES)


# ---------------------------------------------------------------- peak memory of the real bombs

_RSS_CHILD = """
import json, os, resource, sys, traceback

# ru_maxrss survives exec: a process started by pytest (which holds torch) starts at pytest's peak. A process
# forked from this fresh interpreter starts at its own small one, so the load runs in a fork.
pid = os.fork()
if pid:
    sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
try:
    import cv2, numpy
    from xvlm_edge.errors import ImageError
    from xvlm_edge.preprocess import load_image

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.argv[2] == "load_image":
        try:
            load_image(sys.argv[1])
            outcome = "decoded"
        except ImageError as e:
            outcome = str(e)
    else:  # the bare decoder, no header check: what the bomb costs without xvlm_edge
        img = cv2.imdecode(numpy.fromfile(sys.argv[1], numpy.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
        outcome = "refused" if img is None else "decoded %dx%d" % (img.shape[1], img.shape[0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sys.stdout.write(json.dumps({"baseline_mb": round(baseline / 1024, 1), "peak_mb": round(peak / 1024, 1),
                                 "outcome": outcome, "torch_imported": "torch" in sys.modules}))
    sys.stdout.flush()
    os._exit(0)
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
"""


def peak_rss(path: Path, how: str) -> dict:
    """Run one load in a fresh interpreter; ru_maxrss (KiB on Linux) is that process's peak resident set."""
    result = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(path), how], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


REAL_BOMBS = {
    "tiff": lambda: tiff_bytes(None, BOMB, BOMB, rows_per_strip=64),
    "webp": lambda: webp_animation(BOMB, BOMB),
}


@pytest.mark.parametrize("kind", sorted(REAL_BOMBS))
def test_real_bomb_is_refused_with_low_peak_memory(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"bomb.{kind}"
    path.write_bytes(REAL_BOMBS[kind]())
    assert path.stat().st_size < 16 * 1024  # a few kilobytes that decode to 432 MB
    report = peak_rss(path, "load_image")
    assert re.search(BOMB_MESSAGE, report["outcome"]), report
    assert report["peak_mb"] < PEAK_RSS_LIMIT_MB, report
    assert not report["torch_imported"], "loading an image should not import torch"


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(REAL_BOMBS))
def test_bombs_are_real_without_the_header_check(kind: str, tmp_path: Path) -> None:
    """The same files through cv2.imdecode alone: OpenCV decodes them, at a peak of more than 400 MB."""
    path = tmp_path / f"bomb.{kind}"
    path.write_bytes(REAL_BOMBS[kind]())
    report = peak_rss(path, "cv2")
    assert report["outcome"] == f"decoded {BOMB}x{BOMB}" and report["peak_mb"] > 400, report
