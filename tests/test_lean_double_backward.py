"""The lean double backwards of eval-mode BatchNorm and convolutions (Hessian graphs only).

Each is checked against torch's own derivatives of the same function (every block of the
Hessian, float64), by ``gradcheck`` of the backward, and through ``HessianOperator`` against
the dense ``torch.func`` Hessian; calls the routes do not cover must reach torch unchanged.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from reference import assert_close, assert_same_state, bn_cnn, dense_hessian, snapshot
from torch import nn

import jupyter_curvature as jc
from jupyter_curvature.operators._lean_double_backward import (
    LEAN_ROUTES,
    _Convolution,
    _ConvolutionGrad,
    _EvalBatchNorm,
    _EvalBatchNormGrad,
    batch_norm,
)


# ------------------------------------------------ eval-mode BatchNorm's lean double backward
def _bn_mlp() -> nn.Module:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 4))
    with torch.no_grad():  # running statistics and an affine map away from the defaults
        bn = model[1]
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.3, 2.0)
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.3, 0.3)
    return model.double().eval()


@pytest.mark.parametrize("keep_graphs", [False, True])
@pytest.mark.parametrize("kind", ["BatchNorm1d", "BatchNorm2d"])
def test_eval_batch_norm_route_gives_the_dense_hessian(kind, keep_graphs):
    """Eval-mode BatchNorm goes through the lean double backward (``_reroute``) and the
    Hessian equals torch.func's dense one, built by torch's own BatchNorm derivatives."""
    torch.manual_seed(0)
    if kind == "BatchNorm1d":
        model, x = _bn_mlp(), 2.0 * torch.randn(7, 3, dtype=torch.float64)
    else:
        model, x = bn_cnn().eval(), torch.randn(5, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (len(x),))
    loss_fn = nn.CrossEntropyLoss()
    before = snapshot(model)
    H = jc.HessianOperator(model, loss_fn, (x, y), keep_graphs=keep_graphs)
    assert H._reroute is True  # the first batch routed its batch_norm calls
    dense = H.to_dense()
    assert_same_state(model, before)
    assert_close(dense, dense_hessian(model, loss_fn, x, y), what=f"{kind}: H vs torch.func")


def test_eval_batch_norm_route_second_derivatives_equal_torchs():
    """Every block of the Hessian of ``(x, w, b) -> f(batch_norm(x, w, b))`` (x included:
    the path a BatchNorm's input takes back to earlier layers) and gradgradcheck."""
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, 2, dtype=torch.float64)
    w, b = torch.rand(3, dtype=torch.float64) + 0.5, torch.randn(3, dtype=torch.float64)
    mean, var = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5

    def f(norm):
        return lambda x, w, b: (norm(x, mean, var, w, b, False, 0.1, 1e-3) ** 3).sin().sum()

    ours = torch.autograd.functional.hessian(f(batch_norm), (x, w, b))
    torchs = torch.autograd.functional.hessian(f(F.batch_norm), (x, w, b))
    for i in range(3):
        for j in range(3):
            assert_close(ours[i][j], torchs[i][j], rtol=1e-12, atol=1e-12, what=f"block {i}{j}")
    g = torch.randn_like(x)
    inputs = [t.clone().requires_grad_() for t in (g, x, w)]
    backward = lambda g, x, w: _EvalBatchNormGrad.apply(g, x, w, mean, var, 1e-3)  # noqa: E731
    assert torch.autograd.gradcheck(backward, inputs)


