"""The lean double backwards of eval-mode BatchNorm, convolutions, LayerNorm, GELU and SiLU
(Hessian graphs only).

Each is checked against torch's own derivatives of the same function (every block of the
Hessian, float64), by ``gradcheck`` of the backward, and through ``HessianOperator`` against
the dense ``torch.func`` Hessian; calls the routes do not cover must reach torch unchanged.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from reference import (
    ElementaryLayerNorms,
    TinyTransformerBlock,
    assert_close,
    assert_same_state,
    bn_cnn,
    dense_hessian,
    dense_hessian_by_differences,
    elementary_layer_norm,
    snapshot,
)
from torch import nn

import jupyter_curvature as jc
from jupyter_curvature.operators._lean_double_backward import (
    _GELU,
    _SILU,
    LEAN_ROUTES,
    _Activation,
    _ActivationGrad,
    _Convolution,
    _ConvolutionGrad,
    _EvalBatchNorm,
    _EvalBatchNormGrad,
    _LayerNorm,
    _LayerNormGrad,
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
    assert batched._batches_backward is True  # the routes run under is_grads_batched's vmap


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


# ------------------------------------------------------------------------------ LayerNorm
def _blocks_agree(ours, reference, what):
    """Every block within 1e-12 of the largest entry (float64 rounding of a few passes)."""
    scale = max(float(block.abs().max()) for row in reference for block in row)
    for i, j in itertools.product(range(len(ours)), repeat=2):
        assert_close(ours[i][j], reference[i][j], rtol=0, atol=1e-12 * scale, what=f"{what} {i}{j}")


def _layer_norm_blocks(norm, x, shape, weight, bias, hessian):
    present = [t for t in (weight, bias) if t is not None]

    def f(x, *affine):
        it = iter(affine)
        w = next(it) if weight is not None else None
        b = next(it) if bias is not None else None
        y = norm(x, shape, w, b, 1e-3)
        return (y.sin() * y).sum()

    return hessian(f, (x, *present))


@pytest.mark.parametrize("shape", [(5,), (3, 5)])
@pytest.mark.parametrize("affine", ["weight+bias", "weight", "bias", "none"])
def test_layer_norm_route_second_derivatives_are_exact(shape, affine):
    """Every block of the Hessian of ``(x, w, b) -> f(layer_norm(x, w, b))`` over one and two
    normalised dimensions, each affine part present or not, equals the elementary reference's
    and, where torch's double backward is right, torch's. torch's drops the bias cotangent
    when there is no weight (``F.layer_norm(x, s, None, b)``): the route is right there too."""
    torch.manual_seed(len(shape))
    x = 2.0 * torch.randn(2, 4, 3, 5, dtype=torch.float64)
    weight = torch.rand(shape, dtype=torch.float64) + 0.5 if "weight" in affine else None
    bias = torch.randn(shape, dtype=torch.float64) if "bias" in affine else None
    ours, elementary, torchs = (
        _layer_norm_blocks(norm, x, shape, weight, bias, torch.autograd.functional.hessian)
        for norm in (LEAN_ROUTES[F.layer_norm], elementary_layer_norm, F.layer_norm)
    )
    _blocks_agree(ours, elementary, f"layer_norm {shape} {affine} vs elementary")
    if affine != "bias":
        _blocks_agree(ours, torchs, f"layer_norm {shape} {affine} vs torch's double backward")


def test_layer_norm_route_backward_passes_gradcheck_and_refuses_a_third_derivative():
    """The backward's derivative by finite differences; a third derivative (the saved mean and
    rstd are constants there) raises instead of coming out silently wrong."""
    torch.manual_seed(0)
    shape = (4,)
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    w, b = torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4, dtype=torch.float64)
    _, mean, rstd = torch.ops.aten.native_layer_norm(x, shape, w, b, 1e-3)
    mask = (True, True, True)
    inputs = [t.clone().requires_grad_() for t in (torch.randn_like(x), x, w)]

    def backward(g, x, w):  # mean and rstd follow x, as they do in the forward
        _, mean, rstd = torch.ops.aten.native_layer_norm(x.detach(), shape, w, b, 1e-3)
        return _LayerNormGrad.apply(g, x, w, b, mean, rstd, shape, mask)

    assert torch.autograd.gradcheck(backward, inputs)
    g, x_, w_ = inputs
    outputs = _LayerNormGrad.apply(g, x_, w_, b, mean, rstd, shape, mask)
    with pytest.raises(RuntimeError, match="third derivative through LayerNorm"):
        torch.autograd.grad(outputs[0].sum(), (g, x_, w_), create_graph=True)


def test_layer_norm_route_leaves_other_calls_to_torch():
    """bfloat16 and half, mixed dtypes, autocast: torch's own ``layer_norm``, same values."""
    x = torch.randn(3, 4, requires_grad=True)
    w, b = torch.rand(4, requires_grad=True), torch.randn(4, requires_grad=True)
    layer_norm = LEAN_ROUTES[F.layer_norm]
    low = [t.detach().bfloat16().requires_grad_() for t in (x, w, b)]
    for args in [low, (x, w.detach().double(), b)]:
        try:
            expected = F.layer_norm(args[0], (4,), *args[1:])
        except RuntimeError:  # torch refuses mixed dtypes: so must the route, the same way
            with pytest.raises(RuntimeError):
                layer_norm(args[0], (4,), *args[1:])
            continue
        out = layer_norm(args[0], (4,), *args[1:])
        assert not isinstance(out.grad_fn, _LayerNorm._backward_cls)
        assert_close(out, expected, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not isinstance(layer_norm(x, (4,), w, b).grad_fn, _LayerNorm._backward_cls)
    routed = layer_norm(x, 4, w, b)  # an int normalized_shape, as F.layer_norm accepts
    assert isinstance(routed.grad_fn, _LayerNorm._backward_cls)
    assert_close(routed, F.layer_norm(x, (4,), w, b), rtol=0, atol=0)


# --------------------------------------------------------------------------- GELU and SiLU
ACTIVATIONS = {  # name: (torch's function, keyword arguments, the route's _Pointwise, option)
    "gelu": (F.gelu, {"approximate": "none"}, _GELU, "none"),
    "gelu-tanh": (F.gelu, {"approximate": "tanh"}, _GELU, "tanh"),
    "silu": (F.silu, {}, _SILU, None),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_routes_second_derivatives_equal_torchs(name):
    """``d/dg`` and ``d/dx`` of the activation's backward: every entry of the Hessian of
    ``x -> f(act(x))`` equals torch's and torch.func's; gradcheck of the backward."""
    plain, kwargs, pointwise, option = ACTIVATIONS[name]
    torch.manual_seed(0)
    x = 3.0 * torch.randn(40, dtype=torch.float64)  # the tails and the middle

    def f(act):
        return lambda x: (act(x, **kwargs) ** 2).sin().sum()

    ours = torch.autograd.functional.hessian(f(LEAN_ROUTES[plain]), x)
    torchs = torch.autograd.functional.hessian(f(plain), x)
    forward_over_reverse = torch.func.hessian(f(plain))(x)
    scale = float(torchs.abs().max())
    assert_close(ours, torchs, rtol=0, atol=1e-13 * scale, what=name)
    assert_close(ours, forward_over_reverse, rtol=0, atol=1e-13 * scale, what="vs torch.func")
    inputs = [t.clone().requires_grad_() for t in (torch.randn_like(x), x)]
    backward = lambda g, x: _ActivationGrad.apply(g, x, pointwise, option)  # noqa: E731
    assert torch.autograd.gradcheck(backward, inputs)


def test_activation_routes_leave_autocast_to_torch_and_silu_writes_in_place():
    x = torch.randn(4, 3, requires_grad=True)
    gelu, silu = LEAN_ROUTES[F.gelu], LEAN_ROUTES[F.silu]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not isinstance(gelu(x).grad_fn, _Activation._backward_cls)
        assert not isinstance(silu(x).grad_fn, _Activation._backward_cls)
    routed = gelu(x, approximate="tanh")
    assert isinstance(routed.grad_fn, _Activation._backward_cls)
    assert_close(routed, F.gelu(x, approximate="tanh"), rtol=0, atol=0)
    h, expected = x * 2.0, F.silu(x.detach() * 2.0)
    out = silu(h, inplace=True)  # written into h, as torch's kernel does
    assert out is h
    assert_close(h, expected, rtol=0, atol=0)
    (g,) = torch.autograd.grad((h**2).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    reference = torch.autograd.functional.hessian(lambda x: (F.silu(2 * x) ** 2).sum(), x.detach())
    assert_close(gg, reference.sum((-2, -1)), rtol=1e-5, atol=1e-6, what="in place")


@pytest.mark.parametrize("keep_graphs", [False, True])
def test_layer_norm_and_activation_routes_give_the_dense_hessian(keep_graphs):
    model = TinyTransformerBlock().double()
    x, y = torch.randn(5, 12, dtype=torch.float64), torch.randint(0, 3, (5,))
    loss_fn = nn.CrossEntropyLoss()
    before = snapshot(model)
    H = jc.HessianOperator(model, loss_fn, (x, y), keep_graphs=keep_graphs)
    assert H._reroute is True
    dense = H.to_dense()
    assert_same_state(model, before)
    with ElementaryLayerNorms():  # torch.func's Hessian of F.layer_norm is wrong (above)
        reference = dense_hessian(model, loss_fn, x, y)
    scale = float(reference.abs().max())
    by_differences = dense_hessian_by_differences(model, loss_fn, x, y)
    assert_close(reference, by_differences, rtol=0, atol=1e-6 * scale, what="the reference")
    assert_close(dense, reference, what="LayerNorm/GELU block")
    batched = jc.HessianOperator(model, loss_fn, (x, y), keep_graphs=keep_graphs, vectorize=True)
    V = torch.randn(H.shape[0], 3, dtype=torch.float64)
    assert_close(batched @ V, H @ V, what="vectorised vs columns")
    assert batched._batches_backward is True  # the routes run under is_grads_batched's vmap
