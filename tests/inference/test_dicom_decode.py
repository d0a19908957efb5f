"""DICOM decoding: the rescale and window are applied exactly, malformed headers are decode errors (never a crash)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from pneumo.data.decode import ImageDecodeError, decode_bytes, decode_image

from .conftest import dicom_bytes


def _with(data: bytes, **attributes: object) -> bytes:
    """``data`` with attributes set, invalid values included (as a broken scanner or a crafted upload writes them)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)
        patch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
        for key, value in attributes.items():
            if isinstance(value, tuple):  # (VR, value): a value written with the wrong VR
                ds.add_new(pydicom.datadict.tag_for_keyword(key), *value)
            else:
                setattr(ds, key, value)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _reference(data: bytes) -> np.ndarray:
    """The whole-image float64 computation the decoder replaces with a per-value table."""
    ds = pydicom.dcmread(io.BytesIO(data))
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    lo, hi = values.min(), values.max()
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"window": (1000, 400)}, {"slope": 2.0, "intercept": -1024.0}, {"slope": 0.5, "window": (600, 900)}],
)
def test_rescale_and_window_match_the_whole_image_computation(kwargs: dict) -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4096, (37, 53)).astype(np.uint16)
    data = dicom_bytes(raw, **kwargs)
    np.testing.assert_array_equal(decode_bytes(data, "x.dcm"), _reference(data))


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"WindowCenter": 1000, "WindowWidth": 0}, "cannot apply the DICOM rescale or window"),
        ({"VOILUTFunction": "BOGUS", "WindowCenter": 1000, "WindowWidth": 400}, "cannot apply the DICOM"),
        ({"NumberOfFrames": ("LO", "abc")}, "DICOM header has an unreadable frame count or image size"),
        ({"Rows": ("LO", "8\\8")}, "DICOM header has an unreadable frame count or image size"),
        ({"NumberOfFrames": "1.5"}, "(DICOM header has an unreadable|cannot decode DICOM pixel data)"),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning", "ignore:Value .* is not valid:UserWarning")
def test_malformed_headers_are_decode_errors_naming_the_file(attributes: dict, reason: str) -> None:
    data = _with(dicom_bytes(np.arange(64, dtype=np.uint16).reshape(8, 8)), **attributes)
    with pytest.raises(ImageDecodeError, match=rf"^bad\.dcm: {reason}"):
        decode_bytes(data, "bad.dcm")


def _encapsulated(frame: bytes, rows: int, cols: int, syntax: str) -> bytes:
    """A DICOM with one encapsulated (compressed) frame whose header announces ``rows x cols``."""
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.zeros((4, 4), np.uint16))))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _jpeg(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, "JPEG", quality=50)
    return buf.getvalue()


def test_a_compressed_frame_is_decoded_only_at_the_size_its_header_announces() -> None:
    from pydicom.uid import JPEGBaseline8Bit

    ok = decode_bytes(_encapsulated(_jpeg(48, 32), 32, 48, JPEGBaseline8Bit), "ok.dcm")
    assert ok.shape == (32, 48)
    # 16 x 16 announced, a 2000 x 2000 codestream inside: refused before pydicom decodes it
    with pytest.raises(ImageDecodeError, match=r"big\.dcm: compressed frame of 2000x2000 pixels, header says 16x16"):
        decode_bytes(_encapsulated(_jpeg(2000, 2000), 16, 16, JPEGBaseline8Bit), "big.dcm", max_pixels=10_000)


