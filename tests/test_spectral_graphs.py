"""Fast paths of the spectra, each against the plain path and a dense float64 reference.

* kept gradient graphs (``keep_graphs``): the same numbers as fresh graphs, the operator left as
  found, graphs invalidated by a model change, a budget that falls back to fresh graphs;
* GPyTorch's basis contractions as GEMVs (:class:`BasisGemv`): the same recurrence as the
  untouched ``lanczos_tridiag``;
* the stopping rule of ``eigenpairs`` (the guard pair).
"""

from __future__ import annotations

import copy
import gc
import importlib

import numpy as np
import pytest
import torch
from reference import dense_hessian
from torch import nn

from jupyter_curvature.data.builtin import digits_dataset
from jupyter_curvature.models.small import MLP
from jupyter_curvature.operators import DenseOperator, GGNOperator, HessianOperator
from jupyter_curvature.operators import graphs as _graphs
from jupyter_curvature.spectral import eigenpairs, lanczos, spectral_density, trace
from jupyter_curvature.spectral._checks import Operator
from jupyter_curvature.spectral.eigenpairs import _Monitor
from jupyter_curvature.spectral.lanczos import (
    LanczosClosure,
    _Record,
    _Stop,
    gemv_supported,
    run_tridiag,
    start_vectors,
    tridiagonal,
)

# the module, not the function of the same name that the package exports
lanczos_module = importlib.import_module("jupyter_curvature.spectral.lanczos")


def problem(batches: int = 1):
    torch.manual_seed(0)
    model = MLP(hidden=(8,)).double()
    data = digits_dataset("train", flatten=True, dtype=torch.float64, limit=64)
    x, y = data.tensors
    if batches == 1:
        return model, nn.CrossEntropyLoss(), (x, y)
    size = len(y) // batches
    return (
        model,
        nn.CrossEntropyLoss(),
        [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)],
    )


def differ(a: torch.Tensor, b: torch.Tensor, tol: float) -> str:
    """Which entries differ (for a readable failure), or '' when all are within ``tol``."""
    bad = ((a - b).abs() > tol).nonzero().flatten().tolist()
    return (
        ""
        if not bad
        else f"{len(bad)} entries differ, first {bad[:5]}: {a[bad[:5]]} vs {b[bad[:5]]}"
    )


def graphs_of(op) -> object:
    return getattr(op, "_graphs", None)


# ---------------------------------------------------------------- kept graphs
@pytest.mark.parametrize("batches", [1, 4])
def test_kept_graphs_give_the_fresh_graph_results(batches):
    model, loss_fn, data = problem(batches)
    x, y = problem()[2]
    H = dense_hessian(model, loss_fn, x, y)
    norm = float(torch.linalg.eigvalsh(H).abs().max())
    op = HessianOperator(model, loss_fn, data)
    fresh = eigenpairs(op, k=5, tol=1e-10, keep_graphs=False)
    kept = eigenpairs(op, k=5, tol=1e-10, keep_graphs=True)
    auto = eigenpairs(op, k=5, tol=1e-10)
    exact = torch.linalg.eigvalsh(H).flip(0)[:5]
    for r in (fresh, kept, auto):
        assert not differ(r.eigenvalues, exact, 1e-8 * norm), differ(
            r.eigenvalues, exact, 1e-8 * norm
        )
        assert r.converged
    assert kept.num_matvecs == fresh.num_matvecs == auto.num_matvecs
    assert not differ(kept.eigenvalues, fresh.eigenvalues, 1e-12 * norm)

    s_fresh = spectral_density(op, 20, 3, keep_graphs=False)
    s_kept = spectral_density(op, 20, 3)
    assert torch.allclose(s_kept.ritz_values, s_fresh.ritz_values, rtol=0, atol=1e-12 * norm)
    assert torch.allclose(s_kept.weights, s_fresh.weights, atol=1e-10)

    t_fresh = trace(op, num_matvecs=12, block_size=4, keep_graphs=False)
    t_kept = trace(op, num_matvecs=12, block_size=4)
    assert t_kept.estimate == pytest.approx(t_fresh.estimate, rel=1e-12, abs=1e-12 * norm)
    # the operator is left as it was found: graphs off and freed
    assert op.keep_graphs is False and graphs_of(op) is None


def test_an_operator_that_keeps_its_graphs_is_left_keeping_them():
    model, loss_fn, data = problem()
    op = HessianOperator(model, loss_fn, data, keep_graphs=True)
    op @ torch.ones(op.shape[0], dtype=torch.float64)
    graphs = graphs_of(op)
    eigenpairs(op, k=2, tol=1e-8)
    assert op.keep_graphs is True and graphs_of(op) is graphs  # the user's graphs, reused
    eigenpairs(op, k=2, tol=1e-8, keep_graphs=False)
    assert op.keep_graphs is True


