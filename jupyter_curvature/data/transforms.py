"""Image transforms: normalisation statistics and the standard CIFAR-style augmentation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# per-channel (mean, std) of the training images
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}

Normalization = None | str | tuple[Sequence[float], Sequence[float]]


def resolve_stats(
    normalization: Normalization, dataset_stats: str, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` for a ``normalization`` choice, or ``None`` for none.

    ``"dataset"`` means the dataset's own statistics; ``"imagenet"``, ``"cifar10"``,
    ``"cifar100"``, ``"mnist"``, ``"fashion_mnist"`` name a set; a pair of sequences is
    used as given. One-channel statistics are repeated when the images have 3 channels.
    """
    if normalization is None:
        return None
    if isinstance(normalization, str):
        key = dataset_stats if normalization == "dataset" else normalization.lower()
        if key == "cifar":
            key = dataset_stats if dataset_stats.startswith("cifar") else "cifar10"
        if key not in STATS:
            raise ValueError(
                f"normalization must be None, 'dataset', one of {sorted(STATS)} or a "
                f"(mean, std) pair, got {normalization!r}"
            )
        mean, std = STATS[key]
    else:
        try:
            mean, std = (tuple(float(v) for v in s) for s in normalization)
        except (TypeError, ValueError):
            raise ValueError(
                f"normalization must be a name or a (mean, std) pair, got {normalization!r}"
            ) from None
    if len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"normalization has {len(mean)} channel(s) but the images have {channels}")
    return tuple(mean), tuple(std)


class RepeatChannels:
    """Repeat a one-channel image tensor to ``channels`` channels (picklable for workers)."""

    def __init__(self, channels: int = 3) -> None:
        self.channels = channels

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(self.channels, *x.shape[1:]).contiguous()

    def __repr__(self) -> str:
        return f"RepeatChannels({self.channels})"


def image_transform(
    *,
    size: int,
    augment: bool,
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None,
    crop_padding: int = 4,
    flip: bool = True,
    pad_to: int | None = None,
    channels_out: int | None = None,
):
    """The torchvision pipeline for PIL images.

    Training (``augment=True``): ``RandomCrop(size, padding=crop_padding)`` and, if
    ``flip``, ``RandomHorizontalFlip()``; then ``ToTensor()``, an optional zero padding to
    ``pad_to`` pixels and channel repeat (to feed 28x28 greyscale images to 32x32 RGB
    networks), and ``Normalize(mean, std)``.
    """
    from torchvision import transforms as T

    steps: list = []
    if augment:
        steps.append(T.RandomCrop(size, padding=crop_padding))
        if flip:
            steps.append(T.RandomHorizontalFlip())
    steps.append(T.ToTensor())
    if pad_to is not None and pad_to > size:
        extra = pad_to - size
        steps.append(T.Pad((extra // 2, extra // 2, extra - extra // 2, extra - extra // 2)))
    if channels_out is not None:
        steps.append(RepeatChannels(channels_out))
    if stats is not None:
        steps.append(T.Normalize(*stats))
    return T.Compose(steps)
