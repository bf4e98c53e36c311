"""The one test reference module: independent dense references, naive loops, and comparators.

Everything here is deliberately naive (dense matrices built with ``torch.func`` in float64,
Python loops over batches and samples) so that it checks the package's matrix-free,
streaming, vectorised code by a different route.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev
from torch.overrides import TorchFunctionMode

from jupyter_curvature.operators import flatten, select_parameters, unflatten


# ----------------------------------------------------------------------------- comparison
def assert_close(actual, expected, *, rtol=1e-10, atol=1e-12, what="values"):
    """Like ``torch.testing.assert_close`` but says which entries differ and by how much.

    Numbers and lists compare in float64 (a tensor ``actual`` sets the dtype of
    ``expected``), flattened against a tensor of as many entries; two tensors must have the
    same shape (one-element tensors compare as numbers).
    """
    given_as_tensors = isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor)
    if not isinstance(actual, torch.Tensor):
        actual = torch.as_tensor(actual, dtype=torch.float64)
    if isinstance(expected, torch.Tensor):
        expected = expected.to(actual)
    else:
        expected = torch.as_tensor(expected, dtype=actual.dtype, device=actual.device)
    if actual.numel() == 1 and expected.numel() == 1:  # a number against a 1-element tensor
        actual, expected = actual.reshape(()), expected.reshape(())
    elif not given_as_tensors and actual.numel() == expected.numel():
        actual, expected = actual.reshape(-1), expected.reshape(-1)  # a list against a tensor
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    err = (actual - expected).abs()
    bound = atol + rtol * expected.abs()
    bad = (err > bound).nonzero()
    if len(bad):
        worst = int(err.flatten().argmax())
        raise AssertionError(
            f"{what}: {len(bad)} of {err.numel()} entries differ (first at {bad[0].tolist()}); "
            f"max abs error {err.max().item():.3e} at flat index {worst}, "
            f"actual {actual.flatten()[worst].item():.6e} vs expected {expected.flatten()[worst].item():.6e}; "
            f"scale {expected.abs().max().item():.3e}"
        )


def _functional(model, params):
    named = select_parameters(model, params)
    names = [n for n, _ in named]
    tensors = [p.detach() for _, p in named]
    theta = flatten(tensors)

    def outputs(theta_, x):
        return functional_call(
            model, dict(zip(names, unflatten(theta_, tensors))), (x,), strict=False
        )

    return theta, outputs


def _prepare(model, loss_fn, x, eval_mode, mean_loss):
    """Eval mode if asked; the factor that turns a sum-reduced loss into the per-sample mean."""
    if eval_mode:
        model.eval()
    summed = mean_loss and getattr(loss_fn, "reduction", "mean") == "sum"
    return 1.0 / len(x) if summed else 1.0


def dense_hessian(model, loss_fn, x, y, params=None, *, eval_mode=False, mean_loss=False):
    """``d^2 loss_fn(model(x), y) / dtheta^2`` on one batch, in the model's current mode.

    By ``torch.func.hessian``: not a reference for a model with ``F.layer_norm`` or
    training-mode ``batch_norm`` (torch 2.14 differentiates their backward kernels with the
    saved statistics as constants; see ``dense_hessian_by_differences``).

    ``eval_mode``: put the model in eval mode first (and leave it there); ``mean_loss``: divide
    a ``reduction="sum"`` loss by the number of samples (the statistics' per-sample mean).
    """
    factor = _prepare(model, loss_fn, x, eval_mode, mean_loss)
    theta, outputs = _functional(model, params)
    if factor == 1.0:
        return hessian(lambda t: loss_fn(outputs(t, x), y))(theta)
    return hessian(lambda t: loss_fn(outputs(t, x), y) * factor)(theta)


def dense_ggn(
    model, loss_fn, x, y, params=None, output_loss=None, *, eval_mode=False, mean_loss=False
):
    """``J^T H_L J`` with ``H_L`` from ``torch.func.hessian`` of ``output_loss`` (default ``loss_fn``).

    ``eval_mode`` and ``mean_loss`` as for :func:`dense_hessian`.
    """
    factor = _prepare(model, loss_fn, x, eval_mode, mean_loss)
    theta, outputs = _functional(model, params)
    out = outputs(theta, x)
    J = jacrev(lambda t: outputs(t, x))(theta).reshape(out.numel(), -1)
    loss = output_loss or loss_fn
    H_L = hessian(lambda o: loss(o, y))(out).reshape(out.numel(), out.numel())
    if factor != 1.0:
        H_L = H_L * factor
    return J.T @ H_L @ J


def dense_empirical_fisher(model, loss_fn, x, y, params=None, reduction="mean"):
    """``sum_n g_n g_n^T`` (divided by N for the mean) by a plain loop over samples."""
    theta, outputs = _functional(model, params)
    F = torch.zeros(theta.numel(), theta.numel(), dtype=theta.dtype)
    for n in range(len(x)):
        g = torch.func.grad(lambda t, n=n: loss_fn(outputs(t, x[n : n + 1]), y[n : n + 1]))(theta)
        F += torch.outer(g, g)
    return F / len(x) if reduction == "mean" else F


def concat(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def dense_hessian_by_differences(model, loss_fn, x, y, eps=1e-5):
    """Central differences of the exact gradient: ``H[:, i] = (g(t + eps e_i) - g(t - eps e_i)) / 2 eps``.

    Used where torch.func's second derivatives are wrong: in torch 2.14, ``jacrev(jacrev(f))``
    of a network with training-mode ``batch_norm`` differs from finite differences by 5e-2
    (autograd's double backward agrees with them to 1e-9). Truncation error is O(eps^2).
    """
    theta, outputs = _functional(model, None)
    g = torch.func.grad(lambda t: loss_fn(outputs(t, x), y))
    columns = []
    for i in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[i] = eps
        columns.append((g(theta + e) - g(theta - e)) / (2 * eps))
    return torch.stack(columns, dim=1)


def digits_batch(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` built-in digits of ``split`` as one float64 ``(inputs, targets)`` batch."""
    from jupyter_curvature.data.builtin import digits_dataset

    ds = digits_dataset(split, dtype=torch.float64, limit=n)
    return ds.tensors[0], ds.tensors[1]


def snapshot(model):
    """Everything a curvature call must leave as it was: state, flags, ``.grad``."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "tracking": [getattr(m, "track_running_stats", None) for m in model.modules()],
    }


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The bytes of ``t``: bitwise equality, NaN included (``torch.equal`` says NaN != NaN)."""
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


def assert_same_state(model, before):
    """Bitwise the state :func:`snapshot` recorded."""
    after = snapshot(model)
    for key, value in before["state"].items():
        assert torch.equal(_bits(after["state"][key]), _bits(value)), f"{key} changed"
    for key in ("training", "requires_grad", "tracking"):
        assert after[key] == before[key], f"{key} changed"
    for g0, g1 in zip(before["grad"], after["grad"]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1), ".grad changed"


# ----------------------------------------------------------------------------- cases
def digits(n: int = 50, *, flatten: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training digits in float64."""
    from jupyter_curvature.data import digits_dataset

    x, y = digits_dataset("train", limit=n, dtype=torch.float64, flatten=flatten).tensors
    return x, y


def tanh_mlp(seed: int = 0, hidden: tuple[int, ...] = (8,)) -> nn.Module:
    from jupyter_curvature.models import MLP

    torch.manual_seed(seed)
    return MLP(hidden=hidden).double()


def bn_cnn(seed: int = 0, width: int = 2) -> nn.Module:
    """A SmallCNN with BatchNorm whose running statistics are not the defaults."""
    from jupyter_curvature.models import SmallCNN

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


# ----------------------------------------------------------------------------- loops
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


def assert_within_stderr(estimate, exact: float, k: float = 4.0, what: str = "estimate"):
    """``|estimate.value - exact| <= k * estimate.stderr``."""
    err = abs(estimate.value - exact)
    assert math.isfinite(estimate.stderr) and estimate.stderr > 0, f"{what}: no standard error"
    assert err <= k * estimate.stderr, (
        f"{what}: {estimate.value:.6g} is {err / estimate.stderr:.2f} standard errors "
        f"({estimate.stderr:.3g}) from the exact {exact:.6g}; the bound is {k}"
    )


# ------------------------------------------------ LayerNorm references (torch.func's is wrong)
def elementary_layer_norm(x, shape, weight=None, bias=None, eps=1e-5):
    """``F.layer_norm`` in elementary operations, whose derivatives of every order autograd
    knows: the independent reference. (torch.func's Hessian of ``F.layer_norm`` is no
    reference: in torch 2.14 it differentiates a decomposition of the backward kernel in which
    the saved mean and rstd are constants, and its ``(w, x)`` block is off by O(1).)"""
    dims = tuple(range(-len(shape), 0))
    centred = x - x.mean(dims, keepdim=True)
    y = centred * (centred.square().mean(dims, keepdim=True) + eps).rsqrt()
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


class ElementaryLayerNorms(TorchFunctionMode):
    """Every ``F.layer_norm`` call as :func:`elementary_layer_norm`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        route = elementary_layer_norm if func is F.layer_norm else func
        return route(*args, **(kwargs or {}))


class TinyTransformerBlock(nn.Module):
    """Tokens through LayerNorms (weight and bias, weight only, bias only via ``F.layer_norm``),
    GELU of each form and a SwiGLU gate with an in-place SiLU: the lean routes in one model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(4, 6)
        self.ln1 = nn.LayerNorm(6)
        self.up, self.down = nn.Linear(6, 8), nn.Linear(8, 6)
        self.ln2 = nn.LayerNorm(6, bias=False)
        self.shift = nn.Parameter(0.1 * torch.randn(3, 6))
        self.gate, self.value = nn.Linear(6, 4), nn.Linear(6, 4)
        self.head = nn.Linear(6 + 4, 3)
        with torch.no_grad():
            for ln in (self.ln1, self.ln2):
                ln.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        h = self.embed(x.view(len(x), 3, 4))
        h = h + self.down(F.gelu(self.up(self.ln1(h)), approximate="tanh"))
        h = F.gelu(self.ln2(h)) + h
        h = F.layer_norm(h, (3, 6), None, self.shift)
        swiglu = F.silu(self.gate(h), inplace=True) * self.value(h)
        return self.head(torch.cat([h, swiglu], -1).mean(1))


class MaskedAttention(nn.Module):
    """Two heads over 5 tokens: causal attention through ``F.scaled_dot_product_attention``
    with a padding mask (one query sees nothing: the kernel gives it zeros) and an explicit
    softmax; ``fused=False`` writes the same with elementary operations (the dense
    reference)."""

    def __init__(self, fused: bool = True) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.qkv, self.head, self.fused = nn.Linear(4, 12), nn.Linear(4, 3), fused

    def forward(self, x):
        q, k, v = self.qkv(x).view(len(x), 5, 3, 2, 2).permute(2, 0, 3, 1, 4)
        keep = torch.ones(5, 5, dtype=torch.bool).tril()
        keep[3] = False  # no key for the fourth query: zeros, as the kernel gives
        if self.fused:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            weights = F.softmax(q @ k.transpose(-1, -2), dim=-1)
        else:  # softmax as exp / sum, the mask as a factor (a row of zeros stays zero)
            masked = torch.exp(q @ k.transpose(-1, -2) / math.sqrt(2.0)) * keep
            attended = (masked / masked.sum(-1, keepdim=True).clamp_min(1e-300)) @ v
            weights = torch.exp(q @ k.transpose(-1, -2))
            weights = weights / weights.sum(-1, keepdim=True)
        mixed = torch.cat([attended, weights @ v], -1).mean((1, 2))
        return self.head(mixed)