def test_a_compressed_frame_gets_the_jpeg_scan_guard_of_a_bare_jpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 73 KB DICOM holding a progressive JPEG with its last scan repeated decoded for 10 s (50 s at 109 KB), while
    the same JPEG as a file was refused at once."""
    from PIL import Image
    from pydicom.uid import JPEGBaseline8Bit

    from pneumo.data import decode

    buf = io.BytesIO()
    Image.new("L", (64, 64), 128).save(buf, "JPEG", progressive=True, quality=5)
    last = buf.getvalue().rindex(b"\xff\xda")
    crafted = buf.getvalue()[:last] + buf.getvalue()[last:-2] * 300 + b"\xff\xd9"
    data = _encapsulated(crafted, 64, 64, JPEGBaseline8Bit)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoding started")

    monkeypatch.setattr(decode.Image, "open", no_decoding)
    with pytest.raises(ImageDecodeError, match=r"scans\.dcm: JPEG with 30\d scans \(limit 256\)"):
        decode_bytes(data, "scans.dcm")


def test_an_unknown_transfer_syntax_and_an_unreadable_frame_are_decode_errors() -> None:
    from pydicom.uid import JPEGBaseline8Bit

    raw = dicom_bytes(np.zeros((8, 8), np.uint16))
    odd = raw.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.9\0")  # a UID pydicom does not know
    with pytest.raises(ImageDecodeError, match=r"odd\.dcm: unknown DICOM transfer syntax 1\.2\.840\.10008\.1\.2\.9"):
        decode_bytes(odd, "odd.dcm")
    with pytest.raises(ImageDecodeError) as caught:  # not an image codestream: no object address in the message
        decode_bytes(_encapsulated(b"not a jpeg at all", 8, 8, JPEGBaseline8Bit), "junk.dcm")
    assert "0x" not in str(caught.value) and "UnidentifiedImageError" in str(caught.value)


def test_a_deflated_dicom_is_refused_before_anything_is_inflated(monkeypatch: pytest.MonkeyPatch) -> None:
    import zlib

    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from pneumo.serve.guards import pixel_count

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.zeros((8, 8), np.uint16))))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()

    def inflate(*args, **kwargs):
        raise AssertionError("the data set was inflated")

    monkeypatch.setattr(zlib, "decompress", inflate)
    monkeypatch.setattr(zlib, "decompressobj", inflate)
    with pytest.raises(ImageDecodeError, match=r"z\.dcm: deflated DICOM is not supported"):
        decode_bytes(data, "z.dcm")
    assert pixel_count(data, "z.dcm") is None  # the service's header check leaves the verdict to the decoder


def test_an_unknown_value_representation_is_a_decode_error() -> None:
    good = dicom_bytes(np.zeros((8, 8), np.uint16))
    i = good.index(b"\x28\x00\x10\x00US")  # Rows
    bad = good[: i + 4] + b"U!" + good[i + 6 :]
    with pytest.raises(ImageDecodeError, match=r"v\.dcm: DICOM header has an unreadable"):
        decode_bytes(bad, "v.dcm")


def test_the_content_decides_the_format_not_the_name() -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (40, 36), 200).save(buf, "PNG")
    assert decode_bytes(buf.getvalue(), "scan.dcm").shape == (36, 40)


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_a_colour_dicom_is_reduced_to_luma_like_a_colour_png(photometric: str) -> None:
    """A colour secondary capture was refused while the same picture as a colour PNG was accepted."""
    from PIL import Image
    from pydicom.pixels import convert_color_space

    rgb = np.random.default_rng(3).integers(0, 256, (40, 60, 3)).astype(np.uint8)
    stored = rgb if photometric == "RGB" else convert_color_space(rgb, "RGB", "YBR_FULL")
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.zeros((40, 60), np.uint16))))
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = photometric, 3, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = stored.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    decoded, as_png = decode_bytes(out.getvalue(), "colour.dcm"), decode_bytes(png.getvalue(), "colour.png")
    # YBR -> RGB rounds: at most one grey level apart from the PNG
    assert np.abs(decoded.astype(int) - as_png.astype(int)).max() <= (0 if photometric == "RGB" else 1)


def test_a_path_is_read_only_up_to_what_an_image_within_the_pixel_limit_can_take(tmp_path: Path) -> None:
    # a path was read whole before any check: `pneumo predict /dev/zero`, or a huge file, filled memory
    import os
    import threading

    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:
        f.truncate(8 * 1000 + (1 << 20) + 1)  # sparse: no disk used; one byte over the bound for 1,000 pixels
    with pytest.raises(ImageDecodeError, match=r"huge\.png: file over 1056576 bytes, more than any image within"):
        decode_image(huge, max_pixels=1000)
    with pytest.raises(ImageDecodeError, match="/dev/zero: a folder or a device, not an image file"):
        decode_image("/dev/zero")  # read whole, it filled memory
    with pytest.raises(ImageDecodeError, match="a folder or a device"):
        decode_image(tmp_path)
    buf = io.BytesIO()
    Image.new("L", (40, 36), 200).save(buf, "PNG")
    pipe = tmp_path / "pipe.png"  # as `<(cat x.png)` or `cat x.png | pneumo predict RUN /dev/stdin` give
    os.mkfifo(pipe)
    writer = threading.Thread(target=pipe.write_bytes, args=(buf.getvalue(),), daemon=True)
    writer.start()
    assert decode_image(pipe).shape == (36, 40)
    writer.join(timeout=5)
    small = tmp_path / "small.png"
    Image.new("L", (40, 36), 200).save(small)
    assert decode_image(small, max_pixels=1440).shape == (36, 40)  # within the limits: decoded as before
