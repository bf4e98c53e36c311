"""Independent dense references, built with ``torch.func`` in float64, and a reporting comparator."""

from __future__ import annotations

import torch
from torch.func import functional_call, hessian, jacrev

from jupyter_curvature.operators import flatten, select_parameters, unflatten


def assert_close(actual, expected, *, rtol=1e-10, atol=1e-12, what="values"):
    """Like ``torch.testing.assert_close`` but says which entries differ and by how much."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected).to(actual)
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


def dense_hessian(model, loss_fn, x, y, params=None):
    """``d^2 loss_fn(model(x), y) / dtheta^2`` on one batch (model assumed in eval mode)."""
    theta, outputs = _functional(model, params)
    return hessian(lambda t: loss_fn(outputs(t, x), y))(theta)


def dense_ggn(model, loss_fn, x, y, params=None, output_loss=None):
    """``J^T H_L J`` with ``H_L`` from ``torch.func.hessian`` of ``output_loss`` (default ``loss_fn``)."""
    theta, outputs = _functional(model, params)
    out = outputs(theta, x)
    J = jacrev(lambda t: outputs(t, x))(theta).reshape(out.numel(), -1)
    loss = output_loss or loss_fn
    H_L = hessian(lambda o: loss(o, y))(out).reshape(out.numel(), out.numel())
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
