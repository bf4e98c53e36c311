"""Loss and gradient statistics against loops over batches and samples (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from reference import (
    assert_close,
    batches,
    bn_cnn,
    digits,
    loop_gradient,
    per_sample_loop,
    tanh_mlp,
    weighted_stats,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from jupyter_curvature.stats import gradient_statistics

CE = nn.CrossEntropyLoss()
MODELS = {"tanh-mlp": tanh_mlp, "bn-cnn": bn_cnn}


def brute_minibatch(model, loss_fn, x, y, batch_size):
    """The statistics by a loop over batches, weights b_i / N, two-pass variances."""
    losses, grads, weights = [], [], []
    for xb, yb in batches(x, y, batch_size):
        loss, g = loop_gradient(model, loss_fn, xb, yb)
        losses.append(torch.tensor(loss, dtype=torch.float64))
        grads.append(g)
        weights.append(len(xb))
    loss_mean, loss_var = weighted_stats(losses, weights)
    gmean, gvar = weighted_stats(grads, weights)
    return float(loss_mean), loss_var, float(gmean @ gmean), gvar


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("batch_size", [16, 7])  # 50 = 3x16 + 2 and 7x7 + 1: uneven last batch
def test_minibatch_statistics_match_a_loop_over_batches(model_name, batch_size):
    x, y = digits(50)
    model = MODELS[model_name]()
    stats = gradient_statistics(model, CE, (x, y), batch_size=batch_size)
    loss_mean, loss_var, mean_sq, gvar = brute_minibatch(model, CE, x, y, batch_size)
    assert_close(stats.loss_mean, loss_mean, what="loss_mean")
    assert_close(stats.loss_var, loss_var, what="loss_var")
    assert_close(stats.grad_mean_norm_sq, mean_sq, what="grad_mean_norm_sq")
    assert_close(stats.grad_var, gvar, what="grad_var")
    assert_close(stats.snr, mean_sq / gvar, what="snr")
    assert stats.num_batches == math.ceil(50 / batch_size)
    assert stats.num_samples == 50 and stats.batch_size == batch_size


def test_mean_gradient_is_the_full_data_gradient_with_an_uneven_last_batch():
    # weighting by batch size makes the mean of batch gradients the full-data gradient
    x, y = digits(50)
    model = tanh_mlp()
    stats = gradient_statistics(model, CE, (x, y), batch_size=16)
    loss, g = loop_gradient(model, CE, x, y)
    assert_close(stats.grad_mean_norm_sq, float(g @ g), what="||full gradient||^2")
    assert_close(stats.loss_mean, loss, what="full-data loss")


def test_equal_batches_give_the_original_formulas():
    # the original: loss_var = mean l^2 - (mean l)^2, grad_var = mean ||g_i||^2 - ||mean g||^2
    x, y = digits(48)
    model = tanh_mlp()
    stats = gradient_statistics(model, CE, (x, y), batch_size=16)
    ls, gs = zip(*[loop_gradient(model, CE, xb, yb) for xb, yb in batches(x, y, 16)], strict=True)
    ls_t, G = torch.tensor(ls, dtype=torch.float64), torch.stack(gs)
    gbar = G.mean(0)
    assert_close(stats.loss_var, (ls_t**2).mean() - ls_t.mean() ** 2, rtol=1e-7, what="loss_var")
    assert_close(stats.grad_var, (G**2).sum(1).mean() - gbar @ gbar, rtol=1e-7, what="grad_var")


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_per_sample_statistics_match_a_loop_over_samples(model_name, chunk_size):
    x, y = digits(40)
    model = MODELS[model_name]()
    stats = gradient_statistics(model, CE, (x, y), per_sample=True, chunk_size=chunk_size)
    losses, G = per_sample_loop(model, CE, x, y)
    gbar = G.mean(0)
    assert_close(stats.loss_mean, losses.mean(), what="loss_mean")
    assert_close(stats.loss_var, losses.var(correction=0), what="loss_var")
    assert_close(stats.grad_mean_norm_sq, gbar @ gbar, what="grad_mean_norm_sq")
    assert_close(stats.grad_var, ((G - gbar) ** 2).sum(1).mean(), what="grad_var")
    assert stats.per_sample and stats.batch_size == 1 and stats.num_batches == 40


def test_per_sample_equals_batch_size_one():
    x, y = digits(30)
    model = bn_cnn()
    a = gradient_statistics(model, CE, (x, y), per_sample=True)
    b = gradient_statistics(model, CE, (x, y), batch_size=1)
    for field in ("loss_mean", "loss_var", "grad_mean_norm_sq", "grad_var"):
        assert_close(getattr(a, field), getattr(b, field), what=field)


def test_sum_reduction_gives_the_statistics_of_the_mean_loss():
    x, y = digits(50)
    model = tanh_mlp()
    a = gradient_statistics(model, CE, (x, y), batch_size=16)
    b = gradient_statistics(model, nn.CrossEntropyLoss(reduction="sum"), (x, y), batch_size=16)
    c = gradient_statistics(model, nn.CrossEntropyLoss(reduction="sum"), (x, y), per_sample=True)
    d = gradient_statistics(model, CE, (x, y), per_sample=True)
    for field in ("loss_mean", "loss_var", "grad_mean_norm_sq", "grad_var"):
        assert_close(getattr(a, field), getattr(b, field), what=field)
        assert_close(getattr(c, field), getattr(d, field), what=field)


def test_data_is_regrouped_across_loader_batches():
    x, y = digits(50)
    model = tanh_mlp()
    loader = DataLoader(TensorDataset(x, y), batch_size=9)  # batches straddle the stats batches
    listed = batches(x, y, 11)
    ref = gradient_statistics(model, CE, (x, y), batch_size=16)
    for data in (loader, listed):
        got = gradient_statistics(model, CE, data, batch_size=16)
        assert got.num_batches == 4
        assert_close(got.grad_var, ref.grad_var, what="grad_var")
        assert_close(got.loss_var, ref.loss_var, what="loss_var")


def test_float32_model_and_float32_data():
    x, y = digits(50)
    model = tanh_mlp().float()
    s32 = gradient_statistics(model, CE, (x.float(), y), batch_size=16)
    s64 = gradient_statistics(model.double(), CE, (x, y), batch_size=16)
    assert_close(s32.grad_var, s64.grad_var, rtol=1e-5, what="float32 grad_var")


def test_params_subset_is_the_slice_of_the_gradient():
    x, y = digits(50)
    model = tanh_mlp()
    stats = gradient_statistics(model, CE, (x, y), batch_size=16, params="3")  # the head
    grads, weights = [], []
    for xb, yb in batches(x, y, 16):
        _, g = loop_gradient(model, CE, xb, yb)
        grads.append(g[-(10 * 8 + 10) :])
        weights.append(len(xb))
    mean, var = weighted_stats(grads, weights)
    assert stats.num_params == 90
    assert_close(stats.grad_var, var, what="head grad_var")
    assert_close(stats.grad_mean_norm_sq, mean @ mean, what="head ||g||^2")


def test_batchnorm_train_uses_batch_statistics_and_leaves_buffers():
    x, y = digits(50)
    model = bn_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    stats = gradient_statistics(model, CE, (x, y), batch_size=16, batchnorm="train")
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    # brute force: BatchNorm in train mode for each batch, buffers put back every time
    losses, grads, weights = [], [], []
    params = [p for p in model.parameters()]
    for xb, yb in batches(x, y, 16):
        model.train()
        loss = CE(model(xb), yb)
        g = torch.autograd.grad(loss, params)
        model.load_state_dict(before)
        losses.append(loss.detach())
        grads.append(torch.cat([t.reshape(-1) for t in g]))
        weights.append(len(xb))
    lm, lv = weighted_stats(losses, weights)
    gm, gv = weighted_stats(grads, weights)
    assert_close(stats.loss_mean, lm, what="loss_mean")
    assert_close(stats.grad_var, gv, what="grad_var")
    assert_close(stats.grad_mean_norm_sq, gm @ gm, what="grad_mean_norm_sq")


def test_model_state_and_grad_are_untouched():
    x, y = digits(50)
    model = tanh_mlp()
    model.train()
    model[1].weight.requires_grad_(False)
    gradient_statistics(model, CE, (x, y), batch_size=16)
    gradient_statistics(model, CE, (x, y), per_sample=True)
    assert model.training
    assert not model[1].weight.requires_grad and model[3].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("batch_size", [0, -3])
def test_batch_size_below_one(batch_size):
    x, y = digits(20)
    with pytest.raises(ValueError, match="at least 1"):
        gradient_statistics(tanh_mlp(), CE, (x, y), batch_size=batch_size)


def test_batch_size_above_the_dataset():
    x, y = digits(20)
    with pytest.raises(ValueError, match="larger than the dataset \\(20 samples\\)"):
        gradient_statistics(tanh_mlp(), CE, (x, y), batch_size=21)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, drop_last=True)  # size not known upfront
    with pytest.raises(ValueError, match="larger than the dataset \\(16 samples\\)"):
        gradient_statistics(tanh_mlp(), CE, loader, batch_size=17)


def test_single_batch_has_no_variance_and_says_why():
    x, y = digits(20)
    with pytest.raises(ValueError, match="single batch.*at least two batches"):
        gradient_statistics(tanh_mlp(), CE, (x, y), batch_size=20)
    with pytest.raises(ValueError, match="single batch"):
        gradient_statistics(tanh_mlp(), CE, (x[:1], y[:1]), per_sample=True)


def test_bad_types_and_policies():
    x, y = digits(20)
    with pytest.raises(TypeError, match="positive int"):
        gradient_statistics(tanh_mlp(), CE, (x, y), batch_size=2.5)
    with pytest.raises(ValueError, match="batchnorm"):
        gradient_statistics(tanh_mlp(), CE, (x, y), batchnorm="frozen")
    with pytest.raises(ValueError, match="batch of one"):
        gradient_statistics(bn_cnn(), CE, (x, y), per_sample=True, batchnorm="train")
    with pytest.raises(ValueError, match="reduction='none'"):
        gradient_statistics(tanh_mlp(), nn.CrossEntropyLoss(reduction="none"), (x, y))


def test_high_signal_to_noise_loses_no_accuracy():
    # nearly equal per-sample gradients (SNR ~ 1e6): E||g||^2 - ||E g||^2 would cancel most
    # digits; the chunked float64 sums and Chan's merge keep the variance to 1e-8
    torch.manual_seed(0)
    x = 1 + 1e-3 * torch.randn(40, 3, dtype=torch.float64)
    t = torch.full((40, 1), 100.0, dtype=torch.float64)
    model = nn.Linear(3, 1).double()
    mse = nn.MSELoss()
    stats = gradient_statistics(model, mse, (x, t), per_sample=True, chunk_size=7)
    _, G = per_sample_loop(model, mse, x, t)
    gbar = G.mean(0)
    exact = ((G - gbar) ** 2).sum(1).mean()
    assert stats.snr > 1e5
    assert_close(stats.grad_var, exact, rtol=1e-8, what="grad_var at high SNR")
    mini = gradient_statistics(model, mse, (x, t), batch_size=6)
    grads = [loop_gradient(model, mse, xb, tb)[1] for xb, tb in batches(x, t, 6)]
    _, var = weighted_stats(grads, [len(xb) for xb, _ in batches(x, t, 6)])
    assert_close(mini.grad_var, var, rtol=1e-8, what="mini-batch grad_var at high SNR")
