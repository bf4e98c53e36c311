"""CIFAR-10/100, MNIST, FashionMNIST (torchvision) and ImageNet32 from a local folder.

Nothing is downloaded unless asked (``download=True``); a missing folder raises
:class:`DatasetNotFoundError` naming the folder it looked in, what it expected there and
the ``download=True`` switch, at once. Unreadable files raise :class:`DatasetCorruptError`
naming the file. Downloads run with a socket timeout, so an offline machine gets an
error, not a hang.

torchvision's CIFAR classes check every file's MD5 sum on construction; here the files
are only required to exist and to parse (``verify=True`` restores the MD5 check), so
that small files in the same format (the tests write them) load too.
"""

from __future__ import annotations

import os
import pickle
import socket
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not in the folder (the message names it and the remedy)."""


class DatasetCorruptError(ValueError):
    """A dataset file exists but cannot be read (truncated, wrong format)."""


DOWNLOAD_TIMEOUT_S = 60.0


def default_root() -> Path:
    """The data folder: ``$JUPYTER_CURVATURE_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("JUPYTER_CURVATURE_DATA", "data")).expanduser()


@contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _download(title: str, folder: Path, fn) -> None:
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            fn()
    except Exception as exc:  # network errors come in many types
        raise DatasetNotFoundError(
            f"downloading {title} into {folder} failed ({type(exc).__name__}: {exc}). "
            "If this machine is offline, copy the files there by hand."
        ) from exc


@lru_cache(maxsize=1)
def _cifar_classes():
    from torchvision import datasets
    from torchvision.datasets.utils import check_integrity

    class _LocalCIFARMixin:
        """Existence (and parse) checks instead of MD5 sums, unless ``verify``."""

        verify = False

        def _check_integrity(self) -> bool:  # noqa: D401
            for filename, md5 in self.train_list + self.test_list:
                path = os.path.join(self.root, self.base_folder, filename)
                if not check_integrity(path, md5 if self.verify else None):
                    return False
            return True

        def _load_meta(self) -> None:
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            if not os.path.isfile(path):
                self.classes = [str(i) for i in sorted(set(self.targets))]
            else:
                if self.verify and not check_integrity(path, self.meta["md5"]):
                    raise DatasetCorruptError(f"{path} fails its MD5 check")
                with open(path, "rb") as f:
                    self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    class LocalCIFAR10(_LocalCIFARMixin, datasets.CIFAR10):
        pass

    class LocalCIFAR100(_LocalCIFARMixin, datasets.CIFAR100):
        pass

    return LocalCIFAR10, LocalCIFAR100


def cifar(
    which: str,
    root: str | Path,
    *,
    train: bool,
    transform=None,
    download: bool = False,
    verify: bool = False,
) -> Dataset:
    """CIFAR-10 (``which="cifar10"``) or CIFAR-100 from ``root/cifar-10(0)-batches-py``.

    ``root`` is the folder that holds ``cifar-10-batches-py`` (or ``cifar-100-python``),
    as for torchvision.
    """
    from torchvision.datasets.utils import download_and_extract_archive

    cls10, cls100 = _cifar_classes()
    base = cls10 if which == "cifar10" else cls100
    cls = type(base.__name__, (base,), {"verify": bool(verify)})
    title = "CIFAR-10" if which == "cifar10" else "CIFAR-100"
    root = Path(root).expanduser().absolute()
    folder = root / cls.base_folder
    names = [f for f, _ in cls.train_list + cls.test_list]

    def missing() -> list[str]:
        return [n for n in names if not (folder / n).is_file()]

    if download and missing():
        root.mkdir(parents=True, exist_ok=True)
        _download(
            title,
            folder,
            lambda: download_and_extract_archive(
                cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5
            ),
        )
    if missing():
        raise DatasetNotFoundError(
            f"{title} was not found in {folder} (missing: {', '.join(missing())}). Copy the "
            f"extracted '{cls.filename}' there (root= is the folder that holds "
            f"'{cls.base_folder}'), or pass download=True to download it."
        )
    try:
        return cls(str(root), train=train, transform=transform, download=False)
    except DatasetCorruptError:
        raise
    except RuntimeError as exc:
        raise DatasetCorruptError(
            f"{title} files in {folder} fail their checksum ({exc}); download them again "
            "(delete the folder and pass download=True)"
        ) from exc
    except Exception as exc:  # unpickling/reshaping errors of damaged files
        raise DatasetCorruptError(
            f"{title} files in {folder} could not be read ({type(exc).__name__}: {exc}); "
            "they are truncated or not in the CIFAR python format. Download them again "
            "(delete the folder and pass download=True)."
        ) from exc


