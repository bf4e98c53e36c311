"""VGG networks for 32x32 images (Simonyan & Zisserman 2015), in the CIFAR variant.

The variant is the one the original package (and the SWA/SWAG code it came from) used:
3x3 convolutions with padding 1, 2x2 max-pooling, an optional BatchNorm after each
convolution, and a ``512 -> 512 -> C`` classifier with dropout. A 32x32 input reaches
the classifier as a ``512 x 1 x 1`` map after five poolings.

Depth counts the weight layers (convolutions plus the three linear layers), as in the
VGG paper: VGG11 has 8 convolutions, VGG16 has 13, VGG19 has 16. The original's
``VGG11`` was defined twice and the second definition silently built a VGG16; here each
depth is what its name says (the tests count the layers). The original's ``VGG6`` reused
VGG11's configuration; ours has 3 convolutions and the 3 linear layers.

Parameter count of VGG16 for 100 classes: 15,291,300 (14,714,688 in the convolutions,
576,612 in the classifier), as in the original.
"""

from __future__ import annotations

import math

from torch import nn

# channel widths, "M" for a 2x2 max-pool; five pools take 32x32 to 1x1
_SPECS = {
    6: "64 M 128 M 512 M M M",
    11: "64 M 128 M 256 256 M 512 512 M 512 512 M",
    13: "64 64 M 128 128 M 256 256 M 512 512 M 512 512 M",
    16: "64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M",
    19: "64 64 M 128 128 M 256 256 256 256 M 512 512 512 512 M 512 512 512 512 M",
}
CONFIGS: dict[int, list[int | str]] = {
    depth: [v if v == "M" else int(v) for v in spec.split()] for depth, spec in _SPECS.items()
}


def make_layers(config: list[int | str], batch_norm: bool, in_channels: int = 3) -> nn.Sequential:
    """The convolutional part: ``conv3x3 [-> BN] -> ReLU`` per width, ``MaxPool2d`` per ``"M"``."""
    layers: list[nn.Module] = []
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU())
        in_channels = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG-``depth`` for ``in_channels x 32 x 32`` images.

    Args:
        num_classes: outputs of the last linear layer.
        depth: 6, 11, 13, 16 or 19 weight layers.
        batch_norm: BatchNorm after every convolution.
        in_channels: image channels.
        dropout: dropout probability before the two hidden linear layers (0.5 as in the paper).

    Convolutions are initialised ``N(0, 2/(k*k*out_channels))`` with zero bias, as the
    original did.
    """

    def __init__(
        self,
        num_classes: int = 10,
        depth: int = 16,
        batch_norm: bool = False,
        in_channels: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if depth not in CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(CONFIGS)}, got {depth}")
        self.depth = depth
        self.features = make_layers(CONFIGS[depth], batch_norm, in_channels)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.flatten(1))
