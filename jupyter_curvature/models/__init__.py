"""The model zoo: CIFAR-style networks of the original package and small networks for CPU.

``create(name, num_classes=10, **kw)`` builds a network by name, ``available()`` lists
the names, ``model_info(name)`` says what input and data preparation a network expects.
"""

from .allcnn import AllCNNC
from .preresnet import PreResNet
from .registry import ModelInfo, available, create, model_info, register
from .resnet import ResNet
from .resnext import ResNeXt
from .small import MLP, SmallCNN
from .vgg import VGG
from .wideresnet import WideResNet

__all__ = [
    "MLP",
    "AllCNNC",
    "ModelInfo",
    "PreResNet",
    "ResNeXt",
    "ResNet",
    "SmallCNN",
    "VGG",
    "WideResNet",
    "available",
    "create",
    "model_info",
    "register",
]
