"""Models by name: ``create("vgg16", num_classes=100)``, ``available()``.

Names are case-insensitive and ignore ``-``, ``_`` and spaces, so ``"VGG16BN"``,
``"vgg16_bn"`` and ``"vgg16-bn"`` are the same network; the original package's names
(``VGG16``, ``PreResNet110``, ``WideResNet28x10``, ``ResNeXt29CIFAR``,
``AllCNN_CIFAR100``, ...) all resolve.

Each entry also says what input it expects and how its data should be prepared (the
original set the normalisation and augmentation per model: ImageNet statistics for VGG
and All-CNN, CIFAR statistics for the residual networks, no augmentation for
``VGG16basic``); :func:`model_info` gives that record.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from torch import nn

from .allcnn import AllCNNC
from .preresnet import PreResNet
from .resnet import ResNet
from .resnext import ResNeXt
from .small import MLP, SmallCNN
from .vgg import VGG
from .wideresnet import WideResNet


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model name.

    Attributes:
        name: the canonical name.
        builder: ``builder(num_classes=..., **kwargs)`` returns the module.
        description: one line for listings.
        input_shape: ``(channels, height, width)`` the network is built for by default.
        normalization: ``"imagenet"``, ``"cifar"`` or ``None``: the statistics the original
            normalised its inputs with for this network.
        augment: whether training data for it is augmented by default.
        aliases: other accepted names.
    """

    name: str
    builder: Callable[..., nn.Module]
    description: str
    input_shape: tuple[int, int, int] = (3, 32, 32)
    normalization: str | None = "cifar"
    augment: bool = True
    aliases: tuple[str, ...] = field(default=())


_REGISTRY: dict[str, ModelInfo] = {}
_LOOKUP: dict[str, str] = {}  # normalised name or alias -> canonical name


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def register(info: ModelInfo, *, overwrite: bool = False) -> ModelInfo:
    """Add a model to the registry (for your own networks as well)."""
    keys = [_key(info.name), *(_key(a) for a in info.aliases)]
    if not overwrite:
        taken = [k for k in keys if k in _LOOKUP]
        if taken:
            raise ValueError(
                f"model name {info.name!r} clashes with registered {_LOOKUP[taken[0]]!r}; "
                "pass overwrite=True to replace it"
            )
    _REGISTRY[info.name] = info
    for k in keys:
        _LOOKUP[k] = info.name
    return info


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def available() -> list[str]:
    """The canonical names of every registered model, in natural order (vgg6 before vgg11)."""
    return sorted(_REGISTRY, key=_natural)


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` record of ``name`` (any accepted spelling)."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    canonical = _LOOKUP.get(_key(name))
    if canonical is None:
        close = difflib.get_close_matches(_key(name), list(_LOOKUP), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(_LOOKUP[c]) for c in close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; known models: {', '.join(available())}")
    return _REGISTRY[canonical]


def create(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build the network called ``name`` with ``num_classes`` outputs.

    Args:
        name: a name from :func:`available` (case, ``-`` and ``_`` do not matter).
        num_classes: outputs of the last layer.
        **kwargs: passed to the network's constructor (for example ``in_channels=1``,
            ``batch_norm=True`` for VGG, ``hidden=(64, 64)`` for the MLP).

    Raises:
        ValueError: unknown name (the message lists the known ones), or bad arguments.

    >>> create("resnet20").fc.out_features
    10
    """
    info = model_info(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    try:
        return info.builder(num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise TypeError(f"create({info.name!r}, ...): {exc}") from exc


def _builtin() -> None:
    for depth in (6, 11, 13, 16, 19):
        for bn in (False, True):
            suffix = "_bn" if bn else ""
            register(
                ModelInfo(
                    f"vgg{depth}{suffix}",
                    partial(VGG, depth=depth, batch_norm=bn),
                    f"VGG-{depth}{' with BatchNorm' if bn else ''}, 512-512-C classifier "
                    "with dropout",
                    normalization="imagenet",
                )
            )
    register(
        ModelInfo(
            "vgg16_basic",
            partial(VGG, depth=16, batch_norm=False),
            "VGG-16 trained without data augmentation (the original's VGG16basic)",
            normalization="imagenet",
            augment=False,
        )
    )
    for depth in (8, 56, 83, 110, 164):
        kind = "bottleneck" if depth >= 44 else "basic"
        register(
            ModelInfo(
                f"preresnet{depth}",
                partial(PreResNet, depth=depth),
                f"pre-activation ResNet-{depth} ({kind} blocks)",
            )
        )
    for depth in (20, 32, 44, 56, 110):
        register(
            ModelInfo(
                f"resnet{depth}",
                partial(ResNet, depth=depth),
                f"ResNet-{depth} for CIFAR (He et al. 2016, option A shortcuts)",
            )
        )
    register(
        ModelInfo(
            "wideresnet28x10",
            partial(WideResNet, depth=28, widen_factor=10),
            "Wide ResNet 28-10",
            aliases=("wrn28x10", "wrn28_10", "wideresnet28_10"),
        )
    )
    register(
        ModelInfo(
            "resnext29",
            partial(ResNeXt, depth=29, cardinality=8, base_width=64),
            "ResNeXt-29 (8x64d)",
            aliases=("resnext29cifar", "resnext29_8x64d"),
        )
    )
    register(
        ModelInfo(
            "allcnn_c",
            AllCNNC,
            "All-CNN-C (DeepOBS variant)",
            normalization="imagenet",
            aliases=("allcnn", "allcnn_cifar100", "allcnnc"),
        )
    )
    register(
        ModelInfo(
            "mlp",
            MLP,
            "tanh MLP for flattened inputs (64 features: the built-in 8x8 digits)",
            input_shape=(1, 8, 8),
            normalization=None,
            augment=False,
        )
    )
    register(
        ModelInfo(
            "small_cnn",
            SmallCNN,
            "LeNet-style CNN for 8x8 images (the built-in digits)",
            input_shape=(1, 8, 8),
            normalization=None,
            augment=False,
            aliases=("lenet", "smallcnn"),
        )
    )


_builtin()
