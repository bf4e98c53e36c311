"""Curvature statistics against dense per-batch Hessians and GGNs (float64).

Exact quantities (everything given the probes) agree to 1e-8 with dense matrices built by
``torch.func``. Estimated quantities (the Frobenius norm and trace by Hutchinson, the
Rayleigh quotient as tr(H)/n) must lie within 4 standard errors of the dense value: for an
unbiased mean of independent probes that fails with probability below 1e-4 (Chebyshev
bounds it by 1/16; the probe means here are close to normal), and the seeds are fixed, so
the tests are deterministic.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from reference import (
    assert_close,
    assert_within_stderr,
    batches,
    bn_cnn,
    digits,
    tanh_mlp,
)
from reference import dense_ggn as _dense_ggn
from reference import dense_hessian as _dense_hessian
from torch import nn

from jupyter_curvature.stats import CurvatureStatistics, curvature_statistics, make_probes

# the statistics' convention: the model in eval mode, a summed loss as the per-sample mean
dense_hessian = partial(_dense_hessian, eval_mode=True, mean_loss=True)
dense_ggn = partial(_dense_ggn, eval_mode=True, mean_loss=True)

CE = nn.CrossEntropyLoss()
DENSE = {"hessian": dense_hessian, "ggn": dense_ggn}


def dense_reference(model, loss_fn, x, y, batch_size, curvature, num_probes, seed):
    """Per-probe quantities from dense per-batch matrices, weights b_i / N."""
    blocks = [
        (DENSE[curvature](model, loss_fn, xb, yb), len(xb)) for xb, yb in batches(x, y, batch_size)
    ]
    n_params = blocks[0][0].shape[0]
    Z, gauss_sq = make_probes(n_params, num_probes, seed)
    N = len(x)
    H = sum(Hi * (b / N) for Hi, b in blocks)
    M = H @ Z
    var = sum((b / N) * ((Hi @ Z - M) ** 2).sum(0) for Hi, b in blocks)
    mu = (Z * M).sum(0)
    delta = ((M - mu * Z) ** 2).sum(0)
    alpha = (1 - var / len(blocks) / delta).clamp_min(0)
    return H, {
        "mean_norm_sq": (M * M).sum(0),
        "variance": var,
        "rayleigh": mu,
        "delta": delta,
        "alpha": alpha,
        "frobenius_sq": gauss_sq * (M * M).sum(0),
        "trace": gauss_sq * mu,
    }


CASES = {
    "tanh-mlp-hessian": (tanh_mlp, "hessian"),
    "tanh-mlp-ggn": (tanh_mlp, "ggn"),
    "bn-cnn-hessian": (bn_cnn, "hessian"),
    "bn-cnn-ggn": (bn_cnn, "ggn"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_probe_matches_dense_per_batch_matrices(case):
    make_model, curvature = CASES[case]
    x, y = digits(40)
    model = make_model()
    stats = curvature_statistics(model, CE, (x, y), curvature, num_probes=3, batch_size=16, seed=5)
    _, ref = dense_reference(model, CE, x, y, 16, curvature, 3, 5)  # batches 16, 16, 8
    for key, expected in ref.items():
        assert_close(stats.per_probe[key], expected, rtol=1e-8, atol=1e-12, what=f"{case} {key}")
        got = getattr(stats, key)
        assert_close(got.value, expected.mean(), rtol=1e-8, atol=1e-12, what=f"{key} mean")
        assert_close(
            got.stderr, expected.std() / math.sqrt(3), rtol=1e-6, atol=1e-12, what=f"{key} stderr"
        )
    assert (stats.num_batches, stats.num_samples, stats.num_probes) == (3, 40, 3)


def test_ggn_is_multiplied_along_the_same_probe_as_the_hessian():
    # the original's GGN path used a shifted vector; for a model that is affine in its
    # parameters the GGN equals the Hessian, so every statistic must agree exactly
    x, y = digits(40, flatten=True)
    torch.manual_seed(0)
    model = nn.Linear(64, 10).double()
    h = curvature_statistics(model, CE, (x, y), "hessian", num_probes=4, batch_size=16, seed=1)
    g = curvature_statistics(model, CE, (x, y), "ggn", num_probes=4, batch_size=16, seed=1)
    for key in h.per_probe:
        assert_close(g.per_probe[key], h.per_probe[key], rtol=1e-9, atol=1e-14, what=key)


def test_one_probe_with_equal_batches_gives_the_original_formulas():
    x, y = digits(48)
    model = tanh_mlp()
    stats = curvature_statistics(model, CE, (x, y), num_probes=1, batch_size=16, seed=3)
    Z, _ = make_probes(stats.num_params, 1, 3)
    z = Z[:, 0]
    prods = torch.stack([dense_hessian(model, CE, xb, yb) @ z for xb, yb in batches(x, y, 16)])
    mean = prods.mean(0)
    hess_var = (prods**2).sum(1).mean() - mean @ mean  # the original's formula
    mu = z @ mean
    delta = ((mean - mu * z) ** 2).sum()
    original = {
        "hess_mean_norm_sq": mean @ mean,
        "hess_var": hess_var,
        "hess_mu": mu,
        "delta": delta,
        "alpha": max(0.0, float(1 - hess_var / 3 / delta)),
    }
    got = stats.original_keys()
    for key, value in original.items():
        assert_close(got[key], value, rtol=1e-7, atol=1e-12, what=key)
    assert math.isnan(stats.mean_norm_sq.stderr)  # one probe: no spread to measure


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
@pytest.mark.parametrize("seed", [0, 1])
def test_estimates_lie_within_four_standard_errors_of_the_dense_values(curvature, seed):
    x, y = digits(40)
    model = tanh_mlp()
    stats = curvature_statistics(
        model, CE, (x, y), curvature, num_probes=48, batch_size=20, seed=seed
    )
    H, _ = dense_reference(model, CE, x, y, 20, curvature, 1, seed)
    n = H.shape[0]
    assert_within_stderr(stats.frobenius_sq, float((H * H).sum()), what="||H||_F^2")
    assert_within_stderr(stats.trace, float(H.trace()), what="tr(H)")
    assert_within_stderr(stats.rayleigh, float(H.trace()) / n, what="z^T H z vs tr(H)/n")
    assert_within_stderr(
        stats.mean_norm_sq, float((H * H).sum()) / n, what="||Hz||^2 vs ||H||_F^2/n"
    )


def test_sum_reduction_and_loaders_give_the_same_statistics():
    x, y = digits(40)
    model = tanh_mlp()
    ref = curvature_statistics(model, CE, (x, y), num_probes=2, batch_size=16)
    a = curvature_statistics(
        model, nn.CrossEntropyLoss(reduction="sum"), (x, y), num_probes=2, batch_size=16
    )
    b = curvature_statistics(model, CE, batches(x, y, 6), num_probes=2, batch_size=16)
    for got in (a, b):
        for key in ref.per_probe:
            assert_close(got.per_probe[key], ref.per_probe[key], rtol=1e-9, atol=1e-14, what=key)


def test_batchnorm_train_leaves_buffers_and_model_untouched():
    x, y = digits(32)
    model = bn_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    stats = curvature_statistics(model, CE, (x, y), num_probes=2, batch_size=16, batchnorm="train")
    assert stats.batchnorm == "train" and model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_record_round_trips_through_json(tmp_path):
    x, y = digits(32)
    stats = curvature_statistics(tanh_mlp(), CE, (x, y), num_probes=2, batch_size=16)
    path = stats.save(tmp_path / "curv")
    loaded = CurvatureStatistics.load(path)
    assert loaded == stats
    text = str(stats)
    assert "±" in text and "mean_norm_sq" in text and "per_probe" not in text


# ----------------------------------------------------------------------------- bad input
def test_bad_input_gives_clear_errors():
    x, y = digits(20)
    model = tanh_mlp()
    with pytest.raises(ValueError, match="num_probes must be at least 1"):
        curvature_statistics(model, CE, (x, y), num_probes=0, batch_size=8)
    with pytest.raises(ValueError, match="'hessian' or 'ggn'"):
        curvature_statistics(model, CE, (x, y), curvature="fisher", batch_size=8)
    with pytest.raises(ValueError, match="larger than the dataset"):
        curvature_statistics(model, CE, (x, y), batch_size=64)
    with pytest.raises(ValueError, match="at least 1"):
        curvature_statistics(model, CE, (x, y), batch_size=0)
    with pytest.raises(ValueError, match="single batch.*curvature variance.*at least two"):
        curvature_statistics(model, CE, (x, y), batch_size=20)
