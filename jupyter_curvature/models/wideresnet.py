"""Wide residual networks for 32x32 images (Zagoruyko & Komodakis 2016).

WRN-``depth``-``k``: a 3x3 convolution with 16 channels, three stages of
``n = (depth - 4) / 6`` pre-activation blocks ``BN-ReLU-conv3x3-[dropout]-BN-ReLU-conv3x3``
with ``16k``, ``32k`` and ``64k`` channels, then ``BN-ReLU``, global average pooling and a
linear layer. Convolutions carry biases and shortcuts are 1x1 convolutions when the shape
changes, as in the variant the original package used; WRN-28-10 then has 36.5M parameters
(36,489,290 for 10 classes), the paper's figure. The original set the last BatchNorm's
momentum to 0.9, which in PyTorch's convention weights the current batch by 0.9; here it
is PyTorch's default 0.1.
"""

from __future__ import annotations

from torch import nn


class WideBasic(nn.Module):
    """``BN-ReLU-conv3x3-dropout-BN-ReLU-conv3x3(stride)`` plus the shortcut."""

    def __init__(self, in_planes: int, planes: int, dropout: float, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, bias=True)
        self.dropout = nn.Dropout(p=dropout)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=True)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=True)

    def forward(self, x):
        out = self.dropout(self.conv1(self.relu(self.bn1(x))))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for ``in_channels x 32 x 32`` images.

    Args:
        num_classes: outputs of the final linear layer.
        depth: ``6n + 4`` (28 for WRN-28-10).
        widen_factor: ``k``, the width multiplier.
        dropout: dropout between the two convolutions of a block (0 as in the original).
        in_channels: image channels.
    """

    def __init__(
        self,
        num_classes: int = 10,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 (16, 22, 28, 40, ...), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be at least 1, got {widen_factor}")
        n = (depth - 4) // 6
        k = widen_factor
        self.depth = depth
        stages = [16, 16 * k, 32 * k, 64 * k]
        self.in_planes = 16
        self.conv1 = nn.Conv2d(in_channels, stages[0], kernel_size=3, padding=1, bias=True)
        self.layer1 = self._wide_layer(stages[1], n, dropout, stride=1)
        self.layer2 = self._wide_layer(stages[2], n, dropout, stride=2)
        self.layer3 = self._wide_layer(stages[3], n, dropout, stride=2)
        self.bn1 = nn.BatchNorm2d(stages[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(stages[3], num_classes)

    def _wide_layer(self, planes: int, blocks: int, dropout: float, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(WideBasic(self.in_planes, planes, dropout, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.linear(self.avgpool(out).flatten(1))
