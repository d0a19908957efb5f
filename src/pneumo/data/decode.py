"""Decode any supported input to one grayscale uint8 array: the first step of the walk of an image.

Supported: JPEG, PNG (8- and 16-bit, RGB, RGBA, palette), BMP/TIFF, DICOM (via pydicom), PIL images and numpy
arrays. Images deeper than 8 bits are stretched linearly from their own min..max to 0..255 (documented choice: 16-bit
PNGs in the wild carry 10-16 significant bits, so a fixed divisor would make many of them nearly black). Colour is
reduced to luma with Pillow's ITU-R 601-2 weights, for files and arrays alike. Files are turned upright by their EXIF
orientation (a phone photo of a film); the Kermany files carry none. Other formats Pillow knows (EPS, which would run
Ghostscript, and the like) are refused.
"""

from __future__ import annotations

import io
import re
import stat
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pneumo.utils.errors import PneumoError

# Decompression-bomb guard: the largest real Kermany originals have about 7 megapixels.
DEFAULT_MAX_PIXELS = 64_000_000
# Below this many pixels on the short side an input is no radiograph (a 1x1 PNG, an icon): it is refused rather than
# upscaled into a confident label. The smallest Kermany original is 384 px on its short side.
MIN_SIDE = 32
# A progressive JPEG is decoded scan by scan, each over the whole image: thousands of tiny scans make a small file take
# minutes (libjpeg-turbo's djpeg has -maxscans for this). Real files have 1 (baseline) to about 10.
MAX_JPEG_SCANS = 256
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
# The raster formats Pillow may open (its JPEG opener also reads MPO camera files); DICOM goes through pydicom.
PIL_FORMATS = ("JPEG", "PNG", "BMP", "TIFF")
_LUMA = np.array([0.299, 0.587, 0.114])  # Pillow's convert("L") weights

ImageInput = str | Path | bytes | Image.Image | np.ndarray
PixelTransform = Callable[[np.ndarray], np.ndarray]


