"""Curvature of the models people use: activations and attention whose second derivative torch
lacks, custom Functions that cannot be differentiated twice, and a fast subset of the zoo sweep
(benchmarks/model_coverage.py) against plain double backward on the same batch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from reference import (
    MaskedAttention,
    assert_close,
    assert_same_state,
    dense_ggn,
    dense_hessian,
    dense_hessian_by_differences,
    snapshot,
)
from torch import nn
from torch.autograd.function import once_differentiable

import jupyter_curvature as jc
from jupyter_curvature.operators._second_order import twice_differentiable

# ---------------------------------------------------------------- elementary references


class ElementaryHardsigmoid(nn.Module):
    """``clamp(x + 3, 0, 6) / 6``: torch knows every derivative of these operations."""

    def forward(self, x):
        return torch.clamp(x + 3, 0, 6) / 6


class ElementaryHardswish(nn.Module):
    def forward(self, x):
        return x * torch.clamp(x + 3, 0, 6) / 6


ACTIVATIONS = {
    "hardsigmoid": (lambda: nn.Hardsigmoid(), ElementaryHardsigmoid),
    "hardsigmoid_inplace": (lambda: nn.Hardsigmoid(inplace=True), ElementaryHardsigmoid),
    "hardswish": (lambda: nn.Hardswish(), ElementaryHardswish),
    "hardswish_inplace": (lambda: nn.Hardswish(inplace=True), ElementaryHardswish),
}


def _mlp(activation: nn.Module) -> nn.Module:
    # the second linear layer makes the in-place activation act on a non-leaf, as in a network
    return nn.Sequential(nn.Linear(3, 5), activation, nn.Linear(5, 4)).double()


def _batch():
    # pre-activations spread over (-3, 3) and beyond: every piece of the activations is used
    x = 2.0 * torch.randn(7, 3, dtype=torch.float64)
    return x, torch.randint(0, 4, (7,))


def _swap(model: nn.Module, kind: type, make) -> nn.Module:
    """A deep copy of ``model`` with every ``kind`` submodule replaced by ``make()``."""
    copied = copy.deepcopy(model)
    for name, module in list(copied.named_modules()):
        if isinstance(module, kind):
            parent, _, child = name.rpartition(".")
            setattr(copied.get_submodule(parent) if parent else copied, child, make())
    return copied


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_hessian_matches_elementary_network_and_differences(name):
    make, elementary = ACTIVATIONS[name]
    model = _mlp(make())
    reference = _swap(model, type(model[1]), elementary)
    x, y = _batch()
    loss_fn = nn.CrossEntropyLoss()
    before = snapshot(model)
    H = jc.HessianOperator(model, loss_fn, (x, y)).to_dense()
    assert_same_state(model, before)
    assert_close(H, dense_hessian(reference, loss_fn, x, y), what=f"{name}: H vs torch.func")
    by_differences = dense_hessian_by_differences(model, loss_fn, x, y)
    assert_close(H, by_differences, rtol=1e-6, atol=1e-8, what=f"{name}: H vs differences")


def test_the_routing_mode_is_entered_only_for_models_that_need_it():
    """A model calling no rerouted operation builds its graphs outside the mode (it costs
    5-10% of a small product); one calling hardsigmoid inside it, with the exact Hessian."""
    x, y = _batch()
    loss_fn = nn.CrossEntropyLoss()
    plain = jc.HessianOperator(_mlp(nn.Tanh()), loss_fn, (x, y))
    assert plain._reroute is False
    assert_close(
        plain.to_dense(), dense_hessian(plain.model, loss_fn, x, y), what="tanh: H vs torch.func"
    )
    gated = jc.HessianOperator(_mlp(nn.Hardsigmoid()), loss_fn, (x, y))
    assert gated._reroute is True
    reference = _swap(gated.model, nn.Hardsigmoid, ACTIVATIONS["hardsigmoid"][1])
    assert_close(gated.to_dense(), dense_hessian(reference, loss_fn, x, y), what="hardsigmoid")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fn", [F.hardsigmoid, F.hardswish])
def test_rerouted_activations_keep_the_kernels_values_and_in_place_semantics(fn, dtype):
    x = torch.cat([torch.linspace(-4, 4, 801, dtype=dtype), torch.randn(1000, dtype=dtype) * 3])
    expected = fn(x)
    with twice_differentiable():
        out = fn(x)
        inplace = x.clone()
        returned = fn(inplace, inplace=True)
    assert torch.equal(out, expected)
    assert returned is inplace and torch.equal(inplace, expected)


class ExplicitAttention(nn.Module):
    """``softmax(q k^T * scale) v`` with a learned projection; ``fused=False``: the reference."""

    def __init__(self, dim: int = 4, fused: bool = True) -> None:
        super().__init__()
        self.qkv, self.head, self.fused = nn.Linear(dim, 3 * dim), nn.Linear(dim, 3), fused

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.fused:
            att = F.scaled_dot_product_attention(q, k, v, scale=0.7)
        else:
            att = torch.softmax(q @ k.transpose(-1, -2) * 0.7, -1) @ v
        return self.head(att.mean(1))


class AttentionBlock(nn.Module):
    def __init__(self, need_weights: bool = False) -> None:
        super().__init__()
        self.attn, self.head = nn.MultiheadAttention(4, 2, batch_first=True), nn.Linear(4, 3)
        self.need_weights = need_weights

    def forward(self, x):
        out, _ = self.attn(x, x, x, need_weights=self.need_weights)
        return self.head(out.mean(1))


@pytest.mark.parametrize("kind", ["scaled_dot_product_attention", "MultiheadAttention"])
def test_fused_attention_hessian_matches_explicit_attention(kind):
    """The CPU flash-attention kernel has no double backward; products use the explicit one."""
    if kind == "MultiheadAttention":
        model = AttentionBlock().double()
        reference = copy.deepcopy(model)
        reference.need_weights = True  # torch's own bmm/softmax path
    else:
        model = ExplicitAttention().double()
        reference = copy.deepcopy(model)
        reference.fused = False
    x, y = torch.randn(3, 5, 4, dtype=torch.float64), torch.tensor([0, 2, 1])
    loss_fn = nn.CrossEntropyLoss()
    H = jc.HessianOperator(model, loss_fn, (x, y)).to_dense()
    assert_close(H, dense_hessian(reference, loss_fn, x, y), rtol=1e-9, what=f"{kind}: H")


def test_masked_attention_hessian_matches_elementary_attention():
    """Causal attention with a padding mask under which one query sees no key (the math
    kernel's safe softmax gives it zeros) and an explicit softmax, against the same block in
    elementary operations; fresh and kept graphs, columns and vectorised."""
    model = MaskedAttention().double()
    reference = MaskedAttention(fused=False).double()
    reference.load_state_dict(model.state_dict())
    x, y = torch.randn(3, 5, 4, dtype=torch.float64), torch.tensor([0, 2, 1])
    loss_fn = nn.CrossEntropyLoss()
    expected = dense_hessian(reference, loss_fn, x, y)
    by_differences = dense_hessian_by_differences(reference, loss_fn, x, y)
    scale = float(expected.abs().max())
    assert_close(expected, by_differences, rtol=0, atol=1e-6 * scale, what="the reference")
    V = torch.randn(expected.shape[0], 3, dtype=torch.float64)
    for keep_graphs in (False, True):
        H = jc.HessianOperator(model, loss_fn, (x, y), keep_graphs=keep_graphs)
        assert H._reroute is True
        assert_close(H.to_dense(), expected, rtol=1e-9, what=f"keep_graphs={keep_graphs}")
        batched = jc.HessianOperator(
            model, loss_fn, (x, y), keep_graphs=keep_graphs, vectorize=True
        )
        assert_close(batched @ V, expected @ V, rtol=1e-9, what="vectorised")


# ---------------------------------------------------------------- custom Functions


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class SquareWithJvp(Square):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        return x * x

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return 2 * x * tangent


class Squared(nn.Module):
    def __init__(self, function=None) -> None:
        super().__init__()
        self.function = function

    def forward(self, x):
        return x * x if self.function is None else self.function.apply(x)


def _net(function) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 4), Squared(function)), nn.Linear(4, 4)).double()  # fmt: skip


@pytest.mark.parametrize("operator", [jc.HessianOperator, jc.GGNOperator])
def test_once_differentiable_function_is_named_and_the_model_untouched(operator):
    model = _net(Square)
    model[0].train()
    before = snapshot(model)
    x, y = _batch()
    with pytest.raises(
        ValueError, match=r"module '1\.1' uses custom autograd.Function Square"
    ) as err:
        operator(model, nn.CrossEntropyLoss(), (x, y))
    assert "jvp staticmethod" in str(err.value) and "once_differentiable" in str(err.value)
    assert_same_state(model, before)


def test_once_differentiable_function_with_jvp_gives_the_ggn():
    """The Hessian's remedy: forward mode gives ``J v`` without differentiating the backward."""
    model, reference = _net(SquareWithJvp), _net(None)
    x, y = _batch()
    G = jc.GGNOperator(model, nn.CrossEntropyLoss(), (x, y))
    v = torch.randn(G.shape[0], dtype=torch.float64)
    expected = dense_ggn(reference, nn.CrossEntropyLoss(), x, y) @ v
    assert_close(G @ v, expected, what="GGN v through a Function with jvp")


class CosineTokens(nn.Module):
    """Swin V2's cosine attention in miniature: ``normalize(W x)`` per token, then a head.
    ``pad`` zero tokens are appended (a padded window), whose ``W x`` is 0 for every ``W``."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad
        self.q = nn.Linear(3, 4, bias=False)
        self.head = nn.Linear(4, 3)

    def forward(self, x):  # x: (B, T, 3)
        if self.pad:
            x = torch.cat([x, x.new_zeros(x.shape[0], self.pad, x.shape[2])], dim=1)
        tokens = F.normalize(self.q(x), dim=-1)
        return self.head(tokens.sum(dim=1))


def test_normalize_of_padded_zero_tokens_has_a_finite_exact_hessian():
    """Autograd's double backward of ``F.normalize`` at a zero row is NaN (Swin V2's padded
    windows); rerouted, the Hessian equals that of the network without the padding (the zero
    tokens contribute 0 whatever the weights) and central differences of the gradient."""
    torch.manual_seed(0)
    padded = CosineTokens(pad=2).double()
    plain = copy.deepcopy(padded)
    plain.pad = 0
    x, y = torch.randn(5, 3, 3, dtype=torch.float64), torch.arange(5) % 3
    loss_fn = nn.CrossEntropyLoss()
    params = list(padded.parameters())
    grads = torch.autograd.grad(loss_fn(padded(x), y), params, create_graph=True)
    hv = torch.autograd.grad(sum(g.sum() for g in grads), params)
    assert not all(torch.isfinite(h).all() for h in hv)  # torch alone: NaN
    H = jc.HessianOperator(padded, loss_fn, (x, y)).to_dense()
    assert torch.isfinite(H).all()
    assert_close(H, dense_hessian(plain, loss_fn, x, y), what="padded vs unpadded network")
    by_differences = dense_hessian_by_differences(padded, loss_fn, x, y)
    assert_close(H, by_differences, rtol=1e-6, atol=1e-8, what="H vs differences")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rerouted_normalize_keeps_the_kernels_values(dtype):
    x = torch.randn(7, 5, 4, dtype=dtype)
    x[0, 1], x[2, :, 3] = 0.0, 1e-14  # a zero row and rows below eps along dim=1
    for dim in (1, -1, 0):
        for p in (2.0, 1.0):
            expected = F.normalize(x, p=p, dim=dim)
            with twice_differentiable():
                got = F.normalize(x, p=p, dim=dim)
            assert torch.equal(got, expected), (dim, p)


def test_empirical_fisher_through_a_function_torch_func_refuses():
    """A custom Function without ``setup_context`` (torch.func refuses it): per-sample
    gradients by a loop, equal to the brute-force ``(1/N) sum g_n g_n^T`` of the same
    network written with elementary operations."""
    model, reference = _net(Square), _net(None)
    x, y = _batch()
    loss_fn = nn.CrossEntropyLoss()
    before = snapshot(model)
    F_op = jc.EmpiricalFisherOperator(model, loss_fn, (x, y))
    dense = F_op.to_dense()
    assert F_op._vmap_works is False  # the loop ran
    assert_same_state(model, before)
    params = list(reference.parameters())
    rows = []
    for i in range(len(x)):
        grads = torch.autograd.grad(loss_fn(reference(x[i : i + 1]), y[i : i + 1]), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    G = torch.stack(rows)
    assert_close(dense, G.T @ G / len(x), what="empirical Fisher through Square.apply")


class OldStyleSquare(torch.autograd.Function):
    """``x^2`` without ``setup_context`` (torch.func refuses it) and without ``jvp``, with a
    differentiable backward: the GGN can only run in reverse mode."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def test_ggn_blocks_through_a_function_torch_func_refuses():
    """Blocks (``to_dense``, several probes) fall back to reverse mode as single vectors do,
    instead of raising torch.func's RuntimeError; equal to the dense GGN of the same network
    written with elementary operations, over two batches."""
    model, reference = _net(OldStyleSquare), _net(None)
    x, y = _batch()
    loss_fn = nn.CrossEntropyLoss()
    data = [(x[:3], y[:3]), (x[3:], y[3:])]
    expected = dense_ggn(reference, loss_fn, x, y)
    G = jc.GGNOperator(model, loss_fn, data)
    assert_close(G.to_dense(), expected, what="GGN block through OldStyleSquare.apply")
    assert not G._functorch_works  # the reverse-mode block path really ran
    v = torch.randn(G.shape[0], dtype=torch.float64)
    assert_close(G @ v, expected @ v, what="GGN v through OldStyleSquare.apply")
    density = jc.spectral_density(G, num_iters=G.shape[0], num_probes=3, seed=0)
    exact = torch.linalg.eigvalsh(expected)
    assert_close(
        density.ritz_values.max(), exact.max(), what="largest Ritz value with three probes"
    )


