"""xvlm_edge.preprocess: official-fixture parity, Pillow parity, backends, decoding and refusals."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import load_expected
from PIL import Image, ImageOps

from xvlm_edge import preprocess as P
from xvlm_edge.errors import BackendUnavailableError, ImageError, InputError

BACKENDS = ["cpp", "numpy"]


def pillow_resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def pil_open(source: Path | io.BytesIO) -> Image.Image:
    """A loaded copy, so no file handle is left open (warnings are errors)."""
    with Image.open(source) as im:
        return im.copy()


def encode_png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


# ---------------------------------------------------------------- official fixtures


def _fixture_cases(reference_dir: Path):
    expected = load_expected("preprocess")
    image_res = json.loads((reference_dir / "remap" / "logs.json").read_text())["image_res"]
    paths = sorted((reference_dir / "inputs" / "images").glob("img*.png"), key=lambda p: int(p.stem[3:]))
    roles = [k.removeprefix("resized_uint8_") for k in expected if k.startswith("resized_uint8_")]
    assert roles and paths
    return expected, image_res, paths, roles


@pytest.mark.parametrize("backend", BACKENDS)
def test_official_fixture_parity(reference_dir: Path, backend: str) -> None:
    """Pillow resize output exactly; pixel_values within 1e-6 (they come out bit-identical)."""
    expected, image_res, paths, roles = _fixture_cases(reference_dir)
    for role in roles:
        res = image_res[role]
        resized, values = expected[f"resized_uint8_{role}"].numpy(), expected[f"pixel_values_{role}"].numpy()
        assert resized.shape == (len(paths), res, res, 3)
        for i, path in enumerate(paths):
            img = P.load_image(path)
            np.testing.assert_array_equal(P.resize_bicubic(img, (res, res), backend=backend), resized[i])
            np.testing.assert_allclose(P.to_pixel_values(img, res, backend=backend), values[i], rtol=0, atol=1e-6)


def test_preprocess_batch_matches_fixture(reference_dir: Path) -> None:
    expected, image_res, paths, roles = _fixture_cases(reference_dir)
    role = roles[0]
    batch = P.preprocess([str(p) for p in paths], image_res[role])
    assert batch.dtype == torch.float32
    torch.testing.assert_close(batch, expected[f"pixel_values_{role}"], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- Pillow parity on odd shapes

# (in_w, in_h, out_w, out_h): lines, columns, 1x1, up on one axis and down on the other, huge ratios,
# both sides of the pass-order boundary (h - oh vs 2 (w - ow)), unchanged axes.
SHAPES = [
    (1, 1, 64, 64), (1, 50, 64, 64), (50, 1, 64, 64), (997, 13, 64, 64), (13, 997, 64, 64),
    (50, 80, 64, 64), (123, 77, 96, 96), (300, 7, 5, 300), (64, 64, 1, 1), (640, 480, 384, 384),
    (60, 60, 30, 1), (60, 60, 31, 1), (60, 60, 31, 2), (100, 37, 100, 64), (100, 37, 64, 37),
    (2, 3, 1000, 1), (1000, 1, 3, 2),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("in_w", "in_h", "out_w", "out_h"), SHAPES)
def test_resize_matches_pillow(backend: str, in_w: int, in_h: int, out_w: int, out_h: int) -> None:
    """Exact equality is the achieved bar (the acceptance bar is 1 level)."""
    img = random_image(in_h, in_w, seed=in_w * 1000 + in_h)
    out = P.resize_bicubic(img, (out_w, out_h), backend=backend)
    np.testing.assert_array_equal(out, pillow_resize(img, (out_w, out_h)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_resize_matches_pillow_random_sweep(backend: str) -> None:
    rng = np.random.default_rng(1234)
    for _ in range(150):
        in_h, in_w, out_h, out_w = (int(v) for v in rng.integers(1, 160, 4))
        img = rng.integers(0, 256, (in_h, in_w, 3), dtype=np.uint8)
        np.testing.assert_array_equal(
            P.resize_bicubic(img, (out_w, out_h), backend=backend), pillow_resize(img, (out_w, out_h))
        )


# ---------------------------------------------------------------- backends agree, threads do not matter


def test_cpp_matches_numpy_and_threads_do_not_matter() -> None:
    img = random_image(301, 457, seed=3)
    ref = P.to_pixel_values(img, 96, backend="numpy")
    for threads in (1, 2, 7, 0):
        np.testing.assert_array_equal(P.to_pixel_values(img, 96, backend="cpp", num_threads=threads), ref)
    single = P.resize_bicubic(img, (200, 500), backend="cpp", num_threads=1)
    np.testing.assert_array_equal(P.resize_bicubic(img, (200, 500), backend="cpp", num_threads=2), single)


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert P.resolve_backend("auto") == "cpp"
    with pytest.raises(InputError, match="unknown backend"):
        P.resolve_backend("cuda")  # type: ignore[arg-type]
    monkeypatch.setattr(P, "_C", None)
    assert P.resolve_backend("auto") == "numpy"
    with pytest.raises(BackendUnavailableError, match="not built"):
        P.resize_bicubic(random_image(4, 4), (2, 2), backend="cpp")


def test_cpp_errors_map_to_python_errors() -> None:
    """The core's C++ exceptions arrive as our typed errors, never as a crash."""
    from xvlm_edge import _C

    with pytest.raises(ImageError, match="dtype must be uint8"):
        _C.resize_bicubic(np.zeros((4, 4, 3), np.float32), 2, 2)
    with pytest.raises(ImageError, match="channels"):
        _C.resize_bicubic(np.zeros((4, 4, 2), np.uint8), 2, 2)
    with pytest.raises(ImageError, match="output size 0x2"):
        _C.resize_bicubic(np.zeros((4, 4, 3), np.uint8), 0, 2)
    with pytest.raises(ImageError, match="image size 100000x1"):
        _C.resize_bicubic(np.zeros((1, 100000, 3), np.uint8), 2, 2)
    with pytest.raises(InputError, match="std non-zero"):
        _C.preprocess(np.zeros((4, 4, 3), np.uint8), 2, (0.5, 0.5, 0.5), (1.0, 0.0, 1.0))
    # A non-contiguous view is copied, not misread.
    img = random_image(20, 30)
    np.testing.assert_array_equal(_C.resize_bicubic(img[:, ::2], 7, 9), pillow_resize(img[:, ::2].copy(), (7, 9)))