class ImageDecodeError(PneumoError, ValueError):
    """An input that cannot be turned into an image; the message names the source and the reason."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


_CHUNK = 1 << 20  # pixels per step where a whole-image temporary would cost 8 bytes a pixel


def _stretch_to_uint8(arr: np.ndarray, name: str, transform: PixelTransform | None = None) -> np.ndarray:
    """``transform(arr)`` (identity when ``None``), stretched from its min..max to 0..255.

    ``transform`` must map each pixel value on its own (a rescale, a window, a lookup table). Memory stays near the
    size of the input: a 64-megapixel 16-bit upload of 100 KB would otherwise cost over 1 GiB of float64 copies. For
    8- and 16-bit integers the transform is applied once per possible value and the image is mapped through the
    resulting 256- or 65,536-entry table; other types are transformed a block of pixels at a time.
    """
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    flat = np.ascontiguousarray(arr).reshape(-1)
    if arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2:
        return _stretch_by_table(flat, name, transform).reshape(arr.shape)
    values = np.empty(flat.size, dtype=np.float32)
    lo, hi = np.inf, -np.inf
    for start in range(0, flat.size, _CHUNK):
        block = flat[start : start + _CHUNK].astype(np.float64)
        block = transform(block) if transform is not None else block
        if not np.isfinite(block).all():
            raise ImageDecodeError(name, "image contains NaN or infinite values")
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
        values[start : start + _CHUNK] = block
    result = np.zeros(flat.size, dtype=np.uint8)
    if hi > lo:
        for start in range(0, flat.size, _CHUNK):
            block = values[start : start + _CHUNK].astype(np.float64)
            result[start : start + _CHUNK] = np.round((block - lo) * (255.0 / (hi - lo)))
    return result.reshape(arr.shape)


def _stretch_by_table(flat: np.ndarray, name: str, transform: PixelTransform | None) -> np.ndarray:
    unsigned = np.dtype(f"u{flat.dtype.itemsize}")
    index = flat.view(unsigned)  # signed or byte-swapped values become table positions, without a copy
    domain = np.arange(1 << (8 * flat.dtype.itemsize), dtype=unsigned).view(flat.dtype)  # every possible value
    present = np.zeros(domain.size, dtype=bool)
    for start in range(0, index.size, _CHUNK):  # numpy indexes with intp: 8 bytes a pixel if done at once
        present[index[start : start + _CHUNK]] = True
    values = np.asarray(transform(domain) if transform is not None else domain, dtype=np.float64)
    if values.shape != domain.shape:
        raise ImageDecodeError(name, f"pixel transform changed the shape of its input ({values.shape})")
    used = values[present]
    if not np.isfinite(used).all():
        raise ImageDecodeError(name, "image contains NaN or infinite values")
    lo, hi = float(used.min()), float(used.max())
    result = np.zeros(flat.size, dtype=np.uint8)
    if hi > lo:
        table = np.round((np.clip(np.nan_to_num(values, nan=lo), lo, hi) - lo) * (255.0 / (hi - lo)))
        table = table.astype(np.uint8)
        for start in range(0, index.size, _CHUNK):
            result[start : start + _CHUNK] = table[index[start : start + _CHUNK]]
    return result


# Signatures of the raster formats Pillow opens: such bytes are decoded as what they are, whatever their name says.
_JPEG_MAGIC = b"\xff\xd8\xff"
_PIL_MAGIC = (b"\x89PNG\r\n\x1a\n", _JPEG_MAGIC, b"II*\x00", b"MM\x00*", b"BM")
DEFLATED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1.99"
RLE_TRANSFER_SYNTAX = "1.2.840.10008.1.2.5"


def is_dicom(data: bytes, name: str) -> bool:
    """DICOM by its ``DICM`` magic, or by a ``.dcm``/``.dicom`` name (files without the preamble) unless the bytes
    are a PNG, JPEG, TIFF or BMP."""
    if data[128:132] == b"DICM":
        return True
    return Path(name).suffix.lower() in DICOM_SUFFIXES and not data.startswith(_PIL_MAGIC)


def read_dicom(data: bytes, name: str, *, stop_before_pixels: bool = False) -> Any:
    """pydicom's dataset of ``data``, after refusing what could not be bounded before it is expanded.

    pydicom inflates a deflated data set whole (one unbounded ``zlib.decompress``, header-only reads included): 1 KiB
    can become 1 MiB, so such files are refused from their file meta group, read first.
    """
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_preamble  # no public reader for a buffer

    try:
        fp = io.BytesIO(data)
        read_preamble(fp, True)
        syntax = str(_read_file_meta_info(fp).get("TransferSyntaxUID", ""))
    except Exception as exc:  # pydicom raises many types for broken files
        raise ImageDecodeError(name, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if syntax == DEFLATED_TRANSFER_SYNTAX:
        raise ImageDecodeError(
            name, "deflated DICOM is not supported (its size cannot be checked before inflating); export it unzipped"
        )
    try:
        return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=stop_before_pixels)
    except Exception as exc:
        raise ImageDecodeError(name, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc


def _check_compressed_frame(ds: Any, name: str, rows: int, cols: int, max_pixels: int) -> None:
    """An encapsulated frame is decoded at the size its own codestream declares, not the header's Rows x Columns:
    check that size (from the codestream header, nothing decoded) before pydicom decodes it. RLE is decoded into
    the header's size and needs no check."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        encapsulated = syntax is not None and syntax.is_encapsulated
    except ValueError:  # pydicom's "UID is not a transfer syntax" for one it does not know
        raise ImageDecodeError(name, f"unknown DICOM transfer syntax {syntax}") from None
    if not encapsulated or str(syntax) == RLE_TRANSFER_SYNTAX:
        return
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception as exc:
        raise ImageDecodeError(name, f"cannot read the compressed frame (transfer syntax {syntax})") from exc
    if frame.startswith(_JPEG_MAGIC):
        _check_jpeg_scans(frame, name)  # the same guard as for a bare JPEG: pydicom hands the frame to Pillow
    try:
        with Image.open(io.BytesIO(frame)) as img:
            width, height = img.size
    except Exception as exc:  # not str(exc): Pillow's message names a BytesIO object and its address
        raise ImageDecodeError(
            name,
            f"cannot check the size of the compressed frame (transfer syntax {syntax}) before decoding "
            f"({type(exc).__name__})",
        ) from exc
    if (width, height) != (cols, rows) or width * height > max_pixels:
        raise ImageDecodeError(
            name, f"compressed frame of {width}x{height} pixels, header says {cols}x{rows} (limit {max_pixels})"
        )


