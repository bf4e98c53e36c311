"""Datasets: the built-in offline digits, torchvision datasets from a local folder, and the
offline character-level text of the standard library's sources (:mod:`.text`).

``get_dataset(name, root=..., split=...)`` / ``available_datasets()`` choose by name,
``"digits"`` (bundled with scikit-learn) being the offline default.
"""

from .builtin import IMAGE_SHAPE, NUM_CLASSES, digits_dataset, digits_loader
from .registry import (
    DatasetInfo,
    available_datasets,
    dataset_info,
    get_dataset,
    get_loader,
    seeded_subset,
    train_val_split,
)
from .text import VOCAB_SIZE, text_dataset
from .transforms import STATS
from .vision import DatasetCorruptError, DatasetNotFoundError, ImageNet32, default_root

__all__ = [
    "IMAGE_SHAPE",
    "NUM_CLASSES",
    "STATS",
    "VOCAB_SIZE",
    "DatasetCorruptError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "ImageNet32",
    "available_datasets",
    "dataset_info",
    "default_root",
    "digits_dataset",
    "digits_loader",
    "get_dataset",
    "get_loader",
    "seeded_subset",
    "text_dataset",
    "train_val_split",
]