def test_argument_checks() -> None:
    img = random_image(8, 8)
    with pytest.raises(InputError, match="output width must be an int"):
        P.resize_bicubic(img, (0, 5))
    with pytest.raises(InputError, match=r"output size must be \(width, height\)"):
        P.resize_bicubic(img, 5)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="res must be an int in 1..16384"):
        P.to_pixel_values(img, 100_000)
    with pytest.raises(InputError, match="std must be non-zero"):
        P.to_pixel_values(img, 4, std=(1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="mean must be 3 finite"):
        P.to_pixel_values(img, 4, mean=(0.5, 0.5))
    with pytest.raises(ImageError, match="use load_image"):
        P.resize_bicubic(img.astype(np.float32), (4, 4))
    with pytest.raises(InputError, match="no images"):
        P.preprocess([], 4)


# ---------------------------------------------------------------- decoding


def test_sources_agree(tmp_path: Path) -> None:
    rgb = random_image(21, 34)
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    for source in (path, str(path), path.read_bytes(), bytearray(path.read_bytes()), pil_open(path), rgb):
        np.testing.assert_array_equal(P.load_image(source), rgb)


def test_grayscale_and_rgba_match_pil_convert(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for mode, shape in (("L", (17, 23)), ("RGBA", (17, 23, 4)), ("LA", (17, 23, 2))):
        pil = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode)
        path = tmp_path / f"{mode}.png"
        pil.save(path)
        expected = np.asarray(pil_open(path).convert("RGB"))
        np.testing.assert_array_equal(P.load_image(path), expected)
        np.testing.assert_array_equal(P.load_image(pil), expected)
    gray = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    np.testing.assert_array_equal(P.load_image(gray), np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(P.load_image(gray[:, :, None]), np.repeat(gray[:, :, None], 3, axis=2))


def test_16bit_png_is_rounded_to_8bit() -> None:
    rng = np.random.default_rng(0)
    gray16 = rng.integers(0, 65536, (9, 11), dtype=np.uint16)
    gray16[0, :4] = (0, 128, 129, 65535)
    expected = np.round(gray16 / 257).astype(np.uint8)
    assert list(expected[0, :4]) == [0, 0, 1, 255]
    np.testing.assert_array_equal(P.load_image(encode_png(gray16)), np.repeat(expected[:, :, None], 3, axis=2))
    rgb16 = rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    out = P.load_image(encode_png(rgb16[:, :, ::-1]))  # OpenCV writes BGR
    np.testing.assert_array_equal(out, np.round(rgb16 / 257).astype(np.uint8))
    pil16 = pil_open(io.BytesIO(encode_png(gray16)))
    assert pil16.mode.startswith("I;16")
    np.testing.assert_array_equal(P.load_image(pil16)[:, :, 0], expected)


def test_float_array_is_scaled() -> None:
    values = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    np.testing.assert_array_equal(P.load_image(values)[:, :, 1], [[0, 128], [255, 64]])


def test_exif_rotated_jpeg_comes_out_upright(tmp_path: Path) -> None:
    """Orientation 6 (rotate 90 degrees clockwise to view): stored 40x20 with red left, viewed 20x40, red on top."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    out = P.load_image(path)
    assert out.shape == (40, 20, 3)
    upright = np.asarray(ImageOps.exif_transpose(pil_open(path)).convert("RGB"))
    assert np.abs(out.astype(int) - upright).max() <= 3  # two JPEG decoders, same pixels up to IDCT rounding
    assert out[:15, :, 0].min() > 200 and out[25:, :, 2].min() > 200


# ---------------------------------------------------------------- refusals and edge sizes


def test_one_pixel_image_works(tmp_path: Path) -> None:
    path = tmp_path / "dot.png"
    Image.fromarray(np.full((1, 1, 3), 77, np.uint8)).save(path)
    values = P.preprocess(path, 16)
    assert values.shape == (1, 3, 16, 16)
    np.testing.assert_array_equal(P.resize_bicubic(P.load_image(path), (16, 16)), np.full((16, 16, 3), 77))


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        P.load_image(tmp_path / "missing.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty \(0 bytes\)"):
        P.load_image(empty)
    text = tmp_path / "text.png"
    text.write_text("this is not an image\n")
    with pytest.raises(ImageError, match=r"cannot decode image data: not a supported image format \(supported: JPEG, PNG"):
        P.load_image(text)
    with pytest.raises(ImageError, match="empty"):
        P.load_image(b"")
    with pytest.raises(ImageError, match="unsupported image source type int"):
        P.load_image(5)


def test_every_image_suffix_loads(tmp_path: Path) -> None:
    """IMAGE_SUFFIXES (the folder scans' list) names only formats load_image decodes: each suffix OpenCV can
    write round-trips through a file of that name (.j2k/.j2c, which it cannot write, in test_image_limits)."""
    rgb = random_image(32, 40)
    written = 0
    for suffix in P.IMAGE_SUFFIXES:
        gray = suffix in (".pbm", ".pgm")
        image = rgb[:, :, 0] if gray else rgb[:, :, ::-1]  # OpenCV writes BGR
        if suffix in (".pfm", ".hdr", ".pic"):
            image = image.astype(np.float32) / 255
        path = tmp_path / f"image{suffix}"
        try:
            ok = cv2.imwrite(str(path), image)
        except cv2.error:
            ok = False
        if not ok:
            assert suffix in (".j2k", ".j2c"), suffix
            continue
        out = P.load_image(path)
        assert out.shape == (32, 40, 3), suffix
        written += 1
    assert written == len(P.IMAGE_SUFFIXES) - 2
    assert ".gif" in P.IMAGE_SUFFIXES


def test_truncated_files_are_refused() -> None:
    buf = io.BytesIO()
    Image.fromarray(random_image(64, 64)).save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    with pytest.raises(ImageError, match="JPEG data is truncated"):
        P.load_image(jpeg[: len(jpeg) // 2])
    png = encode_png(random_image(64, 64))
    with pytest.raises(ImageError, match="cannot decode"):
        P.load_image(png[: len(png) // 2])


@pytest.mark.parametrize(
    ("arr", "message"),
    [
        (np.full((4, 4, 3), np.nan, np.float32), "NaN or infinite"),
        (np.full((4, 4, 3), 2.0), r"must lie in \[0, 1\]"),
        (np.zeros((4, 4, 3), np.int64), "unsupported image dtype int64"),
        (np.zeros((4, 4, 3), np.complex64), "unsupported image dtype complex64"),
        (np.zeros((4, 4, 2), np.uint8), "2 channels"),
        (np.zeros((4, 4, 5), np.uint8), "5 channels"),
        (np.zeros(16, np.uint8), "1 dimensions"),
        (np.zeros((2, 4, 4, 3), np.uint8), "4 dimensions"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
    ],
)
def test_bad_arrays_are_refused(arr: np.ndarray, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        P.load_image(arr)


def test_pixel_limit_is_inclusive() -> None:
    """10000 x 10000 is exactly MAX_PIXELS and allowed; one more row is refused before any work."""
    assert P.MAX_PIXELS == 10000 * 10000
    with pytest.raises(ImageError, match="above the limit of 100 megapixels"):
        P.load_image(np.zeros((10001, 10000, 3), np.uint8))  # np.zeros is lazy: nothing is touched


def test_oversized_png_header_is_refused_before_decoding() -> None:
    png = bytearray(encode_png(np.zeros((2, 2, 3), np.uint8)))
    png[16:24] = (20000).to_bytes(4, "big") + (20000).to_bytes(4, "big")  # IHDR width, height
    with pytest.raises(ImageError, match=re.escape("20000x20000 = 400.0 megapixels")):
        P.load_image(bytes(png))
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(jpeg, "JPEG")
    with pytest.raises(ImageError, match="40x30"):
        P.load_image(jpeg.getvalue(), max_pixels=1000)


@pytest.mark.slow
def test_largest_allowed_image_resizes() -> None:
    big = np.zeros((10000, 10000, 3), np.uint8)  # 300 MB of lazily zeroed pages
    big[::97, ::89] = 255
    img = P.load_image(big)
    assert img.shape == (10000, 10000, 3)
    out = P.resize_bicubic(img, (64, 64), backend="cpp")
    np.testing.assert_array_equal(out, pillow_resize(img, (64, 64)))


# ---------------------------------------------------------------- boxes


def test_box_to_resized_matches_official(reference_dir: Path) -> None:
    inputs = torch.load(reference_dir / "inputs" / "inputs.pt", map_location="cpu", weights_only=True)
    _, image_res, paths, roles = _fixture_cases(reference_dir)
    sizes = [pil_open(p).size for p in paths]
    orig = inputs["regions_boxes_orig_xywh"].tolist()
    for role in roles:
        got_all = inputs[f"regions_boxes_resized_xywh_{role}"].tolist()
        for img_idx, box, is_image, want in zip(
            inputs["regions_idx_to_group_img"].tolist(), orig, inputs["regions_is_image"].tolist(), got_all
        ):
            if is_image:
                continue
            w, h = sizes[img_idx]
            assert P.box_xywh_to_resized(box, w, h, image_res[role]) == pytest.approx(want, rel=0, abs=1e-12)


def test_box_to_resized_checks() -> None:
    assert P.box_xywh_to_resized([10, 8, 30, 24], 96, 64, 64) == pytest.approx((10 * 64 / 96, 8, 20, 24))
    with pytest.raises(InputError, match="4 finite"):
        P.box_xywh_to_resized([1, 2, 3], 10, 10, 64)
    with pytest.raises(InputError, match="4 finite"):
        P.box_xywh_to_resized([1, 2, float("nan"), 4], 10, 10, 64)
    with pytest.raises(InputError, match="positive"):
        P.box_xywh_to_resized([1, 2, 3, 4], 0, 10, 64)
