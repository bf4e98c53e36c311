"""Pre-activation ResNets for 32x32 images (He, Zhang, Ren & Sun 2016, "Identity Mappings
in Deep Residual Networks"), in the CIFAR variant the original package used.

Three stages of 16, 32 and 64 channels (times 4 with bottlenecks) on 32x32, 16x16 and
8x8 maps; each block is ``BN -> ReLU -> conv`` twice (basic block) or three times
(bottleneck ``1x1 -> 3x3 -> 1x1``), with a 1x1 projection shortcut when the shape
changes. As in the original, depths of 44 and more use bottleneck blocks
(``depth = 9n + 2``), smaller ones basic blocks (``depth = 6n + 2``). PreResNet-164 has
1.70M parameters for 10 classes, as the paper's table reports.
"""

from __future__ import annotations

import math

from torch import nn


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBasicBlock(nn.Module):
    """``BN-ReLU-conv3x3-BN-ReLU-conv3x3`` plus the shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(x))
        residual = self.downsample(out) if self.downsample is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + residual


class PreActBottleneck(nn.Module):
    """``BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1`` (4x expansion) plus the shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(x))
        residual = self.downsample(out) if self.downsample is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + residual


class PreResNet(nn.Module):
    """PreResNet-``depth`` for ``in_channels x 32 x 32`` images.

    Args:
        num_classes: outputs of the final linear layer.
        depth: ``6n + 2`` below 44 (basic blocks), ``9n + 2`` from 44 on (bottlenecks).
        in_channels: image channels.
    """

    def __init__(self, num_classes: int = 10, depth: int = 110, in_channels: int = 3) -> None:
        super().__init__()
        if depth >= 44:
            if (depth - 2) % 9 != 0:
                raise ValueError(f"PreResNet depth >= 44 must be 9n+2 (bottlenecks), got {depth}")
            n, block = (depth - 2) // 9, PreActBottleneck
        else:
            if (depth - 2) % 6 != 0 or depth < 8:
                raise ValueError(f"PreResNet depth < 44 must be 6n+2 (basic blocks), got {depth}")
            n, block = (depth - 2) // 6, PreActBasicBlock
        self.depth = depth
        self.inplanes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.layer1 = self._make_layer(block, 16, n)
        self.layer2 = self._make_layer(block, 32, n, stride=2)
        self.layer3 = self._make_layer(block, 64, n, stride=2)
        self.bn = nn.BatchNorm2d(64 * block.expansion)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Conv2d(
                self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu(self.bn(x))
        return self.fc(self.avgpool(x).flatten(1))
