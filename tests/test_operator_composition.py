"""Composing operators (errors, graphs, locks, copies) and the output-Hessian registry.

What every operator must do (products against dense references, counts, symmetry, state) is
in tests/test_operator_conformance.py; this file checks what only composites and the
registry have.
"""

from __future__ import annotations

import copy
import doctest
import pickle
import threading

import pytest
import torch
from reference import assert_close, dense_ggn
from torch import nn
from torch.func import hessian

import jupyter_curvature as jc
from jupyter_curvature.models import MLP
from jupyter_curvature.operators import (
    DenseOperator,
    GGNOperator,
    HessianOperator,
    as_operator,
    output_hessian_for,
    register_output_hessian,
)
from jupyter_curvature.operators import graphs as graphs_module

DT = torch.float64


def small_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = MLP(in_features=5, hidden=(4,), num_classes=3).to(DT).eval()
    x = torch.randn(12, 5, dtype=DT)
    y = torch.randint(0, 3, (12,))
    return model, nn.CrossEntropyLoss(), (x, y)


def dense(n: int = 4, seed: int = 0, dtype=DT) -> DenseOperator:
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return DenseOperator(((A + A.T) / 2).to(dtype))


# ------------------------------------------------------------------ errors
def test_sums_check_shape_dtype_and_type():
    with pytest.raises(ValueError, match="different shapes"):
        dense(4) + dense(5)
    with pytest.raises(ValueError, match="different dtypes"):
        dense(4) - dense(4, dtype=torch.float32)
    with pytest.raises(TypeError, match="as_operator"):
        dense(4) + torch.eye(4, dtype=DT)
    with pytest.raises(TypeError, match="not symmetric"):
        dense(4) * dense(4)


def test_scalars_are_checked():
    with pytest.raises(TypeError, match="real number"):
        dense() * "2"
    with pytest.raises(TypeError, match="real number"):
        dense() * torch.ones(2)
    with pytest.raises(ValueError, match="finite"):
        dense() * float("nan")
    with pytest.raises(ZeroDivisionError):
        dense() / 0


def test_deflation_and_projection_check_their_vectors():
    op = dense(4)
    with pytest.raises(ValueError, match=r"shape \(4, l\)"):
        op.deflated(torch.ones(3, 1, dtype=DT), [1.0])
    with pytest.raises(ValueError, match="one eigenvalue per column"):
        op.deflated(torch.eye(4, 2, dtype=DT), [1.0])
    with pytest.raises(ValueError, match="NaN"):
        op.deflated(torch.full((4, 1), float("nan"), dtype=DT), [1.0])
    with pytest.raises(ValueError, match="orthonormal"):
        op.projected(torch.ones(4, 2, dtype=DT))
    # a single vector is one column
    v = torch.eye(4, dtype=DT)[:, 0]
    assert_close(op.projected(v).to_dense()[:, 0], torch.zeros(4, dtype=DT), rtol=0, atol=0)


def test_deflation_by_eigenpairs_zeroes_them():
    op = dense(6, seed=3)
    values, vectors = torch.linalg.eigh(op.matrix)
    deflated = op.deflated(vectors[:, :2], values[:2]).to_dense()
    expected = torch.linalg.eigvalsh(op.matrix).clone()
    expected[:2] = 0
    assert_close(torch.linalg.eigvalsh(deflated), expected.sort().values, rtol=0, atol=1e-12)


def test_as_operator_checks_and_passes_operators_through():
    op = dense(3)
    assert as_operator(op) is op
    assert as_operator(op, shape=(3, 3), dtype=DT) is op
    with pytest.raises(ValueError, match="does not match"):
        as_operator(op, shape=4)
    with pytest.raises(ValueError, match="dtype"):
        as_operator(op, dtype=torch.float32)
    with pytest.raises(ValueError, match="shape is required"):
        as_operator(lambda v: v)
    with pytest.raises(ValueError, match="square"):
        as_operator(torch.ones(2, 3, dtype=DT))
    with pytest.raises(TypeError, match="function v -> Av"):
        as_operator(3)
    bad = as_operator(lambda v: v[:2], shape=3)
    with pytest.raises(ValueError, match="same shape"):
        bad @ torch.ones(3, dtype=DT)


def test_as_operator_wraps_a_duck_typed_operator():
    class Duck:
        shape = (3, 3)
        dtype = DT

        def __init__(self):
            self.M = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=DT))

        def matmat(self, V):
            return self.M @ V

    duck = Duck()
    op = 2 * as_operator(duck)
    assert_close(op @ torch.ones(3, dtype=DT), torch.tensor([2.0, 4.0, 6.0], dtype=DT))
    assert op.num_matvecs == 1