def test_a_model_changed_between_products_invalidates_kept_graphs():
    model, loss_fn, (x, y) = problem()
    op = HessianOperator(model, loss_fn, (x, y), keep_graphs=True)
    v = torch.randn(op.shape[0], 2, dtype=torch.float64)
    before = op @ v
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)  # an in-place change, as an optimiser step makes
    after = op @ v  # (within one spectral call such a change is an error: test_threads.py)
    H_new = dense_hessian(model, loss_fn, x, y)
    norm = float(H_new.abs().max())
    assert not differ(after[:, 0], (H_new @ v)[:, 0], 1e-10 * norm), "stale graph used"
    assert not torch.allclose(before, after)
    # and a spectrum after the change is the changed model's
    r = eigenpairs(op, k=3, tol=1e-10)
    exact = torch.linalg.eigvalsh(H_new).flip(0)[:3]
    assert not differ(r.eigenvalues, exact, 1e-8 * float(exact.abs().max()))


def test_graphs_over_the_budget_fall_back_to_fresh_graphs(monkeypatch):
    model, loss_fn, data = problem(batches=4)
    op = HessianOperator(model, loss_fn, data)
    fresh = spectral_density(op, 15, 2, keep_graphs=False)
    monkeypatch.setattr(_graphs, "free_memory", lambda device: 1000)  # budget: 500 bytes
    v = torch.randn(op.shape[0], 2, dtype=torch.float64)
    with Operator(op, keep_graphs=None) as A:
        y = A.matmat(v)
        assert A.graphs.gave_up and not op.keep_graphs and graphs_of(op) is None
        assert A.graphs.graph_bytes > 500
    assert torch.allclose(y, op @ v, rtol=1e-12, atol=1e-14)
    over = spectral_density(op, 15, 2)
    assert torch.allclose(over.ritz_values, fresh.ritz_values, rtol=1e-12, atol=0)
    assert op.keep_graphs is False


def test_graph_memory_is_measured_when_it_fits():
    model, loss_fn, data = problem(batches=2)
    op = HessianOperator(model, loss_fn, data)
    with Operator(op) as A:  # the default of Operator is keep_graphs=False: nothing kept
        A.matmat(torch.ones(op.shape[0], 1, dtype=torch.float64))
        assert graphs_of(op) is None
    with Operator(op, keep_graphs=None) as A:
        A.matmat(torch.ones(op.shape[0], 1, dtype=torch.float64))
        assert op.keep_graphs and not A.graphs.gave_up and A.graphs.graph_bytes > 0


def test_keep_graphs_bad_input_and_operators_without_graphs():
    A = torch.diag(torch.arange(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="keep_graphs=True needs an operator"):
        eigenpairs(DenseOperator(A), k=2, keep_graphs=True)
    with pytest.raises(TypeError, match="keep_graphs must be True, False or None"):
        spectral_density(A, 4, keep_graphs="yes")
    # automatic on an operator without graphs (dense, GGN) is simply the plain path
    assert eigenpairs(A, k=2, tol=1e-10).eigenvalues.tolist() == pytest.approx([5.0, 4.0])
    model, loss_fn, data = problem()
    ggn = GGNOperator(model, loss_fn, data)
    assert spectral_density(ggn, 5, 2).num_matvecs == 10


def live_tensors() -> int:
    """Tensors the garbage collector can reach, after a collection (cycles included)."""
    gc.collect()
    return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())


@pytest.mark.parametrize(
    "routine",
    [
        lambda op: eigenpairs(op, k=3, seed=0),
        lambda op: spectral_density(op, 10, 2, seed=0),
        lambda op: trace(op, num_matvecs=6),
    ],
    ids=["eigenpairs", "spectral_density", "trace"],
)
def test_repeated_calls_leave_no_graph_behind(routine):
    """A watched graph build must be freed with the call: no tensor outlives it.

    The graph's saved outputs went through the byte-counting pack hook; returning the tensor
    itself from the hook made each saved output hold its own ``grad_fn``, a cycle inside
    autograd that no collection frees (3 tensors per call on this model).
    """
    model, loss_fn, data = problem()
    op = HessianOperator(model, loss_fn, data)
    calls = 20
    routine(op)  # anything filled once (caches, lazily built modules) is filled now
    before = live_tensors()
    for _ in range(calls):
        routine(op)
    grown = live_tensors() - before
    assert grown < calls, (
        f"{grown} tensors outlived {calls} calls (about {grown // calls} per call)"
    )
    assert graphs_of(op) is None and op.keep_graphs is False


