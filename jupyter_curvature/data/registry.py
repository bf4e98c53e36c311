"""Datasets by name: ``get_dataset("cifar10", root=..., split="train")``.

``"digits"`` (scikit-learn's bundled 8x8 digits) is the default and needs no files;
CIFAR-10/100, MNIST and FashionMNIST are read with torchvision from a local folder
(downloaded only with ``download=True``); ImageNet32 is read from a folder you fill.

Splits: ``"train"`` and ``"test"``; with ``val_size=N`` the last ``N`` training images
(the original package's convention, 5000 for CIFAR) become ``"val"`` and leave
``"train"``. Validation images never get the training augmentation. ``num_samples=n``
keeps ``n`` images of the split drawn without replacement by ``seed``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..core.vocabulary import accepts_aliases
from .builtin import digits_dataset
from .transforms import Normalization, image_transform, resolve_stats
from .vision import ImageNet32, cifar, default_root, mnist_like

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows about a dataset name.

    Attributes:
        name: canonical name.
        num_classes: number of labels.
        input_shape: ``(channels, height, width)`` of one image after the transforms.
        num_train, num_test: sizes of the full splits.
        description: one line for listings.
        needs_files: whether it reads files from ``root`` (everything but the digits).
        augment: whether the training split is augmented by default.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    num_train: int
    num_test: int
    description: str
    needs_files: bool = True
    augment: bool = True


_INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        "digits", 10, (1, 8, 8), 1500, 297,
        "scikit-learn's 8x8 handwritten digits, bundled (offline default)",
        needs_files=False, augment=False,
    ),
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32), 50000, 10000, "CIFAR-10 (torchvision)"),
    "cifar100": DatasetInfo(
        "cifar100", 100, (3, 32, 32), 50000, 10000, "CIFAR-100, fine labels (torchvision)"
    ),
    "mnist": DatasetInfo(
        "mnist", 10, (1, 28, 28), 60000, 10000, "MNIST (torchvision)", augment=False
    ),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", 10, (1, 28, 28), 60000, 10000, "Fashion-MNIST (torchvision)",
        augment=False,
    ),
    "imagenet32": DatasetInfo(
        "imagenet32", 1000, (3, 32, 32), 1281167, 50000,
        "downsampled ImageNet 32x32 (user folder; val_data is the test split)",
    ),
}  # fmt: skip
_ALIASES = {
    "fashionmnist": "fashion_mnist",
    "fmnist": "fashion_mnist",
    "imagenet_32": "imagenet32",
    "sklearn_digits": "digits",
}


def available_datasets() -> list[str]:
    """The names :func:`get_dataset` accepts."""
    return list(_INFO)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (case and ``-`` do not matter)."""
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__}")
    key = name.lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _INFO:
        close = difflib.get_close_matches(key, list(_INFO) + list(_ALIASES), n=2, cutoff=0.6)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ValueError(
            f"unknown dataset {name!r}{hint}; known datasets: {', '.join(available_datasets())}"
        )
    return _INFO[key]


def _take(dataset: Dataset, indices: torch.Tensor) -> Dataset:
    """``dataset`` restricted to ``indices`` (a TensorDataset stays a TensorDataset)."""
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[indices] for t in dataset.tensors))
    return Subset(dataset, indices.tolist())


