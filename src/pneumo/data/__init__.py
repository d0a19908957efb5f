"""Data layer: records, tasks, splits, decoding, the preprocessing contract and the image cache.

The names below load their module on first use (PEP 562), so that ``pneumo.data.decode`` and
``pneumo.data.preprocess`` stay importable without PyTorch: an ONNX-only deployment decodes and preprocesses with
them (``pneumo.load("model.onnx")``), and the cache and dataset modules, which need torch, load only when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pneumo.utils.lazy import lazy_exports

if TYPE_CHECKING:
    from pneumo.data.cache import CachedImages, ImageCache, default_cache_root
    from pneumo.data.dataset import CachedImageDataset, SplitData, build_split
    from pneumo.data.decode import ImageDecodeError, decode_bytes, decode_image
    from pneumo.data.preprocess import PreprocessContract, normalize, normalize_array, preprocess_image, resize_gray
    from pneumo.data.records import LABELS, SUBTYPES, DatasetError, Record, dataset_root, discover, parse_file_name
    from pneumo.data.splits import check_disjoint, make_split, read_split_csv, write_split_csv
    from pneumo.data.tasks import TASKS, Task, get_task

__all__ = [
    "LABELS",
    "SUBTYPES",
    "TASKS",
    "CachedImageDataset",
    "CachedImages",
    "DatasetError",
    "ImageCache",
    "ImageDecodeError",
    "PreprocessContract",
    "Record",
    "SplitData",
    "Task",
    "build_split",
    "check_disjoint",
    "dataset_root",
    "decode_bytes",
    "decode_image",
    "default_cache_root",
    "discover",
    "get_task",
    "make_split",
    "normalize",
    "normalize_array",
    "parse_file_name",
    "preprocess_image",
    "read_split_csv",
    "resize_gray",
    "write_split_csv",
]

_EXPORTS = {
    "cache": ("CachedImages", "ImageCache", "default_cache_root"),
    "dataset": ("CachedImageDataset", "SplitData", "build_split"),
    "decode": ("ImageDecodeError", "decode_bytes", "decode_image"),
    "preprocess": ("PreprocessContract", "normalize", "normalize_array", "preprocess_image", "resize_gray"),
    "records": ("LABELS", "SUBTYPES", "DatasetError", "Record", "dataset_root", "discover", "parse_file_name"),
    "splits": ("check_disjoint", "make_split", "read_split_csv", "write_split_csv"),
    "tasks": ("TASKS", "Task", "get_task"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__getattr__, __dir__ = lazy_exports(__name__, _MODULE_OF)