# ---------------------------------------------------------------- GEMV contractions
def dense(n: int = 90, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ev = torch.cat([torch.tensor([30.0, 20.0, -12.0]), torch.linspace(-3, 3, n - 3)]).double()
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (Q * ev) @ Q.T


@pytest.mark.parametrize("probes", [1, 3])
def test_gemv_contractions_run_gpytorchs_recurrence_unchanged(probes):
    assert gemv_supported()  # the installed linear_operator is the one the mode knows
    M = dense()
    runs = []
    for gemv in (False, True):
        closure = LanczosClosure(Operator(M), seed=1)
        run_tridiag(closure, 40, start_vectors(90, probes, 1), gemv=gemv)
        runs.append((tridiagonal(closure.rec) * closure.rec.scale, torch.stack(closure.rec.inputs)))
    (T0, Q0), (T1, Q1) = runs
    assert T0.shape == T1.shape == (probes, 40, 40)
    assert torch.allclose(T1, T0, rtol=0, atol=1e-12 * 30)
    assert torch.allclose(Q1, Q0, rtol=0, atol=1e-12)


def test_lanczos_falls_back_to_plain_gpytorch_when_its_source_changes(monkeypatch):
    M = dense(seed=2)
    fast = lanczos(M, 30, num_probes=2)
    monkeypatch.setattr(lanczos_module, "gemv_supported", lambda: False)
    plain = lanczos(M, 30, num_probes=2)
    assert torch.allclose(fast.ritz_values, plain.ritz_values, rtol=0, atol=1e-12 * 30)
    exact = torch.linalg.eigvalsh(M)
    assert float((fast.ritz_values[:, -1] - exact[-1]).abs().max()) < 1e-8 * 30


def test_breakdown_with_gemv_contractions():
    ev = torch.cat([torch.full((3,), 2.0), torch.full((3,), -1.0)]).double()
    r = lanczos(torch.diag(ev), 6, num_probes=2)  # a 2-dimensional Krylov space per probe
    assert r.breakdown and r.num_steps == 2
    for p in range(2):
        assert torch.allclose(r.ritz_values[p], torch.tensor([-1.0, 2.0], dtype=torch.float64))


# ---------------------------------------------------------------- the stopping rule
def record(alphas: list[float], betas: list[float], next_beta: float) -> _Record:
    rec = _Record()
    rec.alphas = [torch.tensor([a], dtype=torch.float64) for a in alphas]
    rec.betas = [torch.tensor([b], dtype=torch.float64) for b in betas]
    rec.next_beta = torch.tensor([next_beta], dtype=torch.float64)
    return rec


def test_monitor_waits_for_the_guard_pair_until_arpacks_ncv():
    # T = diag(10, 9, 3, 2, 1, 8), the last entry coupled to the next Lanczos vector only: the wanted pairs (top 2)
    # have zero residual, the guard (the third) carries the residual of the last entry
    alphas = [10.0, 9.0, 3.0, 2.0, 1.0, 8.0]
    betas = [0.0, 0.0, 0.0, 0.0, 0.0]
    rec = record(alphas, betas, next_beta=1.0)  # guard residual 1.0 = 0.1 x scale 10
    monitor = _Monitor(k=2, which="LA", tol=1e-3, locked=[], min_steps=5, ncv=20)
    monitor(rec, 6)  # wanted converged, guard not within 10 tol: go on
    rec_small = record(alphas, betas, next_beta=1e-3)  # guard residual 1e-4 x scale
    with pytest.raises(_Stop):
        monitor(rec_small, 6)
    late = _Monitor(k=2, which="LA", tol=1e-3, locked=[], min_steps=5, ncv=6)
    with pytest.raises(_Stop):
        late(rec, 6)  # at ncv the guard is no longer asked for
    early = _Monitor(k=2, which="LA", tol=1e-3, locked=[], min_steps=7, ncv=20)
    early(rec_small, 6)  # before 2k + 1 steps: never


def test_well_separated_top_k_stops_by_twice_arpacks_basis():
    """The guard pair sits in a continuous bulk and never converges: stop at twice ARPACK's
    ncv (``GUARD_STEPS``, docs/spectral.md), not later."""
    from jupyter_curvature.spectral.eigenpairs import GUARD_STEPS

    ev = torch.cat([torch.tensor([50.0, 40.0, 32.0, 26.0, 21.0]), torch.linspace(-2, 2, 195)])
    gen = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(200, 200, generator=gen, dtype=torch.float64))[0]
    A = (Q * ev.double()) @ Q.T
    r = eigenpairs(A, k=5, tol=1e-3)
    assert r.converged and r.num_matvecs <= GUARD_STEPS * 20
    assert np.allclose(r.eigenvalues.numpy(), [50, 40, 32, 26, 21], atol=1e-3 * 50)
    true = (A @ r.eigenvectors - r.eigenvectors * r.eigenvalues).norm(dim=0)
    assert float(true.max()) <= 1e-3 * r.scale


