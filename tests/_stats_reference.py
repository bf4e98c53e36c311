"""Brute-force references for the statistics tests: Python loops and dense ``torch.func`` matrices.

Everything here is deliberately naive (loops over batches and samples, full matrices) so that
it checks the package's streaming, vectorised code by a different route.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from jupyter_curvature.data import digits_dataset
from jupyter_curvature.models import MLP, SmallCNN


# ----------------------------------------------------------------------------- cases
def digits(n: int = 50, *, flatten: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training digits in float64."""
    x, y = digits_dataset("train", limit=n, dtype=torch.float64, flatten=flatten).tensors
    return x, y


def tanh_mlp(seed: int = 0, hidden: tuple[int, ...] = (8,)) -> nn.Module:
    torch.manual_seed(seed)
    return MLP(hidden=hidden).double()


def bn_cnn(seed: int = 0, width: int = 2) -> nn.Module:
    """A SmallCNN with BatchNorm whose running statistics are not the defaults."""
    torch.manual_seed(seed)
    model = SmallCNN(width=width, batch_norm=True).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def batches(x: torch.Tensor, y: torch.Tensor, size: int):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


# ----------------------------------------------------------------------------- flat views
def trainable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for _, p in trainable(model)])


def _unflat(model: nn.Module, theta: torch.Tensor) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, p in trainable(model):
        out[name] = theta[start : start + p.numel()].reshape(p.shape)
        start += p.numel()
    return out


def mean_loss_fn(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor):
    """``theta -> mean loss over (x, y)`` with the model in eval mode (buffers held fixed)."""
    model.eval()
    reduction = getattr(loss_fn, "reduction", "mean")

    def f(theta: torch.Tensor) -> torch.Tensor:
        loss = loss_fn(functional_call(model, _unflat(model, theta), (x,)), y)
        return loss / len(x) if reduction == "sum" else loss

    return f


def dense_hessian(model: nn.Module, loss_fn, x, y) -> torch.Tensor:
    return hessian(mean_loss_fn(model, loss_fn, x, y))(flat_params(model))


def dense_ggn(model: nn.Module, loss_fn, x, y) -> torch.Tensor:
    """``J^T H_L J`` from ``jacrev`` of the outputs and the dense Hessian of the loss in them."""
    model.eval()
    theta = flat_params(model)

    def outputs(t):
        return functional_call(model, _unflat(model, t), (x,))

    out = outputs(theta)
    J = jacrev(outputs)(theta).reshape(out.numel(), -1)
    reduction = getattr(loss_fn, "reduction", "mean")

    def loss_of_outputs(o):
        loss = loss_fn(o.reshape(out.shape), y)
        return loss / len(x) if reduction == "sum" else loss

    HL = hessian(loss_of_outputs)(out.detach().reshape(-1))
    return J.T @ HL @ J


def loop_gradient(model: nn.Module, loss_fn, x, y) -> tuple[float, torch.Tensor]:
    """Mean loss and flat gradient of one batch, by plain autograd (model in eval mode)."""
    model.eval()
    params = [p for _, p in trainable(model)]
    loss = loss_fn(model(x), y)
    if getattr(loss_fn, "reduction", "mean") == "sum":
        loss = loss / len(x)
    g = torch.autograd.grad(loss, params)
    return float(loss.detach()), torch.cat([t.reshape(-1) for t in g])


def per_sample_loop(model, loss_fn, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample losses ``(N,)`` and gradients ``(N, P)`` by a Python loop over samples."""
    losses, grads = [], []
    for i in range(len(x)):
        loss, g = loop_gradient(model, loss_fn, x[i : i + 1], y[i : i + 1])
        losses.append(loss)
        grads.append(g)
    return torch.tensor(losses, dtype=torch.float64), torch.stack(grads)


def weighted_stats(values: list[torch.Tensor], weights: list[float]) -> tuple[torch.Tensor, float]:
    """Weighted mean and ``sum w ||v - mean||^2 / sum w``, the two-pass way."""
    w = torch.tensor(weights, dtype=torch.float64)
    V = torch.stack([v.reshape(-1).double() for v in values])
    mean = (w[:, None] * V).sum(0) / w.sum()
    var = float((w * ((V - mean) ** 2).sum(1)).sum() / w.sum())
    return mean, var


# ----------------------------------------------------------------------------- comparison
def assert_close(actual, expected, *, rtol: float = 1e-8, atol: float = 1e-10, what: str = "value"):
    """Like ``torch.testing.assert_close`` but says which entries differ and by how much."""
    a = torch.as_tensor(actual, dtype=torch.float64).reshape(-1)
    e = torch.as_tensor(expected, dtype=torch.float64).reshape(-1)
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    bad = ~((a - e).abs() <= atol + rtol * e.abs())
    if bad.any():
        idx = bad.nonzero().reshape(-1)[:8].tolist()
        detail = ", ".join(f"[{i}] {a[i].item():.12g} vs {e[i].item():.12g}" for i in idx)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.numel()} entries differ beyond rtol={rtol}, "
            f"atol={atol}: {detail}"
        )


def assert_within_stderr(estimate, exact: float, k: float = 4.0, what: str = "estimate"):
    """``|estimate.value - exact| <= k * estimate.stderr``."""
    err = abs(estimate.value - exact)
    assert math.isfinite(estimate.stderr) and estimate.stderr > 0, f"{what}: no standard error"
    assert err <= k * estimate.stderr, (
        f"{what}: {estimate.value:.6g} is {err / estimate.stderr:.2f} standard errors "
        f"({estimate.stderr:.3g}) from the exact {exact:.6g}; the bound is {k}"
    )