def _decode_dicom(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = read_dicom(data, name)
    try:
        if "PixelData" not in ds:
            raise ImageDecodeError(name, "DICOM file has no pixel data")
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    except ImageDecodeError:
        raise
    except Exception as exc:  # elements are converted lazily: an unknown VR surfaces here (NotImplementedError...)
        raise ImageDecodeError(name, f"DICOM header has an unreadable frame count or image size ({exc})") from exc
    if frames > 1:
        raise ImageDecodeError(name, f"multi-frame DICOM ({frames} frames) is not supported; export one frame")
    if rows * cols > max_pixels:  # checked from the header, before any pixel is decoded
        raise ImageDecodeError(name, f"image of {cols}x{rows} pixels exceeds the limit of {max_pixels}")
    _check_compressed_frame(ds, name, rows, cols, max_pixels)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise ImageDecodeError(name, f"cannot decode DICOM pixel data ({exc})") from exc
    if arr.ndim == 3 and arr.shape[-1] == 3:
        # a colour secondary capture (a scanned film, a screenshot): pydicom returns RGB (YBR converted), which is
        # reduced to luma like a colour PNG; the modality and VOI LUTs apply to monochrome data only
        return array_to_gray(arr, name)
    if arr.ndim != 2:
        raise ImageDecodeError(name, f"expected a single grayscale or RGB frame, got pixel array of shape {arr.shape}")

    def to_display(values: np.ndarray) -> np.ndarray:
        # modality LUT (rescale slope/intercept), then the VOI LUT or window centre/width when the file has one
        return apply_voi_lut(apply_modality_lut(values, ds), ds)

    try:
        out = _stretch_to_uint8(arr, name, to_display)
    except ImageDecodeError:
        raise
    except Exception as exc:  # pydicom's LUTs raise many types for malformed attributes (a zero window width...)
        raise ImageDecodeError(name, f"cannot apply the DICOM rescale or window ({type(exc).__name__}: {exc})") from exc
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        out = 255 - out  # MONOCHROME1: low values are bright
    return out


def pil_to_gray(img: Image.Image, name: str = "<PIL image>") -> np.ndarray:
    """A PIL image of any mode as grayscale uint8 (alpha composited onto black)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _stretch_to_uint8(np.asarray(img), name)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode == "LAB":  # its L band is the lightness; Pillow cannot convert LAB to L directly
        img = img.getchannel("L")
    if img.mode != "L":
        try:
            img = img.convert("L")
        except ValueError as exc:
            raise ImageDecodeError(name, f"pixel mode {img.mode} cannot be converted to grayscale ({exc})") from exc
    return np.asarray(img, dtype=np.uint8)


def array_to_gray(arr: np.ndarray, name: str = "<array>") -> np.ndarray:
    """HxW or HxWxC (C = 1, 3 RGB, 4 RGBA) as grayscale uint8: uint8 colour goes through Pillow as a file would;
    floats in [0, 1] are scaled by 255; anything else is stretched from its min..max."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
        if arr.dtype == np.uint8:
            return pil_to_gray(Image.fromarray(np.ascontiguousarray(arr)), name)
        arr = arr[..., :3].astype(np.float64) @ _LUMA
    if arr.ndim != 2:
        raise ImageDecodeError(name, f"expected an HxW or HxWxC array, got shape {arr.shape}")
    if arr.size == 0:
        raise ImageDecodeError(name, f"the array is empty (shape {arr.shape})")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating) and arr.min() >= 0.0 and arr.max() <= 1.0:
        return np.round(arr * 255.0).astype(np.uint8)
    return _stretch_to_uint8(arr, name)


def decode_bytes(
    data: bytes, name: str = "<bytes>", *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE
) -> np.ndarray:
    """Decode encoded bytes (any supported format) to grayscale uint8; refuse images over ``max_pixels`` pixels or
    under ``min_side`` pixels on a side."""
    if not data:
        raise ImageDecodeError(name, "file is empty")
    if is_dicom(data, name):
        return _check_pixels(_decode_dicom(data, name, max_pixels), name, max_pixels, min_side)
    if data.startswith(_JPEG_MAGIC):
        _check_jpeg_scans(data, name)
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: pneumo's limit below is the one that applies
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
        with img:
            _check_size(img.size[0], img.size[1], name, max_pixels, min_side)
            if img.format == "TIFF":
                _refuse_multi_page(img, name)
            img.load()
            return pil_to_gray(ImageOps.exif_transpose(img), name)
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(name, "not a supported image format (JPEG, PNG, BMP, TIFF or DICOM)") from exc
    except Image.DecompressionBombError as exc:  # Pillow's own guard fires at open, before ours could
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"image of {found.group(1)} pixels" if found else "image"
        raise ImageDecodeError(name, f"{size} exceeds the limit of {max_pixels} pixels") from exc
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, EOFError, struct.error) as exc:
        if isinstance(exc, ImageDecodeError):
            raise
        # Pillow's parsers raise these for malformed headers (a TIFF page without dimensions: TypeError)
        raise ImageDecodeError(name, f"truncated or corrupt image ({type(exc).__name__}: {exc})") from exc


