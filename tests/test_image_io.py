"""The SDK's image input (csrc/core/image_io.cpp, png_decode.cpp, jpeg_decode.cpp) against the Python package.

csrc/tests/test_image_io.cpp is driven in batch mode: it decodes files (or converts raw buffers) with the C++
code and writes raw RGB, which must equal `xvlm_edge.preprocess.load_image` (OpenCV's decoders) byte for
byte: the shipped examples, PNGs of every colour type, bit depth and interlacing (written here chunk by
chunk, and by OpenCV and Pillow), JPEGs of every subsampling, progressive, restart intervals, gray and CMYK,
EXIF orientations 1..8, and RGB/BGR/RGBA/BGRA/gray/NV12 buffers against cv2.cvtColor. Bad input (truncated,
corrupt, empty, wrong magic, decompression bombs, bad strides, odd NV12 sizes) must be refused with an
ImageError naming the file and the problem, bombs without allocating. The libFuzzer harness of the decoder
(csrc/tests/fuzz_image.cpp) runs in tests/test_cpp_fuzzers.py from the PNGs and JPEGs made here.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from _cpp_build import REPO, build_cpp
from PIL import Image
from test_image_limits import cv2_encode, put, samples

from xvlm_edge.errors import ImageError
from xvlm_edge.preprocess import load_image

EXAMPLES = sorted((REPO / "xvlm_edge" / "assets" / "examples").glob("*.png"))


@dataclass
class Decoded:
    """One driver answer: the RGB pixels, or the refusal message."""

    pixels: np.ndarray | None
    error: str | None


class Driver:
    """csrc/tests/test_image_io.cpp in batch mode: one process answers a whole list of commands."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary, self.workdir = binary, workdir
        self.count = 0

    def run(self, commands: list[list[str]]) -> list[str]:
        text = "".join("\t".join(c) + "\n" for c in commands)
        done = subprocess.run([self.binary, "batch"], input=text, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        answers = done.stdout.splitlines()
        assert len(answers) == len(commands), done.stdout + done.stderr
        return answers

    def _out(self) -> Path:
        self.count += 1
        return self.workdir / f"out-{self.count}.rgb"

    def _read(self, answer: str, out: Path) -> Decoded:
        if answer.startswith("error "):
            return Decoded(None, answer[len("error ") :])
        _, width, height = answer.split()
        return Decoded(np.fromfile(out, np.uint8).reshape(int(height), int(width), 3), None)

    def decode(self, paths: list[Path], max_pixels: int | None = None) -> list[Decoded]:
        outs = [self._out() for _ in paths]
        limit = [] if max_pixels is None else [str(max_pixels)]
        answers = self.run([["decode", str(p), str(o), *limit] for p, o in zip(paths, outs)])
        return [self._read(a, o) for a, o in zip(answers, outs)]

    def buffer(self, fmt: str, data: bytes, width: int, height: int, stride: int) -> Decoded:
        source, out = self._out(), self._out()
        source.write_bytes(data)
        (answer,) = self.run([["buffer", fmt, str(width), str(height), str(stride), str(source), str(out)]])
        return self._read(answer, out)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Driver:
    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed")
    build = build_cpp(tmp_path_factory.mktemp("build"), ["xvlm_edge_image_io_tests"], ["-DXVLM_EDGE_BUILD_TESTS=ON"])
    return Driver(build / "xvlm_edge_image_io_tests", tmp_path_factory.mktemp("images"))


def python_decode(path: Path) -> Decoded:
    try:
        return Decoded(load_image(path), None)
    except ImageError as e:
        return Decoded(None, str(e))


def compare_files(driver: Driver, files: dict[str, bytes], tmp_path: Path) -> dict[str, int]:
    """Decodes every file both ways: equal pixels or both refused. Returns per-file differing byte counts."""
    paths = []
    for name, data in files.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    differing = {}
    for path, got in zip(paths, driver.decode(paths)):
        want = python_decode(path)
        assert (got.error is None) == (want.error is None), f"{path.name}: C++ {got.error!r}, Python {want.error!r}"
        if got.pixels is not None:
            assert got.pixels.shape == want.pixels.shape, path.name
            differing[path.name] = int(np.count_nonzero(got.pixels != want.pixels))
    return differing


# ---------------------------------------------------------------- PNG: every colour type and bit depth

GRAY, RGB, PALETTE, GRAY_ALPHA, RGBA = 0, 2, 3, 4, 6
CHANNELS = {GRAY: 1, RGB: 3, PALETTE: 1, GRAY_ALPHA: 2, RGBA: 4}
# Adam7: (first column, first row, column step, row step) of the seven passes.
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _scanlines(samples: np.ndarray, depth: int) -> bytes:
    out = []
    for row in samples.reshape(samples.shape[0], -1):
        if depth == 16:
            packed = row.astype(">u2").tobytes()
        elif depth == 8:
            packed = row.astype(np.uint8).tobytes()
        else:  # MSB first, the row padded to a whole byte
            bits = np.unpackbits(row.astype(np.uint8)[:, None], axis=1)[:, 8 - depth :]
            packed = np.packbits(bits.reshape(-1)).tobytes()
        out.append(b"\x00" + packed)  # filter type None
    return b"".join(out)


def png_bytes(samples: np.ndarray, color_type: int, depth: int, *, interlace: bool = False, extra: bytes = b"", **chunks: bytes) -> bytes:
    """A PNG of (H, W, C) samples below 2**depth, written chunk by chunk; `chunks` go before IDAT (PLTE, tRNS...)."""
    h, w = samples.shape[:2]
    if interlace:
        passes = [samples[y0::dy, x0::dx] for x0, y0, dx, dy in ADAM7]
        raw = b"".join(_scanlines(p, depth) for p in passes if p.size)
    else:
        raw = _scanlines(samples, depth)
    header = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, int(interlace))
    body = b"".join(_chunk(kind.encode(), data) for kind, data in chunks.items())
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + body + extra + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def png_resized(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR claiming width x height, CRC fixed: only the size check can refuse it."""
    header = png[12:16] + struct.pack(">II", width, height) + png[24:29]
    return png[:8] + struct.pack(">I", 13) + header + struct.pack(">I", zlib.crc32(header)) + png[33:]


def png_cases(h: int = 13, w: int = 19) -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    cases = {}
    for color_type, depths in ((GRAY, (1, 2, 4, 8, 16)), (RGB, (8, 16)), (PALETTE, (1, 2, 4, 8)), (GRAY_ALPHA, (8, 16)), (RGBA, (8, 16))):
        for depth in depths:
            samples = rng.integers(0, 2**depth, (h, w, CHANNELS[color_type]))
            palette = {}
            if color_type == PALETTE:
                palette["PLTE"] = rng.integers(0, 256, 3 * 2**depth, dtype=np.uint8).tobytes()
            for interlace in (False, True):
                name = f"type{color_type}-{depth}bit{'-interlaced' if interlace else ''}.png"
                cases[name] = png_bytes(samples, color_type, depth, interlace=interlace, **palette)
            if color_type == GRAY:
                value = int(samples[0, 0, 0])
                cases[f"type0-{depth}bit-trns.png"] = png_bytes(samples, GRAY, depth, tRNS=struct.pack(">H", value))
            if color_type == RGB:
                key = struct.pack(">HHH", *(int(v) for v in samples[0, 0]))
                cases[f"type2-{depth}bit-trns.png"] = png_bytes(samples, RGB, depth, tRNS=key)
            if color_type == PALETTE:
                alpha = rng.integers(0, 256, min(2**depth, 5), dtype=np.uint8).tobytes()
                cases[f"type3-{depth}bit-trns.png"] = png_bytes(samples, PALETTE, depth, **palette, tRNS=alpha)
    gray = rng.integers(0, 256, (h, w, 1))
    cases["gamma-srgb-chunks.png"] = png_bytes(gray, GRAY, 8, gAMA=struct.pack(">I", 100000), sRGB=b"\x00")
    cases["one-pixel.png"] = png_bytes(gray[:1, :1], GRAY, 8)
    cases["one-pixel-interlaced.png"] = png_bytes(gray[:1, :1], GRAY, 8, interlace=True)
    return cases


def encoder_png_cases() -> dict[str, bytes]:
    """What real encoders write: OpenCV (libpng, all filters) and Pillow (its own zlib use, optimised palettes)."""
    rng = np.random.default_rng(2)
    img8 = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    img16 = rng.integers(0, 65536, (37, 53, 4), dtype=np.uint16)
    cases = {}
    for depth, img in (("8", img8), ("16", img16)):
        for channels in (1, 3, 4):
            arr = img[:, :, 0] if channels == 1 else img[:, :, :channels]
            cases[f"cv2-{channels}ch-{depth}bit.png"] = cv2_encode(".png", arr, cv2.IMWRITE_PNG_COMPRESSION, 9)
    cases["cv2-bilevel.png"] = cv2_encode(".png", (img8[:, :, 0] > 127).astype(np.uint8) * 255, cv2.IMWRITE_PNG_BILEVEL, 1)
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
        pil = Image.fromarray(img16[:, :, 0]) if mode == "I;16" else Image.fromarray(img8).convert(mode)
        buf = io.BytesIO()
        pil.save(buf, "PNG", optimize=True)
        cases[f"pil-{mode.replace(';', '')}.png"] = buf.getvalue()
    return cases


def test_examples_equal_python(driver: Driver) -> None:
    assert len(EXAMPLES) >= 4
    for path, got in zip(EXAMPLES, driver.decode(EXAMPLES)):
        assert got.error is None, got.error
        assert np.array_equal(got.pixels, load_image(path)), path.name


def test_png_every_colour_type_and_depth_equal_python(driver: Driver, tmp_path: Path) -> None:
    cases = {**png_cases(), **encoder_png_cases()}
    differing = compare_files(driver, cases, tmp_path)
    assert len(differing) == len(cases) > 50
    assert not any(differing.values()), {k: v for k, v in differing.items() if v}


# ---------------------------------------------------------------- JPEG


def jpeg_cases() -> dict[str, bytes]:
    """OpenCV and Pillow encodings: every chroma subsampling, progressive, restart markers, odd sizes, gray, CMYK."""
    yy, xx = np.mgrid[0:61, 0:127]
    smooth = np.stack([xx * 2, yy * 4, (xx + yy) % 256], axis=2).astype(np.uint8)
    noise = np.random.default_rng(3).integers(0, 256, smooth.shape, dtype=np.uint8)
    img = (smooth // 2 + noise // 2).astype(np.uint8)
    cases = {}
    factors = {name: getattr(cv2, f"IMWRITE_JPEG_SAMPLING_FACTOR_{name}") for name in ("411", "420", "422", "440", "444")}
    for name, factor in factors.items():
        for quality in (30, 95):
            cases[f"cv2-{name}-q{quality}.jpg"] = cv2_encode(".jpg", img, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor, cv2.IMWRITE_JPEG_QUALITY, quality)
    cases["cv2-progressive.jpg"] = cv2_encode(".jpg", img, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    cases["cv2-optimized-restart.jpg"] = cv2_encode(".jpg", img, cv2.IMWRITE_JPEG_OPTIMIZE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, 3)
    cases["cv2-gray.jpg"] = cv2_encode(".jpg", img[:, :, 1])
    cases["cv2-gray-progressive.jpg"] = cv2_encode(".jpg", img[:, :, 1], cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    for h, w in ((1, 1), (17, 33), (9, 2)):
        cases[f"cv2-{w}x{h}.jpg"] = cv2_encode(".jpg", img[:h, :w])
    pil = Image.fromarray(img)
    for subsampling in (0, 1, 2):
        for progressive in (False, True):
            buf = io.BytesIO()
            pil.save(buf, "JPEG", quality=85, subsampling=subsampling, progressive=progressive)
            cases[f"pil-sub{subsampling}{'-progressive' if progressive else ''}.jpg"] = buf.getvalue()
    for mode in ("L", "CMYK"):
        buf = io.BytesIO()
        pil.convert(mode).save(buf, "JPEG", quality=90)
        cases[f"pil-{mode}.jpg"] = buf.getvalue()
    return cases


def test_jpeg_equal_python(driver: Driver, tmp_path: Path) -> None:
    """Exact: Debian 12's libjpeg-turbo 2.1.5 and the 3.1 inside opencv-python decode these files to the same
    bytes (islow IDCT, fancy upsampling, the same colour conversion), CMYK through OpenCV's formula included."""
    cases = jpeg_cases()
    differing = compare_files(driver, cases, tmp_path)
    assert len(differing) == len(cases) >= 25
    assert not any(differing.values()), {k: v for k, v in differing.items() if v}


def test_exif_orientation_equals_python(driver: Driver, tmp_path: Path) -> None:
    """Orientations 1..8 (and an out-of-range 9) in a JPEG APP1 segment and a PNG eXIf chunk, both byte orders,
    on a 7 x 5 image: turned upright exactly as OpenCV's imdecode turns it."""
    img = Image.fromarray(np.random.default_rng(6).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    cases = {}
    for orientation in range(1, 10):
        exif = Image.Exif()
        exif[0x0112] = orientation
        for fmt, suffix in (("JPEG", "jpg"), ("PNG", "png")):
            buf = io.BytesIO()
            img.save(buf, fmt, exif=exif.tobytes(), quality=90)
            cases[f"orientation-{orientation}.{suffix}"] = buf.getvalue()
    big_endian = bytes.fromhex("4d4d002a00000008 0001 0112 0003 00000001 0006 0000 00000000".replace(" ", ""))
    cases["orientation-6-big-endian.png"] = png_bytes(np.asarray(img), RGB, 8, eXIf=big_endian)
    differing = compare_files(driver, cases, tmp_path)
    assert len(differing) == len(cases) and not any(differing.values()), differing
    shapes = [driver.decode([tmp_path / f"orientation-{n}.png"])[0].pixels.shape for n in (1, 6, 9)]
    assert shapes == [(5, 7, 3), (7, 5, 3), (5, 7, 3)]


# ---------------------------------------------------------------- raw buffers


def padded(rows: np.ndarray, stride: int) -> bytes:
    """Rows of bytes at `stride`, the padding filled with 0xEE (it must never be read)."""
    flat = rows.reshape(rows.shape[0], -1)
    out = np.full((flat.shape[0], stride), 0xEE, np.uint8)
    out[:, : flat.shape[1]] = flat
    return out.tobytes()


@pytest.mark.parametrize(
    ("fmt", "channels", "code"),
    [("RGB", 3, None), ("BGR", 3, cv2.COLOR_BGR2RGB), ("RGBA", 4, cv2.COLOR_RGBA2RGB), ("BGRA", 4, cv2.COLOR_BGRA2RGB), ("GRAY", 1, cv2.COLOR_GRAY2RGB)],
)
def test_buffers_equal_cvtcolor(driver: Driver, fmt: str, channels: int, code: int | None) -> None:
    img = np.random.default_rng(4).integers(0, 256, (23, 31, channels), dtype=np.uint8)
    want = img if code is None else cv2.cvtColor(np.ascontiguousarray(img[:, :, 0] if channels == 1 else img), code)
    for stride in (31 * channels, 31 * channels + 5, 256):
        got = driver.buffer(fmt, padded(img, stride), 31, 23, stride)
        assert got.error is None and np.array_equal(got.pixels, want), (fmt, stride)


def test_nv12_every_yuv_triple_equals_cvtcolor(driver: Driver) -> None:
    """All 2**24 (Y, U, V) triples: a 512 x 32768 frame whose 2x2 blocks hold every (U, V) pair 64 times, with
    four different Y values each time, against cv2.cvtColor(COLOR_YUV2RGB_NV12)."""
    u, v = np.meshgrid(np.arange(256), np.arange(256))  # chroma plane of one round: 256 x 256 (U, V) pairs
    uv = np.tile(np.stack([u, v], axis=2).astype(np.uint8).reshape(256, 512), (64, 1))  # 64 rounds
    rounds = np.arange(64).repeat(512)[:, None]  # luma row -> round
    parity = (np.arange(512)[None, :] % 2) + 2 * (np.arange(64 * 512)[:, None] % 2)  # position in the 2x2 block
    luma = ((rounds * 4 + parity) % 256).astype(np.uint8)
    frame = np.concatenate([luma, uv])
    want = cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_NV12)
    got = driver.buffer("NV12", frame.tobytes(), 512, 64 * 512, 512)
    assert got.error is None, got.error
    assert int(np.count_nonzero(got.pixels != want)) == 0
    small = frame[: 64 * 3].copy()  # padded stride: 64 luma rows of 512 plus 32 chroma rows
    small = np.concatenate([frame[:64, :100], frame[64 * 512 : 64 * 512 + 32, :100]])
    got = driver.buffer("NV12", padded(small, 128), 100, 64, 128)
    assert got.error is None and np.array_equal(got.pixels, cv2.cvtColor(small, cv2.COLOR_YUV2RGB_NV12))


@pytest.mark.parametrize(
    ("fmt", "width", "height", "stride", "size", "message"),
    [
        ("RGB", 4, 4, 11, 48, "stride_bytes=11 is less than a row of 4 pixels (12 bytes)"),
        ("BGRA", 4, 4, 16, 63, "size=63 bytes is less than the 64 bytes a 4x4 image with stride_bytes=16 needs"),
        ("GRAY", 0, 4, 4, 16, "width and height must be >= 1, got 0x4"),
        ("NV12", 5, 4, 6, 100, "NV12 buffer: width and height must be even"),
        ("NV12", 4, 3, 4, 100, "NV12 buffer: width and height must be even"),
        ("NV12", 4, 4, 4, 23, "less than the 24 bytes"),
        ("RGB", 20000, 20000, 60000, 16, "RGB buffer: image is 20000x20000 = 400.0 megapixels, above the limit of 100 megapixels"),
        ("RGB", 4, 4, 2**63, 16, "overflows the address space"),
    ],
)
def test_bad_buffers_are_refused(driver: Driver, fmt: str, width: int, height: int, stride: int, size: int, message: str) -> None:
    got = driver.buffer(fmt, bytes(size), width, height, stride)
    assert got.error is not None and message in got.error, got.error


def test_cpp_self_checks(driver: Driver) -> None:
    """The driver's built-in bad-input checks (what ctest runs): NULL pointers, zero sizes, limits."""
    run = subprocess.run([driver.binary], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip().endswith(" 0 failures"), run.stdout + run.stderr


# ---------------------------------------------------------------- bad files


def bad_files() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, what the C++ message must say). Each is refused by the Python package too."""
    png = png_bytes(np.random.default_rng(5).integers(0, 256, (20, 30, 3)), RGB, 8)
    jpeg = jpeg_cases()["cv2-420-q95.jpg"]
    idat = png.index(b"IDAT")
    cases = {
        "empty.png": (b"", "image file is empty (0 bytes)"),
        "crc.png": (png[: idat + 10] + bytes([png[idat + 10] ^ 0xFF]) + png[idat + 11 :], "cannot decode PNG image data (IDAT: "),
        "no-iend.png": (png[:-12], "cannot decode PNG image data"),
        "bad-depth.png": (png_resized(png, 30, 20)[:24] + b"\x07" + png[25:], "cannot decode PNG header"),
        "bomb-100000.png": (png_resized(png, 100_000, 100_000), "image is 100000x100000 = 10000.0 megapixels, above the limit of 100"),
        "bomb-65500.jpg": (put(jpeg, jpeg.index(b"\xff\xc0") + 5, ">HH", 65500, 65500), "image is 65500x65500 = 4290.2 megapixels"),
        "zero-width.png": (png_resized(png, 0, 20), "cannot decode PNG header (Invalid IHDR data)"),
        "truncated-scan.jpg": (jpeg[: len(jpeg) * 2 // 3], "JPEG data is truncated (no end-of-image marker after the last scan)"),
        "no-frame.jpg": (jpeg[:20], "cannot decode JPEG header"),
    }
    for cut in (8, 20, 33, 41, idat + 20, len(png) - 13):
        cases[f"png-cut-{cut}.png"] = (png[:cut], "cannot decode PNG")
    for cut in (3, 10, 100, 300):
        cases[f"jpeg-cut-{cut}.jpg"] = (jpeg[:cut], "cannot decode JPEG header")
    for sample in samples():
        if sample.id in ("png", "jpeg"):
            bomb = png_resized(sample.data, 12000, 12000) if sample.id == "png" else sample.bomb
            cases[f"limits-bomb{sample.suffix}"] = (bomb, "image is 12000x12000 = 144.0 megapixels, above the limit of 100 megapixels")
    return cases


def test_bad_files_are_refused_by_both(driver: Driver, tmp_path: Path) -> None:
    cases = bad_files()
    paths = [tmp_path / name for name in cases]
    for path, (data, _) in zip(paths, cases.values()):
        path.write_bytes(data)
    for path, (_, message), got in zip(paths, cases.values(), driver.decode(paths)):
        assert got.error is not None and str(path) in got.error and message in got.error, (path.name, got.error)
        assert python_decode(path).error is not None, path.name


def test_other_formats_and_missing_files_name_the_problem(driver: Driver, tmp_path: Path) -> None:
    bmp = tmp_path / "photo.bmp"
    bmp.write_bytes(cv2_encode(".bmp", np.zeros((4, 4, 3), np.uint8)))
    missing, directory = tmp_path / "missing.png", tmp_path
    got = driver.decode([bmp, missing, directory])
    assert f"{bmp}: not a PNG or JPEG image (it starts with 42 4D" in got[0].error
    assert got[1].error == f"image file not found: {missing}"
    assert got[2].error == f"image file not found: {directory}"
    (limit,) = driver.decode([EXAMPLES[0]], max_pixels=1000)
    assert re.search(r"image is \d+x\d+ = [\d.]+ megapixels, above the limit of 0.001 megapixels", limit.error)


def test_bombs_are_refused_before_allocating(driver: Driver, tmp_path: Path) -> None:
    """A fresh driver refuses PNG and JPEG headers claiming up to 10^10 pixels; its peak RSS stays a few MB
    (decoding any of them would take 30 GB)."""
    files = {name: data for name, (data, _) in bad_files().items() if "bomb" in name}
    paths = [tmp_path / name for name in files]
    for path, data in zip(paths, files.values()):
        path.write_bytes(data)
    answers = driver.run([*(["decode", str(p), str(tmp_path / "out")] for p in paths), ["rss"]])
    assert all("above the limit" in a for a in answers[:-1]), answers
    peak_kib = int(answers[-1].split()[1])
    assert peak_kib < 32 * 1024, f"peak RSS {peak_kib} KiB"
