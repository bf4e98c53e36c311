"""The model zoo: names, shapes, depths and parameter counts against published figures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jupyter_curvature import models
from jupyter_curvature.models import create


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_layers(model: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Convolutions and linear layers, leaving out modules whose name contains ``skip``."""
    return sum(
        1
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not any(s in name for s in skip)
    )


ORIGINAL_NAMES = [
    "VGG6", "VGG11", "VGG11BN", "VGG16", "VGG16BN", "VGG19", "VGG19BN", "VGG16basic",
    "PreResNet8", "PreResNet56", "PreResNet83", "PreResNet110", "PreResNet164",
    "WideResNet28x10", "ResNeXt29CIFAR", "AllCNN_CIFAR100",
]  # fmt: skip


def test_available_lists_the_zoo():
    names = models.available()
    for expected in [
        "vgg6", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "preresnet8",
        "preresnet56", "preresnet83", "preresnet110", "preresnet164", "wideresnet28x10",
        "resnext29", "allcnn_c", "resnet20", "resnet32", "resnet56", "mlp", "small_cnn",
    ]:  # fmt: skip
        assert expected in names
    assert names.index("vgg6") < names.index("vgg11") < names.index("vgg16")


@pytest.mark.parametrize("name", ORIGINAL_NAMES)
def test_original_names_resolve(name):
    assert models.model_info(name).name in models.available()


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match="unknown model 'vgg17'.*known models:.*resnet20"):
        create("vgg17")


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        create("resnet20", num_classes=0)


def test_bad_keyword_names_the_model():
    with pytest.raises(TypeError, match="resnet20"):
        create("resnet20", no_such_argument=1)


# ---- parameter counts --------------------------------------------------------------


def test_vgg16_cifar100_matches_the_original():
    # 13 convolutions of the VGG-16 configuration plus the 512-512-C classifier
    widths = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    convs = sum(9 * a * b + b for a, b in zip(widths[:-1], widths[1:]))
    classifier = (512 * 512 + 512) * 2 + 512 * 100 + 100
    assert convs == 14_714_688
    assert convs + classifier == 15_291_300
    assert count(create("vgg16", num_classes=100)) == 15_291_300


@pytest.mark.parametrize(
    ("name", "params"),
    [
        # He et al. 2016, Table 6 (0.27M, 0.46M, 0.85M, 1.7M); exact counts of option-A nets
        ("resnet20", 269_722),
        ("resnet32", 464_154),
        ("resnet56", 853_018),
        ("resnet110", 1_727_962),
        # He et al. 2016b (identity mappings), 1.7M; osmr/imgclsmob table: 1,703,258
        ("preresnet164", 1_703_258),
        # Xie et al. 2017, ResNeXt-29 8x64d: 34.4M
        pytest.param("resnext29", 34_426_698, marks=pytest.mark.slow),
    ],
)
def test_published_parameter_counts(name, params):
    assert count(create(name, num_classes=10)) == params


@pytest.mark.slow
def test_resnext29_16x64d_matches_published_count():
    # osmr/imgclsmob lists ResNeXt-29 (16x64d) for CIFAR-10 with 68,155,210 parameters;
    # the same code with cardinality 16 must agree exactly
    assert count(create("resnext29", cardinality=16)) == 68_155_210


@pytest.mark.slow
def test_wideresnet28x10_counts():
    model = create("wideresnet28x10")
    total = count(model)
    assert round(total / 1e6, 1) == 36.5  # Zagoruyko & Komodakis 2016, Table 1
    conv_biases = sum(m.bias.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    # without the convolution biases of the original's variant: imgclsmob's 36,479,194
    assert total - conv_biases == 36_479_194


def test_allcnn_c_counts():
    layers = [(3, 96, 3), (96, 96, 3), (96, 96, 3), (96, 192, 3), (192, 192, 3),
              (192, 192, 3), (192, 192, 3), (192, 192, 1), (192, 100, 1)]  # fmt: skip
    expected = sum(k * k * a * b + b for a, b, k in layers)
    assert expected == 1_387_108
    assert count(create("allcnn_c", num_classes=100)) == expected
    assert round(count(create("allcnn_c", num_classes=10)) / 1e6, 1) in (1.3, 1.4)


# ---- depths ------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [6, 11, 13, 16, 19])
@pytest.mark.parametrize("bn", [False, True])
def test_vgg_depth_is_what_the_name_says(depth, bn):
    model = create(f"vgg{depth}{'_bn' if bn else ''}")
    assert weight_layers(model) == depth
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == bn


def test_vgg11_is_not_vgg16():
    assert count(create("vgg11")) < count(create("vgg16"))
    assert sum(isinstance(m, nn.Conv2d) for m in create("vgg11").modules()) == 8


@pytest.mark.parametrize("depth", [8, 56, 83, 110, 164])
def test_preresnet_depth(depth):
    # shortcut projections are not counted in the depth, as in the papers
    assert weight_layers(create(f"preresnet{depth}"), skip=("downsample",)) == depth


@pytest.mark.parametrize("depth", [20, 32, 56])
def test_resnet_depth(depth):
    assert weight_layers(create(f"resnet{depth}")) == depth


@pytest.mark.slow
def test_wideresnet_and_resnext_depth():
    # WRN counts its three 1x1 shortcut convolutions and not the classifier (6n + 4)
    assert weight_layers(create("wideresnet28x10"), skip=("linear",)) == 28
    assert weight_layers(create("resnext29"), skip=("shortcut",)) == 29
    assert weight_layers(create("allcnn_c")) == 9


# ---- forward passes ----------------------------------------------------------------

FAST = ["vgg6", "vgg11_bn", "vgg16", "preresnet8", "preresnet56", "resnet20", "allcnn_c"]


@pytest.mark.parametrize("name", FAST)
def test_forward_shape(name):
    model = create(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["wideresnet28x10", "resnext29", "preresnet164", "vgg19_bn"])
def test_forward_shape_large(name):
    model = create(name, num_classes=100).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "preresnet8"])
def test_one_channel_input(name):
    model = create(name, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_small_models_on_digits_shape():
    x = torch.randn(5, 1, 8, 8)
    assert create("mlp")(x).shape == (5, 10)
    assert create("small_cnn", num_classes=3)(x).shape == (5, 3)
    assert create("mlp", hidden=(16, 16)).__class__ is models.MLP
    info = models.model_info("small_cnn")
    assert info.input_shape == (1, 8, 8) and not info.augment


def test_model_info_records_data_preparation():
    assert models.model_info("VGG16").normalization == "imagenet"
    assert models.model_info("PreResNet110").normalization == "cifar"
    assert models.model_info("VGG16basic").augment is False


def test_register_own_model():
    info = models.ModelInfo("tiny_linear_test", lambda num_classes: nn.Linear(4, num_classes), "t")
    models.register(info, overwrite=True)
    assert create("tiny-linear-test", num_classes=2).out_features == 2
    with pytest.raises(ValueError, match="clashes"):
        models.register(info)


@pytest.mark.parametrize(
    ("factory", "arg"),
    [
        (models.VGG, {"depth": 12}),
        (models.PreResNet, {"depth": 50}),
        (models.ResNet, {"depth": 21}),
        (models.WideResNet, {"depth": 27}),
        (models.ResNeXt, {"depth": 30}),
    ],
)
def test_bad_depth(factory, arg):
    with pytest.raises(ValueError, match="depth"):
        factory(**arg)