def _refuse_multi_page(img: Image.Image, name: str) -> None:
    """Refuse a TIFF with a second page, as a multi-frame DICOM is. Only the second page is looked for: Pillow's
    ``n_frames`` parses every page header, in time that grows faster than the page count (80,000 one-pixel pages in
    7 MB took 50 s, holding a service thread), and a malformed later page raised a TypeError."""
    try:
        img.seek(1)
    except EOFError:
        img.seek(0)
        return
    except Exception as exc:  # a malformed second page header
        raise ImageDecodeError(name, f"multi-page TIFF with a malformed second page ({type(exc).__name__})") from exc
    raise ImageDecodeError(name, "multi-page TIFF is not supported; export one page")


def _check_jpeg_scans(data: bytes, name: str) -> None:
    """Refuse a JPEG whose scan count makes its decoding time unbounded (each repeated progressive scan is decoded)."""
    # start-of-scan markers: inside entropy-coded data a 0xFF byte is followed by 0x00, so only markers match
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        reason = f"JPEG with {scans} scans (limit {MAX_JPEG_SCANS}): its decoding time has no bound"
        raise ImageDecodeError(name, reason)


def _check_size(width: int, height: int, name: str, max_pixels: int, min_side: int) -> None:
    if width * height > max_pixels:
        raise ImageDecodeError(name, f"image of {width}x{height} pixels exceeds the limit of {max_pixels}")
    if min(width, height) < min_side:
        raise ImageDecodeError(
            name, f"image of {width}x{height} pixels is too small for a radiograph (at least {min_side} px a side)"
        )


def _check_pixels(arr: np.ndarray, name: str, max_pixels: int, min_side: int) -> np.ndarray:
    _check_size(arr.shape[1], arr.shape[0], name, max_pixels, min_side)
    return arr


def max_file_bytes(max_pixels: int) -> int:
    """The most bytes a file of at most ``max_pixels`` pixels needs: uncompressed, four 16-bit channels, plus 1 MiB of
    headers. A path is read up to this, so a huge or endless file (``/dev/zero``) is refused without filling memory."""
    return 8 * max_pixels + (1 << 20)


def decode_image(
    source: ImageInput | Any, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE
) -> np.ndarray:
    """Any supported input (path, bytes, PIL image, numpy array) as a grayscale uint8 HxW array; refuse images over
    ``max_pixels`` pixels or under ``min_side`` pixels on a side (not a radiograph)."""
    if isinstance(source, np.ndarray):
        return _check_pixels(array_to_gray(source), "<array>", max_pixels, min_side)
    if isinstance(source, Image.Image):  # turned upright like a file (a no-op without an orientation tag)
        return _check_pixels(pil_to_gray(ImageOps.exif_transpose(source)), "<PIL image>", max_pixels, min_side)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_bytes(bytes(source), max_pixels=max_pixels, min_side=min_side)
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            mode = path.stat().st_mode
        except OSError:
            mode = None  # the open below names the problem
        # a folder, or a device (/dev/zero, a terminal as /dev/stdin) that gives no image; a pipe is read (`<(...)`,
        # `cat x.png | pneumo predict RUN /dev/stdin`), bounded like a file
        if mode is not None and (stat.S_ISDIR(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            raise ImageDecodeError(str(path), "a folder or a device, not an image file")
        limit = max_file_bytes(max_pixels)
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except OSError as exc:
            raise ImageDecodeError(str(path), f"cannot read file ({exc.strerror or exc})") from exc
        if len(data) > limit:
            reason = f"file over {limit} bytes, more than any image within the limit of {max_pixels} pixels takes"
            raise ImageDecodeError(str(path), reason)
        return decode_bytes(data, str(path), max_pixels=max_pixels, min_side=min_side)
    raise TypeError(f"cannot decode an image from {type(source).__name__}")
