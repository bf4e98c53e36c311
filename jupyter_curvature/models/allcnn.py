"""All-CNN-C (Springenberg, Dosovitskiy, Brox & Riedmiller 2015), as in DeepOBS.

Only convolutions: ``96-96-96/2``, ``192-192-192/2`` (3x3, the third of each triple with
stride 2 in place of pooling), then ``192`` 3x3 without padding, ``192`` 1x1 and
``num_classes`` 1x1, a ReLU after each, global average pooling. Dropout 0.2 on the input
and 0.5 after each strided triple. This is the DeepOBS ``cifar100_allcnnc`` network the
original package used (1,387,108 parameters for 100 classes; the paper reports 1.3M for
CIFAR-10). DeepOBS's TensorFlow "same" padding of the strided convolutions pads on the
bottom/right only; PyTorch's symmetric padding 1 gives the same shapes and parameters.
"""

from __future__ import annotations

from torch import nn


class AllCNNC(nn.Sequential):
    """All-CNN-C for ``in_channels x 32 x 32`` images."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3) -> None:
        def conv(cin: int, cout: int, k: int = 3, stride: int = 1, padding: int = 1):
            return [nn.Conv2d(cin, cout, k, stride=stride, padding=padding), nn.ReLU()]

        super().__init__(
            nn.Dropout(0.2),
            *conv(in_channels, 96),
            *conv(96, 96),
            *conv(96, 96, stride=2),
            nn.Dropout(0.5),
            *conv(96, 192),
            *conv(192, 192),
            *conv(192, 192, stride=2),
            nn.Dropout(0.5),
            *conv(192, 192, padding=0),
            *conv(192, 192, k=1, padding=0),
            *conv(192, num_classes, k=1, padding=0),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                nn.init.constant_(m.bias, 0.1)
