"""The decoder's edge cases: colour arrays, EXIF orientation, refused formats, non-finite pixels, odd pixel modes."""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pneumo
from pneumo.data.decode import ImageDecodeError, decode_bytes, decode_image, pil_to_gray


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_colour_arrays_decode_like_the_same_image_from_a_file() -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(30, 200, (48, 40), dtype=np.uint8)  # a narrow range: a min..max stretch would show
    rgb = np.stack([gray, np.clip(gray.astype(int) + 10, 0, 255).astype(np.uint8), gray], axis=-1)
    rgba = np.concatenate([rgb, np.full((48, 40, 1), 255, np.uint8)], axis=-1)
    for arr in (rgb, rgba):
        from_file = decode_image(_png(Image.fromarray(arr)))
        np.testing.assert_array_equal(decode_image(arr), from_file)
    assert decode_image(rgb).min() >= 30 and decode_image(rgb).max() <= 215
    # float RGB in [0, 1] uses the same luma weights (up to rounding)
    as_float = decode_image(rgb.astype(np.float64) / 255.0).astype(int)
    assert np.abs(as_float - decode_image(rgb).astype(int)).max() <= 1


def test_exif_orientation_turns_the_image_upright() -> None:
    img = Image.fromarray(np.tile(np.arange(80, dtype=np.uint8), (40, 1)))  # 80 wide, 40 high
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    assert decode_image(buf.getvalue()).shape == (80, 40)
    # a PIL image of that file is turned upright too (it was predicted on its side: another label for one X-ray)
    buf.seek(0)
    with Image.open(buf) as opened:
        np.testing.assert_array_equal(decode_image(opened), decode_image(buf.getvalue()))


def test_formats_other_than_the_supported_rasters_are_refused() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageDecodeError, match=r"x\.png: not a supported image format"):
        decode_bytes(eps, "x.png")
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, "GIF")
    with pytest.raises(ImageDecodeError, match="not a supported image format"):
        decode_image(gif.getvalue())


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_pixels_are_an_error_not_a_black_image(bad: float) -> None:
    arr = np.linspace(0, 2, 64, dtype=np.float32).reshape(8, 8)
    arr[3, 3] = bad
    with pytest.raises(ImageDecodeError, match="<array>: image contains NaN or infinite values"):
        decode_image(arr)


def test_a_lab_tiff_decodes_to_its_lightness_band() -> None:
    lightness = np.tile(np.arange(0, 240, 5, dtype=np.uint8), (40, 1))
    zeros = np.zeros_like(lightness)
    lab = Image.merge("LAB", [Image.fromarray(band) for band in (lightness, zeros, zeros)])
    buf = io.BytesIO()
    lab.save(buf, "TIFF")
    np.testing.assert_array_equal(decode_bytes(buf.getvalue(), "lab.tif"), lightness)


def test_a_mode_without_a_grayscale_conversion_is_named_not_called_corrupt() -> None:
    with pytest.raises(ImageDecodeError, match=r"x: pixel mode La cannot be converted to grayscale"):
        pil_to_gray(Image.new("La", (4, 4)), "x")


def _reference_stretch(arr: np.ndarray) -> np.ndarray:
    values = arr.astype(np.float64)
    lo, hi = values.min(), values.max()
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<i2", ">i2", "i1", "<i4", "<f4", "<f8"])
def test_deep_images_stretch_exactly_like_a_float64_computation(dtype: str) -> None:
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    low, high = (info.min, info.max) if info is not None and info.bits <= 16 else (-70_000, 90_000)
    arr = rng.integers(low, high, (1100, 1000), endpoint=True).astype(dtype)  # over two blocks of pixels
    np.testing.assert_array_equal(decode_image(arr), _reference_stretch(arr))


def test_a_16_bit_png_decodes_without_a_float_copy_of_the_image() -> None:
    import tracemalloc

    rng = np.random.default_rng(2)
    arr = rng.integers(0, 4096, (2000, 2000), dtype=np.uint16)
    tracemalloc.start()
    try:
        out = decode_image(arr)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(out, _reference_stretch(arr))
    assert peak < 2.5 * arr.size  # the uint8 result and a 65,536-entry table; a float64 copy alone is 8 bytes a pixel


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    from pneumo.data import decode

    buf = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)).save(
        buf, "JPEG", progressive=True
    )
    progressive = buf.getvalue()
    assert 1 < progressive.count(b"\xff\xda") <= decode.MAX_JPEG_SCANS  # a real progressive file decodes
    assert decode.decode_bytes(progressive, "p.jpeg").shape == (64, 64)
    # the last scan repeated until there are too many (what a crafted file does, with tiny scans)
    last = progressive.rindex(b"\xff\xda")
    crafted = progressive[:last] + progressive[last:-2] * 300 + b"\xff\xd9"

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoding started")

    monkeypatch.setattr(decode.Image, "open", no_decoding)
    with pytest.raises(decode.ImageDecodeError, match=r"many\.jpeg: JPEG with 30\d scans \(limit 256\)"):
        decode.decode_bytes(crafted, "many.jpeg")


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (4, 0, 3)])
def test_an_empty_array_is_a_decode_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(ImageDecodeError, match="the array is empty"):
        decode_image(np.zeros(shape, dtype=np.float32))