# ------------------------------------------------------------------ counts, graphs, locks
def test_a_composite_counts_its_parts_products_once():
    H, G = dense(4, 0), dense(4, 1)
    S = H + 2 * G - H / 2
    S @ torch.ones(4, 3, dtype=DT)
    assert (H.num_matvecs, G.num_matvecs, S.num_matvecs) == (6, 3, 9)
    S.num_matvecs = 0
    assert H.num_matvecs == G.num_matvecs == 0
    with pytest.raises(ValueError, match="reset to 0"):
        S.num_matvecs = 3


def test_composites_keep_the_hessians_graphs_and_leave_them_as_found():
    model, loss, data = small_problem()
    H = HessianOperator(model, loss, data)
    G = GGNOperator(model, loss, data)
    V = torch.randn(H.shape[0], 2, dtype=DT)
    fresh = (H - G) @ V
    composite = H - G
    with composite.kept_graphs() as keeper:
        assert H.keep_graphs is True and keeper.kept
        kept = composite @ V
        assert H._graphs is not None and keeper.graph_bytes > 0 and not keeper.gave_up
    assert H.keep_graphs is False and H._graphs is None
    assert_close(kept, fresh, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="no part"):
        with (2 * dense()).kept_graphs(True):
            pass
    with (2 * dense()).kept_graphs(None) as keeper:  # nothing to keep: a no-op
        assert not keeper.kept


def test_a_tight_budget_falls_back_to_fresh_graphs(monkeypatch):
    model, loss, data = small_problem()
    H = HessianOperator(model, loss, data)
    V = torch.randn(H.shape[0], 2, dtype=DT)
    fresh = H @ V
    with (3.0 * H).kept_graphs(budget=10) as keeper:
        y = (3.0 * H) @ V
        assert keeper.gave_up and H.keep_graphs is False
    assert_close(y, 3.0 * fresh, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="budget"):
        with H.kept_graphs(budget=-1):
            pass
    assert graphs_module.GRAPH_MEMORY_FRACTION == 0.5


def test_a_composite_holds_all_its_parts_locks():
    H, G = dense(4, 0), dense(4, 1)
    S = H + G
    inside = threading.Event()
    release = threading.Event()

    def hold():
        with S.lock:
            inside.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    inside.wait(5)
    assert not G.lock.acquire(blocking=False)  # the other thread holds it through S
    release.set()
    t.join()
    assert G.lock.acquire(blocking=False)
    G.lock.release()


def test_composites_copy_and_pickle():
    H = dense(4)
    S = (2 * H).projected(torch.eye(4, 1, dtype=DT))
    v = torch.ones(4, dtype=DT)
    for clone in (copy.deepcopy(S), pickle.loads(pickle.dumps(S))):
        assert torch.equal(clone @ v, S @ v)
    assert "ScaledOperator" in repr(2 * H) and "+" in repr(H + H)


def test_spectral_routines_take_composites():
    H = dense(12, seed=4)
    values, vectors = torch.linalg.eigh(H.matrix)
    top = jc.eigenpairs(H.deflated(vectors[:, -1:], values[-1:]), k=1, tol=1e-10)
    rest = values[:-1]  # the last eigenvalue deflated to 0: the largest in magnitude of the rest
    assert_close(top.eigenvalues[0], rest[rest.abs().argmax()], rtol=1e-8, atol=1e-10)
    assert_close(
        jc.trace(-H, num_matvecs=12).estimate, -float(values.sum()), rtol=1e-12, atol=1e-12
    )