# ---------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("basis_device", [None, "cpu"])
def test_cuda_kept_graphs_and_gemv_match_the_dense_reference(basis_device):
    model, loss_fn, (x, y) = problem()
    H = dense_hessian(model, loss_fn, x, y)
    norm = float(torch.linalg.eigvalsh(H).abs().max())
    op_cpu = HessianOperator(copy.deepcopy(model), loss_fn, (x, y))
    op = HessianOperator(model.cuda(), loss_fn, (x.cuda(), y.cuda()))
    r = eigenpairs(op, k=5, tol=1e-10, basis_device=basis_device)
    exact = torch.linalg.eigvalsh(H).flip(0)[:5]
    assert not differ(r.eigenvalues, exact, 1e-8 * norm), differ(r.eigenvalues, exact, 1e-8 * norm)
    s = spectral_density(op, 40, 2, basis_device=basis_device)
    s_cpu = spectral_density(op_cpu, 40, 2)
    assert torch.allclose(s.ritz_values, s_cpu.ritz_values, rtol=0, atol=1e-9 * norm)
    assert op.keep_graphs is False and graphs_of(op) is None


# ---------------------------------------------------------------- GPyTorch's check by DGKS
@pytest.mark.parametrize("cancel", [False, True])
def test_dgks_skips_gpytorchs_check_only_without_cancellation(cancel):
    """GPyTorch's reorthogonalisation, line for line inside the mode: after one projection
    that kept the norm (no cancellation) its check ``Q^T r`` is answered without reading the
    basis, and is indeed a few rounding errors; after a cancelling one it is computed."""
    n, j = 200, 12
    gen = torch.Generator().manual_seed(3)
    V, _ = torch.linalg.qr(torch.randn(n, j + 1, generator=gen, dtype=torch.float64))
    inside = V[:, :j] @ torch.randn(j, generator=gen, dtype=torch.float64)
    r0 = V[:, j] + (1e6 if cancel else 1e-3) * inside  # the part in the basis is projected out
    with lanczos_module.BasisGemv(j, 1, n):
        q_mat = torch.zeros(j, 1, n, 1, dtype=torch.float64)
        q_mat.copy_(V[:, :j].T.reshape(j, 1, n, 1))
        r_vec = r0.reshape(1, n, 1).clone()
        correction = r_vec.unsqueeze(0).mul(q_mat[:j]).sum(-2, keepdim=True)
        correction = q_mat[:j].mul(correction).sum(0)
        r_vec.sub_(correction)
        r_vec_norm = torch.norm(r_vec, 2, dim=-2, keepdim=True)
        r_vec.div_(r_vec_norm)
        inner_products = q_mat[:j].mul(r_vec.unsqueeze(0)).sum(-2)
    true = V[:, :j].T @ r_vec.reshape(n)  # the dense check
    assert inner_products.shape == (j, 1, 1)
    if cancel:
        assert float(true.abs().max()) > 1e-12  # the check is needed here ...
        assert torch.allclose(inner_products.flatten(), true, rtol=0, atol=1e-15)  # ... and made
    else:
        assert not inner_products.any()  # skipped ...
        assert float(true.abs().max()) < 20 * torch.finfo(torch.float64).eps  # ... rightly


def test_dgks_keeps_the_basis_orthogonal_on_a_hard_spectrum():
    """150 steps on a 300 x 300 matrix whose 10 top eigenvalues span 1..1e6 (they converge
    early, where an unreorthogonalised Lanczos loses orthogonality): the basis stays
    orthonormal to working precision, and the run equals untouched GPyTorch's."""
    gen = torch.Generator().manual_seed(4)
    n = 300
    ev = torch.cat(
        [
            torch.logspace(0, 6, 10, dtype=torch.float64),
            torch.rand(n - 10, generator=gen, dtype=torch.float64),
        ]
    )
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    M = (U * ev) @ U.T
    M = (M + M.T) / 2
    runs = []
    for gemv in (True, False):
        closure = LanczosClosure(Operator(M), seed=1)
        run_tridiag(closure, 150, start_vectors(n, 2, 1), gemv=gemv)
        runs.append((tridiagonal(closure.rec) * closure.rec.scale, torch.stack(closure.rec.inputs)))
    (T, Q), (T0, _) = runs
    for p in range(2):
        G = Q[:, :, p] @ Q[:, :, p].T
        assert float((G - torch.eye(150, dtype=torch.float64)).abs().max()) < 1e-13
    assert torch.allclose(T, T0, rtol=0, atol=1e-9 * 1e6)
