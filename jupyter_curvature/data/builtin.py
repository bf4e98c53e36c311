"""The built-in offline dataset: scikit-learn's bundled handwritten digits.

1797 greyscale 8x8 images of the digits 0-9 (the UCI ML optical recognition of
handwritten digits test set, E. Alpaydin and C. Kaynak, 1998), shipped inside the
scikit-learn wheel, so the demo, the notebooks and the tests never touch the network.
Pixel values 0..16 are scaled to [0, 1] and standardised with the training-split mean
and standard deviation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)
NUM_TEST = 297  # 1500 train + 297 test, a fixed seeded split
SPLIT_SEED = 0


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32) / 16.0, bunch.target.astype(np.int64)


def digits_dataset(
    split: str = "train",
    *,
    flatten: bool = False,
    dtype: torch.dtype = torch.float32,
    limit: int | None = None,
) -> TensorDataset:
    """The digits as a ``TensorDataset`` of ``(image, label)``.

    Args:
        split: ``"train"`` (1500 images), ``"test"`` (297) or ``"all"`` (1797).
        flatten: give 64-vectors instead of ``1 x 8 x 8`` images.
        dtype: floating dtype of the images (``torch.float64`` for reference runs).
        limit: keep only the first ``limit`` samples of the split.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of samples, got {limit}")
    images, labels = _digits_arrays()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    if split == "train":
        order = order[NUM_TEST:]
    elif split == "test":
        order = order[:NUM_TEST]
    train_idx = np.random.default_rng(SPLIT_SEED).permutation(len(labels))[NUM_TEST:]
    mean, std = images[train_idx].mean(), images[train_idx].std()
    x = torch.from_numpy((images[order] - mean) / std).to(dtype).unsqueeze(1)
    y = torch.from_numpy(labels[order])
    if flatten:
        x = x.flatten(1)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return TensorDataset(x, y)


def digits_loader(
    split: str = "train",
    *,
    batch_size: int = 128,
    shuffle: bool = False,
    flatten: bool = False,
    dtype: torch.dtype = torch.float32,
    limit: int | None = None,
    seed: int = 0,
) -> DataLoader:
    """A ``DataLoader`` over :func:`digits_dataset`; shuffling is seeded by ``seed``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    dataset = digits_dataset(split, flatten=flatten, dtype=dtype, limit=limit)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
