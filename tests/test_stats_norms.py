"""Weight norms against direct computation on the flat parameter vector and its groups."""

from __future__ import annotations

import math

import pytest
import torch
from reference import assert_close, bn_cnn, tanh_mlp
from torch import nn

from jupyter_curvature.stats import WeightNorms, weight_norms


def test_overall_norms_are_those_of_all_parameters_concatenated():
    model = bn_cnn()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    norms = weight_norms(model)
    assert_close(norms.l2, flat.norm(), what="L2")
    assert_close(norms.linf, flat.abs().max(), what="Linf")
    assert norms.num_params == flat.numel()


def test_groups_split_weights_biases_and_batchnorm():
    model = bn_cnn()
    weights = [model.features[0].weight, model.features[4].weight, model.classifier[1].weight]
    biases = [model.classifier[1].bias]
    bn = [t for m in (model.features[1], model.features[5]) for t in (m.weight, m.bias)]
    norms = weight_norms(model)
    for group, tensors in (("weights", weights), ("biases", biases), ("norm", bn)):
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        assert_close(getattr(norms, f"{group}_l2"), flat.norm(), what=f"{group} L2")
        assert_close(getattr(norms, f"{group}_linf"), flat.abs().max(), what=f"{group} Linf")
    # the groups partition the parameters: squared L2 norms add up
    parts = [norms.weights_l2, norms.biases_l2, norms.norm_l2]
    assert_close(math.fsum(v**2 for v in parts), norms.l2**2, what="sum of squares")


def test_per_layer_rows():
    model = bn_cnn()
    norms = weight_norms(model)
    rows = {r.layer: r for r in norms.layers}
    assert list(rows) == ["features.0", "features.1", "features.4", "features.5", "classifier.1"]
    conv, bn, head = rows["features.0"], rows["features.1"], rows["classifier.1"]
    assert (conv.kind, bn.kind, conv.module, bn.module) == (
        "weight",
        "norm",
        "Conv2d",
        "BatchNorm2d",
    )
    assert conv.bias_l2 is None  # convolutions before BatchNorm have no bias
    assert_close(head.weight_l2, model.classifier[1].weight.norm(), what="head weight L2")
    assert_close(head.bias_linf, model.classifier[1].bias.abs().max(), what="head bias Linf")
    assert_close(bn.weight_l2, model.features[1].weight.norm(), what="bn weight L2")
    assert sum(r.num_params for r in norms.layers) == norms.num_params


def test_model_without_norm_layers_and_shared_parameters():
    torch.manual_seed(0)
    a = nn.Linear(3, 3).double()
    model = nn.Sequential(a, nn.Tanh(), a)  # the same layer twice: counted once
    norms = weight_norms(model)
    assert norms.norm_l2 is None and norms.norm_linf is None
    assert norms.num_params == 12 and len(norms.layers) == 1
    assert_close(norms.l2, torch.cat([a.weight.reshape(-1), a.bias]).norm(), what="L2")


def test_trainable_only_and_no_parameters():
    model = tanh_mlp()
    model[1].requires_grad_(False)
    assert weight_norms(model, trainable_only=True).num_params == 90
    with pytest.raises(ValueError, match="no parameters"):
        weight_norms(nn.Sequential(nn.ReLU()))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        weight_norms(torch.zeros(3))


def test_record_prints_and_round_trips(tmp_path):
    norms = weight_norms(bn_cnn())
    text = str(norms)
    assert "all parameters" in text and "BatchNorm2d" in text and "normalisation" in text
    assert WeightNorms.load(norms.save(tmp_path / "norms")) == norms
    assert norms.to_dict()["layers"][0]["layer"] == "features.0"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("where", [(0, 0), (3, 1)], ids=["first-entry", "later-entry"])
def test_a_nonfinite_weight_shows_in_every_norm_that_covers_it(bad, where):
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 4)).double()
    with torch.no_grad():
        model[1].weight[where] = bad
    n = weight_norms(model)
    # float64 reference: the torch reductions over the concatenated tensors
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    weights = torch.cat([model[0].weight.reshape(-1), model[1].weight.reshape(-1)]).detach()
    for got, ref in [
        (n.l2, float(flat.norm())),
        (n.linf, float(flat.abs().max())),
        (n.weights_l2, float(weights.norm())),
        (n.weights_linf, float(weights.abs().max())),
        (n.layers[1].weight_linf, float(model[1].weight.detach().abs().max())),
    ]:
        assert math.isnan(ref) if bad != bad else math.isinf(ref)
        assert (math.isnan(got) and math.isnan(ref)) or got == ref
    # the other layer and the biases stay finite and exact
    assert n.layers[0].weight_linf == float(model[0].weight.detach().abs().max())
    assert n.biases_linf == float(torch.cat([model[0].bias, model[1].bias]).detach().abs().max())