def mnist_like(
    which: str, root: str | Path, *, train: bool, transform=None, download: bool = False
) -> Dataset:
    """MNIST (``which="mnist"``) or FashionMNIST from ``root/<Name>/raw/*-ubyte``."""
    from torchvision import datasets

    cls = datasets.MNIST if which == "mnist" else datasets.FashionMNIST
    title = "MNIST" if which == "mnist" else "FashionMNIST"
    root = Path(root).expanduser().absolute()
    folder = root / cls.__name__ / "raw"
    names = [os.path.splitext(url)[0] for url, _ in cls.resources]
    if download and not all((folder / n).is_file() for n in names):
        root.mkdir(parents=True, exist_ok=True)
        _download(title, folder, lambda: cls(str(root), train=train, download=True))
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{title} was not found in {folder} (missing: {', '.join(missing)}). Copy the "
            "unpacked idx files there (root= is the folder that holds "
            f"'{cls.__name__}/raw'), or pass download=True to download them."
        )
    try:
        return cls(str(root), train=train, transform=transform, download=False)
    except Exception as exc:
        raise DatasetCorruptError(
            f"{title} files in {folder} could not be read ({type(exc).__name__}: {exc}); "
            "they are truncated or not idx ubyte files. Download them again "
            "(delete the folder and pass download=True)."
        ) from exc


class ImageNet32(Dataset):
    """Downsampled ImageNet 32x32 (Chrabaszcz, Loshchilov & Hutter 2017) from a folder.

    The files are the official pickles (or ``.npz`` files with the same keys):
    ``train_data_batch_1`` ... ``train_data_batch_10`` and ``val_data``, each a dict with
    ``data`` (``N x 3072`` uint8, channel-major like CIFAR) and ``labels`` (1..1000).
    They may lie in ``root`` itself or in ``root/Imagenet32_train`` and
    ``root/Imagenet32_val``, as the archives unpack. Nothing is downloaded: the data
    needs a (free) registration at image-net.org.
    """

    def __init__(self, root: str | Path, *, train: bool = True, transform=None) -> None:
        self.root = Path(root).expanduser().absolute()
        self.train = train
        self.transform = transform
        stem = "train_data_batch_" if train else "val_data"
        sub = "Imagenet32_train" if train else "Imagenet32_val"
        files: list[Path] = []
        for folder in (self.root, self.root / sub):
            if folder.is_dir():
                files = sorted(
                    (p for p in folder.iterdir() if p.name.startswith(stem) and p.is_file()),
                    key=lambda p: (len(p.stem), p.name),
                )
            if files:
                break
        if not files:
            raise DatasetNotFoundError(
                f"ImageNet32 ({'train' if train else 'val'}) was not found in {self.root} "
                f"(expected {stem}{'1..10' if train else ''} there or in {self.root / sub}). "
                "Download the 32x32 downsampled ImageNet from image-net.org (it needs a "
                "registration; there is no download=True) and unpack it into that folder."
            )
        data, labels = [], []
        for path in files:
            entry = self._read(path)
            data.append(np.asarray(entry["data"], dtype=np.uint8))
            labels.append(np.asarray(entry["labels"], dtype=np.int64))
        try:
            self.data = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        except ValueError as exc:
            raise DatasetCorruptError(
                f"ImageNet32 files in {files[0].parent} do not hold N x 3072 images: {exc}"
            ) from exc
        self.targets = (np.concatenate(labels) - 1).tolist()  # 1..1000 -> 0..999
        if len(self.targets) != len(self.data):
            raise DatasetCorruptError(
                f"ImageNet32 files in {files[0].parent} hold {len(self.data)} images but "
                f"{len(self.targets)} labels"
            )

    @staticmethod
    def _read(path: Path) -> dict:
        try:
            if path.suffix == ".npz":
                with np.load(path) as z:
                    return {"data": z["data"], "labels": z["labels"]}
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            return {"data": entry["data"], "labels": entry["labels"]}
        except Exception as exc:
            raise DatasetCorruptError(
                f"ImageNet32 file {path} could not be read ({type(exc).__name__}: {exc})"
            ) from exc

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        img = Image.fromarray(self.data[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]
