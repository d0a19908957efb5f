"""Data layer: records, tasks, splits, decoding, the preprocessing contract and the image cache."""

from pneumo.data.cache import CachedImages, ImageCache, default_cache_root
from pneumo.data.dataset import CachedImageDataset, SplitData, build_split
from pneumo.data.decode import ImageDecodeError, decode_bytes, decode_image
from pneumo.data.preprocess import PreprocessContract, normalize, preprocess_image, resize_gray
from pneumo.data.records import (
    LABELS,
    SUBTYPES,
    DatasetError,
    Record,
    dataset_root,
    discover,
    parse_file_name,
)
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
    "parse_file_name",
    "preprocess_image",
    "read_split_csv",
    "resize_gray",
    "write_split_csv",
]
