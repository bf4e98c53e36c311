"""Small networks that train in seconds on a CPU, sized for the built-in 8x8 digits."""

from __future__ import annotations

from torch import nn


class MLP(nn.Sequential):
    """A multilayer perceptron: flatten, then ``Linear -> tanh`` blocks, then a linear head.

    ``tanh`` (not ReLU) keeps the Hessian and the GGN clearly different, which is what a
    curvature tool wants to show.
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden: tuple[int, ...] = (32,),
        num_classes: int = 10,
        activation: type[nn.Module] = nn.Tanh,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), activation()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class SmallCNN(nn.Module):
    """A LeNet-style CNN for ``channels x 8 x 8`` images: two conv blocks and a linear head."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 8,
        batch_norm: bool = True,
        image_size: int = 8,
    ) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)
            norm = [nn.BatchNorm2d(cout)] if batch_norm else []
            return [conv, *norm, nn.ReLU(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(in_channels, width), *block(width, 2 * width))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * (image_size // 4) ** 2, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))