def test_batch_norm_route_leaves_other_calls_to_torch():
    """Training mode, no affine map, no running statistics, mixed dtypes: torch's own
    ``batch_norm``, the same values and graph."""
    x = torch.randn(6, 3, requires_grad=True)
    w, b = torch.ones(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    mean, var = torch.zeros(3), torch.ones(3)
    cases = [
        (x, mean, var, w, b, True),
        (x, mean, var, None, None, False),
        (x, None, None, w, b, True),
        (x.detach().bfloat16().requires_grad_(), mean, var, w, b, False),  # bf16 autocast's
    ]
    for x_, m, v, w_, b_, training in cases:
        out = batch_norm(x_, m, v, w_, b_, training)
        assert "EvalBatchNorm" not in type(out.grad_fn).__name__
        assert_close(out, F.batch_norm(x_, m, v, w_, b_, training), rtol=0, atol=0)
    routed = batch_norm(x, mean, var, w, b, False)
    assert isinstance(routed.grad_fn, _EvalBatchNorm._backward_cls)
    assert_close(routed, F.batch_norm(x, mean, var, w, b, False), rtol=0, atol=0)


def test_eval_batch_norm_route_vectorised_columns_equal_one_by_one():
    """``vectorize=True`` (one batched backward, or its fallback) gives the same block."""
    torch.manual_seed(0)
    model, x = bn_cnn().eval(), torch.randn(5, 1, 8, 8, dtype=torch.float64)
    data = (x, torch.randint(0, 4, (5,)))
    loss_fn = nn.CrossEntropyLoss()
    one = jc.HessianOperator(model, loss_fn, data, keep_graphs=True)
    batched = jc.HessianOperator(model, loss_fn, data, keep_graphs=True, vectorize=True)
    V = torch.randn(one.shape[0], 3, dtype=torch.float64)
    assert_close(batched @ V, one @ V, what="vectorised vs columns")


# ------------------------------------------------------------------------------ convolutions
GEOMETRIES = list(itertools.product([1, 2], [0, 1], [1, 2], [1, 2], [True, False]))


def _hessian_blocks(conv, x, w, b, geometry):
    def f(x, w, *bias):
        y = conv(x, w, bias[0] if bias else None, *geometry)
        return (y.sin() * y).sum()

    return torch.autograd.functional.hessian(f, (x, w) + ((b,) if b is not None else ()))


@pytest.mark.parametrize("d", [1, 2, 3])
def test_convolution_route_second_derivatives_equal_torchs(d):
    """Every block of the Hessian of ``(x, W, b) -> f(conv(x, W, b))`` for strides, padding,
    dilation, groups, with and without bias, equals torch's (its double backward)."""
    torch.manual_seed(d)
    plain = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    routed = LEAN_ROUTES[plain]
    for stride, padding, dilation, groups, has_bias in GEOMETRIES:
        c, o, size = (4, 6, 6) if d < 3 else (2, 2, 5)  # a Hessian of ~500 rows for conv3d
        x = torch.randn(2, c, *[size] * d, dtype=torch.float64)
        w = torch.randn(o, c // groups, *[3] * d, dtype=torch.float64)
        b = torch.randn(o, dtype=torch.float64) if has_bias else None
        geometry = (stride, padding, dilation, groups)
        ours, torchs = (_hessian_blocks(conv, x, w, b, geometry) for conv in (routed, plain))
        for i, j in itertools.product(range(len(ours)), repeat=2):
            what = f"conv{d}d {geometry} bias={has_bias} block {i}{j}"
            assert_close(ours[i][j], torchs[i][j], rtol=1e-12, atol=1e-12, what=what)


def test_convolution_route_backward_passes_gradcheck():
    torch.manual_seed(0)
    geometry = ((2, 1), (1, 0), (1, 2), 2)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    w = torch.randn(6, 2, 3, 2, dtype=torch.float64)
    g = torch.randn_like(F.conv2d(x, w, None, *geometry))
    inputs = [t.clone().requires_grad_() for t in (g, x, w)]
    mask = (True, True, True)
    assert torch.autograd.gradcheck(
        lambda g, x, w: _ConvolutionGrad.apply(g, x, w, geometry, mask), inputs
    )


def test_convolution_route_leaves_other_calls_to_torch():
    """String padding, unbatched input, mixed dtypes, autocast: torch's own convolution."""
    conv2d = LEAN_ROUTES[F.conv2d]
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    cases = [
        ((x, w), {"padding": "same"}),
        ((x[0], w), {}),
        ((x, w.double()), {}),
    ]
    for args, kwargs in cases:
        try:
            expected = F.conv2d(*args, **kwargs)
        except RuntimeError:  # torch refuses mixed dtypes: so must the route, the same way
            with pytest.raises(RuntimeError):
                conv2d(*args, **kwargs)
            continue
        out = conv2d(*args, **kwargs)
        assert not isinstance(out.grad_fn, _Convolution._backward_cls)
        assert_close(out, expected, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv2d(x, w)
        expected = F.conv2d(x, w)
    assert out.dtype == expected.dtype == torch.bfloat16
    assert not isinstance(out.grad_fn, _Convolution._backward_cls)
    routed = conv2d(x, w, None, 2, 1)
    assert isinstance(routed.grad_fn, _Convolution._backward_cls)
    assert_close(routed, F.conv2d(x, w, None, 2, 1), rtol=0, atol=0)


class _ConvNet(nn.Module):
    """Conv1d with groups and dilation, Conv3d with stride: the routes' other dimensions."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 4, 3, padding=2, dilation=2, groups=2)
        self.c3 = nn.Conv3d(1, 2, 2, stride=2, bias=False)
        self.head = nn.Linear(4 * 6 + 2 * 8, 3)

    def forward(self, x):
        a = torch.tanh(self.c1(x[:, :12].reshape(len(x), 2, 6))).flatten(1)
        b = torch.tanh(self.c3(x[:, 12:].reshape(len(x), 1, 4, 4, 4))).flatten(1)
        return self.head(torch.cat([a, b], 1))


@pytest.mark.parametrize("keep_graphs", [False, True])
def test_convolution_route_gives_the_dense_hessian(keep_graphs):
    torch.manual_seed(0)
    model = _ConvNet().double()
    x, y = torch.randn(5, 76, dtype=torch.float64), torch.randint(0, 3, (5,))
    loss_fn = nn.CrossEntropyLoss()
    H = jc.HessianOperator(model, loss_fn, (x, y), keep_graphs=keep_graphs)
    assert H._reroute is True
    assert_close(H.to_dense(), dense_hessian(model, loss_fn, x, y), what="conv1d/3d net")
