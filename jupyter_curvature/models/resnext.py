"""ResNeXt-29 for 32x32 images (Xie, Girshick, Dollar, Tu & He 2017, section 5.3).

Three stages of ``(depth - 2) / 9`` bottleneck blocks (1x1 reduce, grouped 3x3 with
``cardinality`` groups, 1x1 expand, each followed by BatchNorm) with 256, 512 and 1024
output channels (``64 * widen_factor * 2^stage``), a 1x1 projection shortcut with
BatchNorm where the shape changes, global average pooling and a linear layer. The
original's ``ResNeXt29CIFAR`` is cardinality 8, bottleneck width 64, widen factor 4, i.e.
the paper's ResNeXt-29 (8x64d) with 34.4M parameters (34,426,698 for 10 classes).
The original's plain ``ResNeXt29`` entry did not build; here ``resnext29`` is the
working 8x64d network.
"""

from __future__ import annotations

from torch import nn


class ResNeXtBottleneck(nn.Module):
    """``conv1x1-BN-ReLU-gconv3x3-BN-ReLU-conv1x1-BN`` plus the shortcut, then ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        cardinality: int,
        base_width: int,
        widen_factor: int,
    ) -> None:
        super().__init__()
        width_ratio = out_channels / (widen_factor * 64.0)
        d = cardinality * int(base_width * width_ratio)
        self.conv_reduce = nn.Conv2d(in_channels, d, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(d)
        self.conv_conv = nn.Conv2d(
            d, d, 3, stride=stride, padding=1, groups=cardinality, bias=False
        )
        self.bn = nn.BatchNorm2d(d)
        self.conv_expand = nn.Conv2d(d, out_channels, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels or stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x):
        out = self.relu(self.bn_reduce(self.conv_reduce(x)))
        out = self.relu(self.bn(self.conv_conv(out)))
        out = self.bn_expand(self.conv_expand(out))
        return self.relu(self.shortcut(x) + out)


class ResNeXt(nn.Module):
    """ResNeXt-``depth`` (``cardinality`` x ``base_width``d) for ``in_channels x 32 x 32``.

    Args:
        num_classes: outputs of the final linear layer.
        depth: ``9n + 2`` (29 for three blocks per stage).
        cardinality: groups of the 3x3 convolutions.
        base_width: channels per group in the first stage.
        widen_factor: output width multiplier (stage widths ``64 * widen_factor * 2^s``).
        in_channels: image channels.
    """

    def __init__(
        self,
        num_classes: int = 10,
        depth: int = 29,
        cardinality: int = 8,
        base_width: int = 64,
        widen_factor: int = 4,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 2) % 9 != 0 or depth < 11:
            raise ValueError(f"ResNeXt depth must be 9n+2 (11, 20, 29, ...), got {depth}")
        n = (depth - 2) // 9
        self.depth = depth
        stages = [64, 64 * widen_factor, 128 * widen_factor, 256 * widen_factor]
        self.conv_1_3x3 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn_1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        blocks = []
        for s in range(3):
            stride = 1 if s == 0 else 2
            layer = [
                ResNeXtBottleneck(
                    stages[s] if i == 0 else stages[s + 1],
                    stages[s + 1],
                    stride if i == 0 else 1,
                    cardinality,
                    base_width,
                    widen_factor,
                )
                for i in range(n)
            ]
            blocks.append(nn.Sequential(*layer))
        self.stage_1, self.stage_2, self.stage_3 = blocks
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(stages[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.kaiming_normal_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x):
        x = self.relu(self.bn_1(self.conv_1_3x3(x)))
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        return self.classifier(self.avgpool(x).flatten(1))
