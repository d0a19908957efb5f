"""Tiny run folders written per the checkpoint format 1 contract, and image fixtures of every supported kind."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pneumo.data.preprocess import PreprocessContract
from pneumo.models import get_model
from pneumo.models.registry import get_model_spec
from pneumo.utils.atomic import save_safetensors

TINY_CNN = {"widths": [4, 8], "depths": [1, 1]}
CLASSES = {"binary": ["NORMAL", "PNEUMONIA"], "three": ["NORMAL", "BACTERIA", "VIRUS"]}


def make_fake_run(
    tmp_path: Path,
    *,
    name: str = "run",
    arch: str = "cnn",
    task: str = "binary",
    image_size: int = 32,
    geometry: str = "squash",
    dummy_class: bool = False,
    operating_point: dict[str, Any] | None = None,
    temperature: float | None = None,
    ood: dict[str, Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """A run folder (``best.safetensors`` + ``checkpoint.json``) holding a randomly initialised model."""
    class_names = CLASSES[task]
    num_outputs = len(class_names) + int(dummy_class)
    kwargs = dict(TINY_CNN if arch == "cnn" and kwargs is None else kwargs or {})
    torch.manual_seed(seed)
    model = get_model(arch, num_classes=num_outputs, **kwargs).eval()
    # Random BN statistics so that eval mode differs from a freshly initialised identity.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    mean, std = get_model_spec(arch).mean, get_model_spec(arch).std
    run = tmp_path / name
    run.mkdir(parents=True)
    save_safetensors(run / "best.safetensors", model.state_dict())
    meta = {
        "format": 1,
        "pneumo_version": "0.1.0",
        "task": task,
        "class_names": class_names,
        "model": {"name": arch, "num_outputs": num_outputs, "in_chans": 1, "kwargs": kwargs},
        "dummy_class": dummy_class,
        "preprocess": PreprocessContract(image_size, geometry, mean=mean, std=std).to_dict(),
        "best": {"epoch": 1, "metric": "val_auroc", "value": 0.5},
        "last": {"epoch": 1},
        "operating_point": operating_point,
        "temperature": temperature,
        "ood": ood,
    }
    (run / "checkpoint.json").write_text(json.dumps(meta, indent=2))
    return run


@pytest.fixture
def fake_run(tmp_path: Path) -> Path:
    return make_fake_run(tmp_path)


def xray_like(height: int = 48, width: int = 40, seed: int = 0) -> np.ndarray:
    """A smooth grayscale uint8 picture with structure (so different images give different predictions)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = 0.5 + 0.3 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(4 * yy + rng.uniform(0, 6))
    base += 0.1 * rng.standard_normal((height, width))
    return np.clip(base * 255, 0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **save_kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


def dicom_bytes(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    frames: int = 1,
    with_pixels: bool = True,
) -> bytes:
    """A minimal, valid DICOM file (Explicit VR Little Endian) holding ``pixels`` (uint16 H x W)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "TEST"
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if frames > 1:
        ds.NumberOfFrames = frames
        pixels = np.stack([pixels] * frames)
    if with_pixels:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_announcing(rows: int, cols: int) -> bytes:
    """A DICOM whose header claims ``rows x cols`` pixels but carries only a few bytes of pixel data."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.zeros((4, 4), np.uint16))))
    ds.Rows, ds.Columns = rows, cols
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