class Doubled(torch.autograd.Function):
    """``2 x`` with a differentiable backward and no ``jvp``: the GGN falls back to reverse mode."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class Times2(nn.Module):
    def forward(self, x):
        return 2 * x


def test_ggn_reverse_mode_fallback_through_hardsigmoid():
    """``J v`` by the double-backward trick differentiates hardsigmoid's backward too."""
    model = nn.Sequential(nn.Linear(3, 5), nn.Hardsigmoid(), Squared(Doubled), nn.Linear(5, 4))
    reference = nn.Sequential(nn.Linear(3, 5), ElementaryHardsigmoid(), Times2(), nn.Linear(5, 4))
    reference.double().load_state_dict(model.double().state_dict())
    x, y = _batch()
    G = jc.GGNOperator(model, nn.CrossEntropyLoss(), (x, y))
    v = torch.randn(G.shape[0], dtype=torch.float64)
    Gv = G @ v
    assert not G._forward_mode_works  # the reverse-mode path really ran
    expected = dense_ggn(reference, nn.CrossEntropyLoss(), x, y) @ v
    assert_close(Gv, expected, what="GGN v in reverse mode through hardsigmoid")


class RawHardsigmoid(nn.Module):
    def forward(self, x):
        return torch.ops.aten.hardsigmoid.default(x)  # below the function mode: not rerouted