def seeded_subset(dataset: Dataset, size: int, seed: int = 0) -> Dataset:
    """``size`` items of ``dataset`` drawn without replacement, reproducibly by ``seed``."""
    n = len(dataset)
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"num_samples must be a positive number of samples, got {size!r}")
    if size > n:
        raise ValueError(f"num_samples={size} is larger than the split ({n} samples)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]
    return _take(dataset, order.sort().values)


def train_val_split(train: Dataset, val: Dataset, val_size: int) -> tuple[Dataset, Dataset]:
    """The first ``len - val_size`` items of ``train`` and the last ``val_size`` of ``val``.

    ``train`` and ``val`` are the same images under different transforms (augmented and
    plain), so the validation images are never augmented.
    """
    n = len(train)
    if not isinstance(val_size, int) or val_size < 0:
        raise ValueError(f"val_size must be a non-negative number of samples, got {val_size!r}")
    if val_size >= n:
        raise ValueError(f"val_size={val_size} leaves no training data ({n} samples)")
    return _take(train, torch.arange(n - val_size)), _take(val, torch.arange(n - val_size, n))


def _builder(info: DatasetInfo) -> Callable[..., Dataset]:
    if info.name in ("cifar10", "cifar100"):
        return lambda root, train, transform, download, **kw: cifar(
            info.name, root, train=train, transform=transform, download=download, **kw
        )
    if info.name in ("mnist", "fashion_mnist"):
        which = "mnist" if info.name == "mnist" else "fashion_mnist"
        return lambda root, train, transform, download, **kw: mnist_like(
            which, root, train=train, transform=transform, download=download, **kw
        )

    def imagenet32(root, train, transform, download, **kw):
        if download:
            raise ValueError(
                "ImageNet32 cannot be downloaded automatically (image-net.org needs a "
                "registration); unpack it into a folder and pass root="
            )
        return ImageNet32(root, train=train, transform=transform, **kw)

    return imagenet32


@accepts_aliases(subset="num_samples", subset_seed="seed")
def get_dataset(
    name: str = "digits",
    root: str | Path | None = None,
    split: str = "train",
    *,
    augment: bool | None = None,
    normalization: Normalization = "dataset",
    val_size: int = 0,
    num_samples: int | None = None,
    seed: int = 0,
    download: bool = False,
    rgb32: bool = False,
    **kwargs: Any,
) -> Dataset:
    """A dataset split by name, ready for a ``DataLoader``: ``(image tensor, label)`` items.

    Args:
        name: one of :func:`available_datasets` (``"digits"`` needs no files).
        root: the folder holding the files (for CIFAR-10 the one that holds
            ``cifar-10-batches-py``); default :func:`default_root`
            (``$JUPYTER_CURVATURE_DATA`` or ``./data``). Ignored for the digits.
        split: ``"train"``, ``"val"`` (needs ``val_size``) or ``"test"``.
        augment: random crop with padding (4 pixels for 32x32, 2 for 28x28, 1 for the
            digits) and horizontal flip (CIFAR, ImageNet32, FashionMNIST); default: on
            for the training split of CIFAR and ImageNet32, off otherwise. Never applied
            to ``"val"`` or ``"test"``.
        normalization: ``"dataset"`` (the dataset's own channel statistics), a named set
            (``"imagenet"``, ``"cifar10"``, ...), a ``(mean, std)`` pair, or ``None``.
            The digits are standardised already and take only ``None``/``"dataset"``.
        val_size: number of training images held out, from the end, as ``"val"``.
        num_samples: keep this many images of the split, drawn by ``seed`` (old name
            ``subset``).
        seed: seed of that draw (old name ``subset_seed``).
        download: download missing files (not for ImageNet32 or the digits).
        rgb32: pad 28x28 greyscale images to 32x32 and repeat them to 3 channels, so the
            CIFAR networks of the zoo take MNIST and FashionMNIST.
        **kwargs: ``flatten=True``/``dtype=`` for the digits; ``verify=True`` (MD5 check)
            for CIFAR.

    Raises:
        ValueError: unknown name or split, or bad sizes.
        DatasetNotFoundError: the files are not in ``root`` (the message names the folder
            and the ``download=True`` switch).
        DatasetCorruptError: the files are there but cannot be read.
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "val" and val_size <= 0:
        raise ValueError(
            "split='val' needs val_size > 0: the number of training images to hold out "
            "(the original package used the last 5000: val_size=5000)"
        )
    if not isinstance(val_size, int) or val_size < 0:
        raise ValueError(f"val_size must be a non-negative number of samples, got {val_size!r}")
    want_augment = info.augment if augment is None else bool(augment)

    if info.name == "digits":
        if normalization not in (None, "dataset"):
            raise ValueError("the digits are standardised already: normalization must be 'dataset'")
        if rgb32:
            raise ValueError("rgb32 applies to MNIST and FashionMNIST, not to the digits")
        base = digits_dataset("test" if split == "test" else "train", **kwargs)
        if split != "test" and val_size:
            base_train, base = train_val_split(base, base, val_size)
            if split == "train":
                base = base_train
        dataset: Dataset = base
        if want_augment and split == "train":
            dataset = _AugmentedTensors(dataset, padding=1)
    else:
        if kwargs and info.name not in ("cifar10", "cifar100"):
            raise TypeError(f"unexpected arguments for {info.name}: {', '.join(kwargs)}")
        root = default_root() if root is None else Path(root)
        channels, size = info.input_shape[0], info.input_shape[1]
        channels_out = 3 if rgb32 else None
        if rgb32 and info.name not in ("mnist", "fashion_mnist"):
            raise ValueError("rgb32 applies to MNIST and FashionMNIST only")
        stats_name = "imagenet" if info.name == "imagenet32" else info.name
        stats = resolve_stats(normalization, stats_name, channels_out or channels)
        flip = info.name != "mnist"
        common = dict(
            size=size,
            stats=stats,
            crop_padding=4 if size >= 32 else 2,
            flip=flip,
            pad_to=32 if rgb32 else None,
            channels_out=channels_out,
        )
        plain = image_transform(augment=False, **common)
        build = _builder(info)
        if split == "test":
            dataset = build(root, False, plain, download, **kwargs)
        else:
            train_tf = image_transform(augment=want_augment, **common)
            dataset = build(root, True, train_tf if split == "train" else plain, download, **kwargs)
            if val_size:
                other = build(root, True, plain, False, **kwargs) if split == "train" else dataset
                train_part, val_part = train_val_split(dataset, other, val_size)
                dataset = train_part if split == "train" else val_part
    if num_samples is not None:
        dataset = seeded_subset(dataset, num_samples, seed)
    return dataset


class _AugmentedTensors(Dataset):
    """Random shifts (crop with zero padding) of image tensors, for the digits."""

    def __init__(self, base: Dataset, padding: int = 1) -> None:
        self.base = base
        self.padding = padding

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        x, y = self.base[index]
        if x.ndim == 3 and self.padding:
            p = self.padding
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            i, j = torch.randint(0, 2 * p + 1, (2,)).tolist()
            x = padded[:, i : i + x.shape[1], j : j + x.shape[2]]
        return x, y


@accepts_aliases(subset="num_samples", subset_seed="seed")
def get_loader(
    name: str | Dataset = "digits",
    root: str | Path | None = None,
    split: str = "train",
    *,
    batch_size: int = 128,
    shuffle: bool | None = None,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    **kwargs: Any,
) -> DataLoader:
    """A ``DataLoader`` over :func:`get_dataset` (or over a dataset you pass).

    Shuffling (default: on for ``split="train"``) and the draw of ``num_samples`` images
    are seeded by ``seed``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(name, Dataset):
        dataset = name
    else:
        dataset = get_dataset(name, root, split, seed=seed, **kwargs)
    if shuffle is None:
        shuffle = split == "train"
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
    )