# ------------------------------------------------------------------ the loss registry
class LogCosh(nn.Module):
    """``L = sum log cosh(z - y)`` (or its mean): ``H_L = diag(1 - tanh^2(z - y))``."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, z, y):
        losses = torch.log(torch.cosh(z - y))
        return losses.mean() if self.reduction == "mean" else losses.sum()


@register_output_hessian(LogCosh)
def _log_cosh_hessian(loss_fn, reduction):
    def product(outputs, targets, U):
        HU = (1 - torch.tanh(outputs - targets) ** 2) * U
        return HU / outputs.numel() if reduction == "mean" else HU

    return product


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_a_registered_loss_matches_torch_func_hessian(reduction):
    loss_fn = LogCosh(reduction)
    torch.manual_seed(0)
    outputs = torch.randn(5, 3, dtype=DT)
    targets = torch.randn(5, 3, dtype=DT)
    U = torch.randn(4, 5, 3, dtype=DT)
    H_L = hessian(lambda o: loss_fn(o, targets))(outputs).reshape(15, 15)
    got = output_hessian_for(loss_fn)(outputs, targets, U)
    assert_close(got.reshape(4, 15), U.reshape(4, 15) @ H_L, rtol=1e-12, atol=1e-14)

    # and the GGN built on it is J^T H_L J
    model = MLP(in_features=4, hidden=(3,), num_classes=3).to(DT).eval()
    x = torch.randn(5, 4, dtype=DT)
    G = GGNOperator(model, loss_fn, (x, targets))
    assert_close(G.to_dense(), dense_ggn(model, loss_fn, x, targets), rtol=1e-10, atol=1e-13)


def test_a_subclass_of_a_registered_loss_is_found():
    class Smoothed(nn.CrossEntropyLoss):
        pass

    z = torch.randn(3, 4, dtype=DT)
    U = torch.randn(2, 3, 4, dtype=DT)
    y = torch.tensor([0, 1, 2])
    expected = output_hessian_for(nn.CrossEntropyLoss())(z, y, U)
    assert torch.equal(output_hessian_for(Smoothed())(z, y, U), expected)


def test_a_subclass_that_only_adds_attributes_gives_the_dense_ggn():
    class Tagged(nn.CrossEntropyLoss):
        def __init__(self) -> None:
            super().__init__()
            self.tag = "focal-free"

    model, _, (x, y) = small_problem()
    G = GGNOperator(model, Tagged(), (x, y))
    expected = dense_ggn(model, nn.CrossEntropyLoss(), x, y)
    assert_close(G.to_dense(), expected, rtol=1e-10, atol=1e-13)


def test_a_subclass_that_overrides_forward_is_rejected_with_the_remedy():
    # a focal loss over CrossEntropyLoss: CE's output Hessian would give a wrong GGN
    class FocalLoss(nn.CrossEntropyLoss):
        def forward(self, z, y):
            logp = torch.log_softmax(z, 1).gather(1, y[:, None]).squeeze(1)
            return (-((1 - logp.exp()) ** 2) * logp).mean()

    class Flattening(nn.CrossEntropyLoss):  # (B, L, V) logits: wrong class dim when L == V
        def __call__(self, z, y):
            return super().__call__(z.flatten(0, 1), y.flatten())

    model, _, data = small_problem()
    for loss_fn in (FocalLoss(), Flattening()):
        name = type(loss_fn).__name__
        with pytest.raises(ValueError) as info:
            GGNOperator(model, loss_fn, data)
        message = str(info.value)
        for part in (name, "overrides forward", "HessianOperator", "register_output_hessian"):
            assert part in message

    # its own output Hessian (output_hessian=, as the message says) makes it work
    def focal_product(outputs, targets, U):
        loss_fn = FocalLoss()
        H_L = hessian(lambda o: loss_fn(o, targets))(outputs).reshape(outputs.numel(), -1)
        return (U.reshape(len(U), -1) @ H_L).reshape(U.shape)

    model, _, (x, y) = small_problem()
    G = GGNOperator(model, FocalLoss(), (x, y), output_hessian=focal_product)
    assert_close(G.to_dense(), dense_ggn(model, FocalLoss(), x, y), rtol=1e-10, atol=1e-13)


def test_an_unknown_loss_names_itself_the_supported_ones_and_the_remedy():
    class Huberish(nn.Module):
        def forward(self, z, y):
            return (z - y).abs().mean()

    with pytest.raises(ValueError) as info:
        output_hessian_for(Huberish())
    message = str(info.value)
    for part in ("Huberish", "CrossEntropyLoss", "MSELoss", "LogCosh", "register_output_hessian"):
        assert part in message
    with pytest.raises(ValueError, match="l1_loss"):
        output_hessian_for(torch.nn.functional.l1_loss)
    with pytest.raises(TypeError, match="loss class"):
        register_output_hessian(3)
    with pytest.raises(TypeError, match="callable"):
        register_output_hessian(LogCosh)(None)


def test_public_names_and_doctests():
    from jupyter_curvature.operators import adapters, base, loss_hessians

    assert jc.as_operator is as_operator
    assert jc.register_output_hessian is register_output_hessian
    for module in (adapters, base, loss_hessians):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0