def test_operation_without_double_backward_is_named():
    model = nn.Sequential(nn.Linear(3, 4), RawHardsigmoid(), nn.Linear(4, 4)).double()
    before = snapshot(model)
    x, y = _batch()
    with pytest.raises(ValueError, match=r"module '1' uses aten::hardsigmoid.*GGNOperator"):
        jc.HessianOperator(model, nn.CrossEntropyLoss(), (x, y))
    assert_same_state(model, before)
    jc.GGNOperator(model, nn.CrossEntropyLoss(), (x, y))  # the remedy works


# ---------------------------------------------------------------- the zoo, fast subset

ZOO = ["mobilenet_v3_small", "resnet18", "shufflenet_v2_x0_5", "efficientnet_b0"]


def _plain_hvp(model, x, y, v_list):
    """``H v`` by torch alone on the same batch, the model in eval mode."""
    params = list(model.parameters())
    loss = F.cross_entropy(model.eval()(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    hv = torch.autograd.grad(grads, params, v_list)
    return torch.cat([h.reshape(-1) for h in hv])


@pytest.mark.parametrize("name", ZOO)
def test_torchvision_hessian_product_equals_plain_double_backward(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=3).double().train()
    x, y = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 2])
    before = snapshot(model)
    H = jc.HessianOperator(model, nn.CrossEntropyLoss(), (x, y), check_deterministic=False)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    Hv = H @ v
    assert_same_state(model, before)  # still in train mode: stochastic depth was off in between
    # MobileNetV3's hardsigmoid has no double backward in torch: the reference differentiates
    # the same network with the elementary activation
    reference = _swap(model, nn.Hardsigmoid, ElementaryHardsigmoid)
    expected = _plain_hvp(reference, x, y, H.unflatten(v))
    assert_close(Hv, expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max()), what=name)
