"""Datasets: the digits, and CIFAR/MNIST/ImageNet32 read from small files in the real formats."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from jupyter_curvature import data
from jupyter_curvature.data import (
    DatasetCorruptError,
    DatasetNotFoundError,
    available_datasets,
    get_dataset,
    get_loader,
)

# ---- writers for the real on-disk formats ----------------------------------------


def _images(n: int, seed: int, shape=(3, 32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_cifar10(root, per_batch: int = 4):
    """``cifar-10-batches-py``: five training pickles, a test pickle and the meta file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        x = _images(per_batch, i)
        labels = [(3 * i + j) % 10 for j in range(per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": x.reshape(per_batch, -1),
                         "labels": labels, "filenames": [f"{j}.png" for j in range(per_batch)]}, f)  # fmt: skip
        images[name] = (x, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{c}" for c in range(10)], "num_cases_per_batch": 4}, f)
    return images


def write_cifar100(root, n_train: int = 12, n_test: int = 5):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for name, n, seed in (("train", n_train, 10), ("test", n_test, 11)):
        x = _images(n, seed)
        fine = [(7 * j) % 100 for j in range(n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": x.reshape(n, -1), "fine_labels": fine,
                         "coarse_labels": [v // 5 for v in fine]}, f)  # fmt: skip
        out[name] = (x, fine)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{c}" for c in range(100)],
                     "coarse_label_names": [f"c{c}" for c in range(20)]}, f)  # fmt: skip
    return out


def write_idx(folder, prefix: str, n: int, seed: int):
    """MNIST idx ubyte files: big-endian magic 2051/2049, sizes, then the bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    x = _images(n, seed, shape=(28, 28))
    y = np.arange(n, dtype=np.uint8) % 10
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 2051, n, 28, 28) + x.tobytes()
    )
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + y.tobytes())
    return x, y


def write_mnist(root, cls_name="MNIST", n_train=6, n_test=3):
    raw = root / cls_name / "raw"
    return write_idx(raw, "train", n_train, 1), write_idx(raw, "t10k", n_test, 2)


def write_imagenet32(root, batches=2, per_batch=3, subfolders=True):
    train_dir = root / "Imagenet32_train" if subfolders else root
    val_dir = root / "Imagenet32_val" if subfolders else root
    train_dir.mkdir(parents=True, exist_ok=True)
    val_dir.mkdir(parents=True, exist_ok=True)
    for b in range(1, batches + 1):
        x = _images(per_batch, 20 + b)
        with open(train_dir / f"train_data_batch_{b}", "wb") as f:
            pickle.dump({"data": x.reshape(per_batch, -1),
                         "labels": [1000 - b, 1 + b, 5], "mean": np.zeros(3072)}, f)  # fmt: skip
    x = _images(2, 30)
    with open(val_dir / "val_data", "wb") as f:
        pickle.dump({"data": x.reshape(2, -1), "labels": [1, 2]}, f)


# ---- registry ----------------------------------------------------------------------


def test_available_datasets():
    names = available_datasets()
    assert names[0] == "digits"
    for n in ("cifar10", "cifar100", "mnist", "fashion_mnist", "imagenet32"):
        assert n in names


def test_unknown_dataset_lists_known():
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'.*known datasets: digits"):
        get_dataset("cifar11")


def test_bad_split_and_val():
    with pytest.raises(ValueError, match="split must be"):
        get_dataset("digits", split="validation")
    with pytest.raises(ValueError, match="val_size=5000"):
        get_dataset("digits", split="val")
    with pytest.raises(ValueError, match="leaves no training data"):
        get_dataset("digits", split="train", val_size=1500)


# ---- digits ------------------------------------------------------------------------


def test_digits_default_and_val_split():
    train = get_dataset()
    assert isinstance(train, TensorDataset) and len(train) == 1500
    tr = get_dataset("digits", split="train", val_size=200)
    va = get_dataset("digits", split="val", val_size=200)
    assert len(tr) == 1300 and len(va) == 200
    full = train.tensors[0]
    assert torch.equal(torch.cat([tr.tensors[0], va.tensors[0]]), full)
    assert len(get_dataset("digits", split="test", val_size=200)) == 297


def test_seeded_subsets():
    a = get_dataset("digits", num_samples=100, seed=3)
    b = get_dataset("digits", num_samples=100, seed=3)
    c = get_dataset("digits", num_samples=100, seed=4)
    assert torch.equal(a.tensors[0], b.tensors[0])
    assert not torch.equal(a.tensors[0], c.tensors[0])
    with pytest.raises(ValueError, match="larger than the split"):
        get_dataset("digits", split="test", num_samples=1000)


def test_digits_augmentation_shifts_within_padding():
    plain = get_dataset("digits")
    aug = get_dataset("digits", augment=True)
    torch.manual_seed(0)
    xs = torch.stack([aug[5][0] for _ in range(20)])
    assert xs.shape == (20, 1, 8, 8)
    assert any(not torch.equal(x, plain[5][0]) for x in xs)


def test_loader_is_seeded():
    first = [y for _, y in get_loader("digits", batch_size=64, seed=1)]
    again = [y for _, y in get_loader("digits", batch_size=64, seed=1)]
    other = [y for _, y in get_loader("digits", batch_size=64, seed=2)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


# ---- CIFAR ---------------------------------------------------------------------------


def test_cifar10_from_python_pickles(tmp_path):
    written = write_cifar10(tmp_path)
    test = get_dataset("cifar10", root=tmp_path, split="test", normalization=None)
    assert len(test) == 4
    x, y = test[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    ref, labels = written["test_batch"]
    # channel-major rows become HWC images and back: the pixels survive exactly
    assert torch.allclose(x, torch.from_numpy(ref[1]).float() / 255)
    assert y == labels[1]
    train = get_dataset("cifar10", root=tmp_path, split="train")
    assert len(train) == 20
    assert data.dataset_info("cifar10").num_classes == 10


def test_cifar10_normalisation_and_augmentation(tmp_path):
    write_cifar10(tmp_path)
    plain = get_dataset("cifar10", root=tmp_path, split="train", augment=False)
    raw = get_dataset("cifar10", root=tmp_path, split="train", augment=False, normalization=None)
    mean, std = data.STATS["cifar10"]
    expected = (raw[0][0] - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.allclose(plain[0][0], expected, atol=1e-6)
    aug = get_dataset("cifar10", root=tmp_path, split="train")  # augmented by default
    torch.manual_seed(0)
    views = [aug[0][0] for _ in range(10)]
    assert any(not torch.equal(v, plain[0][0]) for v in views)
    # a crop with padding 4 keeps at most a 4-pixel band of zeros (before normalisation)
    for v in views:
        assert v.shape == (3, 32, 32)


def test_cifar_validation_split_is_not_augmented(tmp_path):
    write_cifar10(tmp_path)
    train = get_dataset("cifar10", root=tmp_path, split="train", val_size=5)
    val = get_dataset("cifar10", root=tmp_path, split="val", val_size=5)
    full = get_dataset("cifar10", root=tmp_path, split="train", augment=False)
    assert len(train) == 15 and len(val) == 5
    for i in range(5):  # the last five training images, plain
        assert torch.equal(val[i][0], full[15 + i][0])
        assert val[i][1] == full[15 + i][1]


def test_cifar100_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    train = get_dataset("cifar100", root=tmp_path, split="train", augment=False)
    assert len(train) == 12
    assert [train[j][1] for j in range(12)] == written["train"][1]
    assert len(get_dataset("cifar100", root=tmp_path, split="test")) == 5
    assert data.dataset_info("CIFAR100").num_classes == 100


def test_missing_folder_names_folder_and_switch(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("cifar10", root=tmp_path / "nowhere")
    msg = str(info.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert "download=True" in msg
    with pytest.raises(DatasetNotFoundError, match="download=True"):
        get_dataset("mnist", root=tmp_path)


def test_default_never_touches_the_network(tmp_path, monkeypatch):
    import urllib.request

    def forbidden(*a, **k):
        raise AssertionError("network access without download=True")

    monkeypatch.setattr(urllib.request, "urlopen", forbidden)
    with pytest.raises(DatasetNotFoundError):
        get_dataset("cifar100", root=tmp_path)
    with pytest.raises(DatasetNotFoundError):
        get_dataset("fashion_mnist", root=tmp_path)


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    with pytest.raises(DatasetNotFoundError, match="downloading CIFAR-10 into .*failed.*offline"):
        get_dataset("cifar10", root=tmp_path, download=True)


def test_truncated_cifar_file_is_corrupt(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DatasetCorruptError, match="cifar-10-batches-py.*download=True"):
        get_dataset("cifar10", root=tmp_path, split="train")


def test_verify_checks_md5(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(DatasetCorruptError, match="checksum"):
        get_dataset("cifar10", root=tmp_path, split="test", verify=True)


# ---- MNIST ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_like_from_idx_files(tmp_path, name, folder):
    (xtr, ytr), (xte, yte) = write_mnist(tmp_path, folder)
    train = get_dataset(name, root=tmp_path, normalization=None)
    assert len(train) == 6
    x, y = train[2]
    assert x.shape == (1, 28, 28)
    assert torch.allclose(x[0], torch.from_numpy(xtr[2]).float() / 255)
    assert y == int(ytr[2])
    test = get_dataset(name, root=tmp_path, split="test")
    assert len(test) == 3
    rgb = get_dataset(name, root=tmp_path, split="test", rgb32=True)
    assert rgb[0][0].shape == (3, 32, 32)


def test_corrupt_idx_file(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DatasetCorruptError, match="MNIST"):
        get_dataset("mnist", root=tmp_path)


# ---- ImageNet32 --------------------------------------------------------------------


@pytest.mark.parametrize("subfolders", [True, False])
def test_imagenet32_from_user_folder(tmp_path, subfolders):
    write_imagenet32(tmp_path, subfolders=subfolders)
    train = get_dataset("imagenet32", root=tmp_path, augment=False)
    assert len(train) == 6
    assert [train[i][1] for i in range(3)] == [998, 1, 4]  # labels 1..1000 -> 0..999
    assert train[0][0].shape == (3, 32, 32)
    test = get_dataset("imagenet32", root=tmp_path, split="test")
    assert len(test) == 2 and test[1][1] == 1


def test_imagenet32_missing_and_no_download(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="Imagenet32_train"):
        get_dataset("imagenet32", root=tmp_path)
    with pytest.raises(ValueError, match="registration"):
        get_dataset("imagenet32", root=tmp_path, download=True)


def test_bad_normalization():
    with pytest.raises(ValueError, match="normalization"):
        data.transforms.resolve_stats("nope", "cifar10", 3)
    with pytest.raises(ValueError, match="channel"):
        data.transforms.resolve_stats(((0.5,) * 2, (0.2,) * 2), "cifar10", 3)