def test_pillows_bomb_guard_reports_pneumos_limit() -> None:
    """A header announcing 400 megapixels trips Pillow's guard at open; the message names pneumo's own limit."""
    import struct
    import zlib

    from pneumo.data.decode import DEFAULT_MAX_PIXELS

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    for side in (20_000, 10_000):  # over twice Pillow's limit (its error), then over its limit (its warning)
        header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
        png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail here
            with pytest.raises(ImageDecodeError) as caught:
                decode_bytes(png, "huge.png")
        message = str(caught.value)
        assert message.startswith("huge.png: image of ") and message.count("limit") == 1, message
        assert message.endswith(f"exceeds the limit of {DEFAULT_MAX_PIXELS}") or message.endswith(
            f"exceeds the limit of {DEFAULT_MAX_PIXELS} pixels"
        ), message
        assert str(side * side) in message or f"{side}x{side}" in message


def test_a_bomb_leaks_no_pillow_warning_to_stderr(tmp_path) -> None:
    import subprocess
    import sys
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 10_000, 10_000, 8, 0, 0, 0, 0)  # 100 MP: over Pillow's warning limit
    (tmp_path / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    code = (
        "from pneumo.data.decode import decode_image\n"
        "try:\n    decode_image('big.png')\nexcept ValueError as e:\n    print(e)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(pneumo.__file__).parents[1])}  # this checkout's pneumo
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "big.png: image of 10000x10000 pixels exceeds the limit of 64000000"
    assert "DecompressionBomb" not in done.stderr and done.stderr == "", done.stderr


@pytest.mark.parametrize(
    ("image", "size"),
    [
        (Image.new("L", (1, 1)), "1x1"),
        (Image.new("RGBA", (31, 400), (0, 0, 0, 0)), "31x400"),  # fully transparent, one side short
        (Image.new("L", (400, 16)), "400x16"),
    ],
)
def test_an_image_too_small_for_a_radiograph_is_refused(tmp_path, image: Image.Image, size: str) -> None:
    path = tmp_path / "icon.png"
    image.save(path)
    reason = rf"image of {size} pixels is too small for a radiograph \(at least 32 px a side\)"
    for source, name in ((path, str(path)), (path.read_bytes(), "<bytes>"), (image, "<PIL image>")):
        with pytest.raises(ImageDecodeError, match=f"^{re.escape(name)}: {reason}$"):
            decode_image(source)
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(np.asarray(image.convert("L")))
    assert decode_image(Image.new("L", (32, 32))).shape == (32, 32)  # the smallest accepted


def test_a_multi_page_tiff_is_refused_like_a_multi_frame_dicom() -> None:
    """Its first page was used without a word, while a multi-frame DICOM is refused."""
    pages = [Image.fromarray(np.full((40, 40), v, np.uint8)) for v in (10, 200)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    with pytest.raises(ImageDecodeError, match=r"scan.tif: multi-page TIFF is not supported"):
        decode_bytes(buf.getvalue(), "scan.tif")
    single = io.BytesIO()
    pages[0].save(single, "TIFF")
    assert decode_bytes(single.getvalue(), "one.tif").shape == (40, 40)


def _tiff(pages: list[bool]) -> bytes:
    """A little-endian TIFF of 8x8 grayscale pages chained by their next-page offsets; a False page is malformed
    (a header with only its photometric tag, no dimensions)."""
    pixels = bytes(range(64))
    out = bytearray(b"II*\x00" + struct.pack("<I", 8 + len(pixels)) + pixels)  # pixels at offset 8
    for i, valid in enumerate(pages):
        tags = [(262, 3, 1, 1)]
        if valid:
            tags = [(256, 3, 1, 8), (257, 3, 1, 8), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, 8),
                    (277, 3, 1, 1), (278, 3, 1, 8), (279, 4, 1, 64)]  # fmt: skip
        ifd_size = 2 + 12 * len(tags) + 4
        next_ifd = len(out) + ifd_size if i < len(pages) - 1 else 0
        out += struct.pack("<H", len(tags))
        for tag, kind, count, value in tags:
            out += struct.pack("<HHII", tag, kind, count, value)
        out += struct.pack("<I", next_ifd)
    return bytes(out)


@pytest.mark.parametrize(
    ("pages", "reason"),
    [
        ([True], None),
        ([True, False], "multi-page TIFF with a malformed second page"),  # was a TypeError (a 500 in the service)
        ([True, True, False], "multi-page TIFF is not supported"),  # every page was parsed, the third raised
    ],
)
def test_a_tiff_is_read_up_to_its_second_page_only(pages: list[bool], reason: str | None) -> None:
    data = _tiff(pages)
    if reason is None:
        assert (
            decode_bytes(data, "one.tif", min_side=1).tolist() == np.arange(64, dtype=np.uint8).reshape(8, 8).tolist()
        )
        return
    with pytest.raises(ImageDecodeError, match=f"pages.tif: {reason}"):
        decode_bytes(data, "pages.tif", min_side=1)
