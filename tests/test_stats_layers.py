"""Per-layer curvature against the diagonal blocks of dense float64 Hessians and GGNs."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from reference import (
    assert_close,
    assert_within_stderr,
    bn_cnn,
    digits,
    tanh_mlp,
    trainable,
)
from reference import dense_ggn as _dense_ggn
from reference import dense_hessian as _dense_hessian
from torch import nn

from jupyter_curvature.stats import Estimate, LayerCurvature, layer_curvature

# the statistics' convention: the model in eval mode, a summed loss as the per-sample mean
dense_hessian = partial(_dense_hessian, eval_mode=True, mean_loss=True)
dense_ggn = partial(_dense_ggn, eval_mode=True, mean_loss=True)

CE = nn.CrossEntropyLoss()


def block_slices(model: nn.Module) -> dict[str, slice]:
    """Offsets of each module's own parameters in the flat trainable vector."""
    out, start = {}, 0
    for name, p in trainable(model):
        layer = name.rsplit(".", 1)[0]
        s = out.get(layer, slice(start, start))
        out[layer] = slice(s.start, start + p.numel())
        start += p.numel()
    return out


@pytest.mark.parametrize(
    "model_name,curvature",
    [("tanh-mlp", "hessian"), ("bn-cnn", "hessian"), ("bn-cnn", "ggn")],
)
def test_dense_blocks_match_the_full_matrix(model_name, curvature):
    x, y = digits(40)
    model = {"tanh-mlp": lambda: tanh_mlp(hidden=(2,)), "bn-cnn": bn_cnn}[model_name]()
    result = layer_curvature(model, CE, (x, y), curvature=curvature, dense_below=1000)
    H = {"hessian": dense_hessian, "ggn": dense_ggn}[curvature](model, CE, x, y)
    slices = block_slices(model)
    assert [r.layer for r in result.rows] == list(slices)
    for r in result.rows:
        block = H[slices[r.layer], slices[r.layer]]
        assert r.num_params == block.shape[0] and r.lambda_method == "dense"
        assert_close(r.lambda_max, torch.linalg.eigvalsh(block)[-1], what=f"{r.layer} lambda_max")
        assert_close(r.trace, block.trace(), what=f"{r.layer} trace")
        assert r.lambda_max_residual < 1e-10
    # the block traces add up to the whole trace; the whole's lambda_max bounds each block's
    assert_close(result.sum_trace, H.trace(), what="sum of block traces")
    assert_close(result.total.trace, H.trace(), what="(all) trace")
    assert_close(result.total.lambda_max, torch.linalg.eigvalsh(H)[-1], what="(all) lambda_max")
    assert all(r.lambda_max <= result.total.lambda_max + 1e-12 for r in result.rows)


def test_lanczos_and_estimated_traces_for_large_blocks():
    x, y = digits(40)
    model = tanh_mlp()  # blocks of 520 and 90 parameters
    result = layer_curvature(model, CE, (x, y), dense_below=16, tol=1e-8, trace_matvecs=60)
    H = dense_hessian(model, CE, x, y)
    slices = block_slices(model)
    methods = {r.layer: (r.lambda_method, r.trace_method) for r in result.rows}
    assert methods == {"1": ("lanczos", "hutch++"), "3": ("lanczos", "hutch++")}
    for r in result.rows:
        block = H[slices[r.layer], slices[r.layer]]
        exact = torch.linalg.eigvalsh(block)[-1]
        # a certified Ritz value: some eigenvalue lies within the residual of it
        assert abs(r.lambda_max - exact) <= r.lambda_max_residual + 1e-10, r.layer
        estimate = Estimate(r.trace, r.trace_stderr, 1)
        assert_within_stderr(estimate, float(block.trace()), what=f"{r.layer} trace")


def test_exact_trace_for_large_blocks_uses_the_diagonal():
    x, y = digits(40)
    model = tanh_mlp()
    result = layer_curvature(
        model, CE, (x, y), layers=["1"], dense_below=16, trace_method="exact", include_total=False
    )
    H = dense_hessian(model, CE, x, y)
    block = H[block_slices(model)["1"], block_slices(model)["1"]]
    assert result.rows[0].trace_method == "exact" and result.total is None
    assert_close(result.rows[0].trace, block.trace(), what="exact trace of the 520-block")


def test_prefix_and_labelled_layers_and_partition():
    x, y = digits(40)
    model = bn_cnn()
    result = layer_curvature(
        model, CE, (x, y), layers={"conv": "features", "head": model.classifier}, dense_below=1000
    )
    H = dense_hessian(model, CE, x, y)
    n_features = sum(p.numel() for p in model.features.parameters())
    assert [r.layer for r in result.rows] == ["conv", "head"]
    assert result.rows[0].num_params == n_features
    assert_close(result.rows[0].trace, H[:n_features, :n_features].trace(), what="features block")
    assert_close(result.sum_trace, H.trace(), what="sum of traces")


def test_record_prints_and_round_trips(tmp_path):
    x, y = digits(40)
    result = layer_curvature(tanh_mlp(), CE, (x, y))
    text = str(result)
    assert "lambda_max" in text and "(all)" in text and "sum of layer traces" in text
    assert LayerCurvature.load(result.save(tmp_path / "layers.json")) == result
    assert set(result.as_dict()) == {"1", "3"}


def test_model_is_left_as_it_was():
    x, y = digits(32)
    model = bn_cnn()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_curvature(model, CE, (x, y), batchnorm="train")
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- bad input
def test_layer_without_parameters_is_refused():
    x, y = digits(20)
    model = tanh_mlp()
    with pytest.raises(ValueError, match="layer '2' \\(Tanh\\) has no parameters"):
        layer_curvature(model, CE, (x, y), layers=["1", "2"])
    with pytest.raises(ValueError, match="layer 'nope'.*matches no parameter"):
        layer_curvature(model, CE, (x, y), layers=["nope"])
    with pytest.raises(ValueError, match="has no parameters"):
        layer_curvature(model, CE, (x, y), layers={"act": model[2]})
    with pytest.raises(ValueError, match="already belong"):
        layer_curvature(model, CE, (x, y), layers=["1", "1.weight"])


def test_bad_options():
    x, y = digits(20)
    model = tanh_mlp()
    with pytest.raises(ValueError, match="'hessian' or 'ggn'"):
        layer_curvature(model, CE, (x, y), curvature="fisher")
    with pytest.raises(ValueError, match="trace_method"):
        layer_curvature(model, CE, (x, y), trace_method="magic")
    with pytest.raises(ValueError, match="trace_matvecs"):
        layer_curvature(model, CE, (x, y), trace_matvecs=2)
    with pytest.raises(ValueError, match="layers is empty"):
        layer_curvature(model, CE, (x, y), layers=[])
