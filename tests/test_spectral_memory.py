"""The memory model of the Lanczos basis, the float32 basis and the density without a basis.

Every number is checked against an independent computation: a dense float64 ``torch.func``
Hessian (its exact moments ``q_0^T A^j q_0``), the float64-basis run, the byte counts by hand.
(The resident memory is measured by ``benchmarks/bench_memory.py``, not here: it depends on
the machine's state.)
"""

from __future__ import annotations

import pytest
import torch
from reference import dense_hessian, digits_batch
from torch import nn

from jupyter_curvature.operators import HessianOperator
from jupyter_curvature.spectral import eigenpairs, lanczos, memory, spectral_density
from jupyter_curvature.spectral.lanczos import start_vectors
from jupyter_curvature.spectral.memory import (
    choose_basis,
    combine64,
    density_bytes,
    dot64,
    eigenpairs_bytes,
)

EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def mlp_hessian():
    """A tanh MLP 64-16-10 on 200 digits (1,210 parameters) and its dense Hessian."""
    torch.manual_seed(0)
    x, y = digits_batch("train", 200)
    x = x.reshape(x.shape[0], -1)
    model = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double()
    loss_fn = nn.CrossEntropyLoss()
    H = dense_hessian(model, loss_fn, x, y)
    return HessianOperator(model, loss_fn, (x, y)), H


def moments(theta: torch.Tensor, tau: torch.Tensor, scale: float, j: int) -> torch.Tensor:
    """Gauss quadrature of ``(x / scale)^j`` per probe: ``sum_k tau_k (theta_k / scale)^j``."""
    return (tau * (theta / scale) ** j).sum(-1)


def test_float64_accumulation_of_a_float32_basis():
    gen = torch.Generator().manual_seed(0)
    Q = torch.randn(7, 100_003, generator=gen).float()
    x = torch.randn(100_003, generator=gen).float()
    c = torch.randn(7, generator=gen, dtype=torch.float64)
    exact_dot = Q.double() @ x.double()
    exact_comb = Q.double().T @ c
    # the inner products: only the float32 inputs are rounded (relative 0 beyond float64 sums)
    assert (dot64(Q, x) - exact_dot).abs().max() <= 1e-12 * (
        Q.abs().double() @ x.abs().double()
    ).max()
    # the combination: formed in float64, rounded once to float32 (half an ulp)
    err = (combine64(Q, c).double() - exact_comb).abs()
    assert (err <= 0.5 * EPS32 * exact_comb.abs() + 1e-30).all()


@pytest.mark.parametrize("num_iters", [30, 80])
def test_float32_basis_density_matches_float64(mlp_hessian, num_iters):
    """Lanczos with a float32 basis, reorthogonalised with float64 accumulation, is the float64
    run perturbed by the rounding of each stored vector: by Paige's backward analysis its
    tridiagonal is that of ``A + E`` with ``||E|| <= c m eps32 ||A||``, so every Ritz value moves
    by at most that much (Weyl). With c = 10 the bound is 300-800 eps32 ||A||; measured: 0.65."""
    op, H = mlp_hessian
    scale = float(torch.linalg.eigvalsh(H).abs().max())
    d64 = spectral_density(op, num_iters=num_iters, num_probes=4, seed=0)
    d32 = spectral_density(op, num_iters=num_iters, num_probes=4, seed=0, basis_dtype=torch.float32)
    bound = 10 * num_iters * EPS32 * scale
    assert (d32.ritz_values - d64.ritz_values).abs().max() <= bound
    assert (d32.weights - d64.weights).abs().max() <= 10 * num_iters * EPS32
    for j in range(2 * num_iters):
        diff = moments(d32.ritz_values, d32.weights, scale, j) - moments(
            d64.ritz_values, d64.weights, scale, j
        )
        assert diff.abs().max() <= 10 * num_iters * EPS32, j


def test_float32_basis_eigenpairs_are_certified(mlp_hessian):
    op, H = mlp_hessian
    ev = torch.linalg.eigvalsh(H).flip(0)[:5]
    r64 = eigenpairs(op, k=5, tol=1e-6, seed=0)
    r32 = eigenpairs(op, k=5, tol=1e-6, seed=0, basis_dtype=torch.float32)
    assert r32.converged and r64.converged
    assert (r32.eigenvalues - ev).abs().max() <= 1e-6 * r32.scale
    # the certificate from true products (the vectors rounded to float32 and the product in
    # float64): recomputed here with the dense matrix
    V = r32.eigenvectors.double()
    true = (H @ V - V * r32.eigenvalues).norm(dim=0)
    assert (true <= 1e-6 * r32.scale).all()


@pytest.mark.parametrize("num_iters", [30, 80])
def test_no_reorthogonalisation_keeps_the_moments(mlp_hessian, num_iters):
    """``e_1^T T^j e_1 = q_0^T A^j q_0`` for ``j < 2m`` (Gauss quadrature is exact for degree
    ``2m - 1``; Golub & Meurant 2010, Thm 6.2), and in floating point the three-term recurrence
    keeps it to working accuracy even after orthogonality is lost (Greenbaum 1989): checked
    against the dense Hessian, in units of ``||A||``, for both modes."""
    op, H = mlp_hessian
    n = H.shape[0]
    scale = float(torch.linalg.eigvalsh(H).abs().max())
    full = spectral_density(op, num_iters=num_iters, num_probes=2, seed=3)
    none = spectral_density(op, num_iters=num_iters, num_probes=2, seed=3, reorthogonalize="none")
    q = start_vectors(n, 2, 3)
    q = q / q.norm(dim=0)
    Aj = q.clone()
    for j in range(2 * num_iters):
        exact = (q * Aj).sum(0)
        for d in (full, none):
            got = moments(d.ritz_values, d.weights, scale, j)
            assert (got - exact).abs().max() <= 1e-10, (j, d.num_iters)
        Aj = H @ Aj / scale


def test_no_reorthogonalisation_makes_ghost_copies(mlp_hessian):
    """Once the top Ritz value has converged, the plain recurrence finds it again (Paige): the
    full run holds one copy of the top eigenvalue per probe, the plain one more."""
    op, H = mlp_hessian
    top = float(torch.linalg.eigvalsh(H)[-1])
    full = spectral_density(op, num_iters=80, num_probes=2, seed=0)
    none = spectral_density(op, num_iters=80, num_probes=2, seed=0, reorthogonalize="none")
    copies = lambda d: (d.ritz_values - top).abs().le(1e-6 * top).sum(1)  # noqa: E731
    assert (copies(full) == 1).all()
    assert (copies(none) >= 2).all()
    # the copies share the one eigenvalue's weight: the total near the top is unchanged
    near = lambda d: torch.where((d.ritz_values - top).abs() <= 1e-6 * top, d.weights, 0).sum(1)  # noqa: E731
    assert torch.allclose(near(full), near(none), rtol=1e-6, atol=1e-12)


def test_lanczos_none_keeps_no_basis(mlp_hessian):
    op, _ = mlp_hessian
    with pytest.raises(ValueError, match="stores no basis"):
        lanczos(op, 10, keep_basis=True, reorthogonalize="none")
    with pytest.raises(ValueError, match="ritz_vectors"):
        spectral_density(op, 10, ritz_vectors=True, reorthogonalize="none")
    with pytest.raises(ValueError, match="reorthogonalize must be"):
        spectral_density(op, 10, reorthogonalize="partial")


def test_memory_budget_chooses_the_most_accurate_basis_that_fits(mlp_hessian, monkeypatch):
    op, _ = mlp_hessian
    n = op.shape[0]
    f64 = density_bytes(n, 20, 2, torch.float64)
    f32 = density_bytes(n, 20, 2, torch.float32, op_dtype=torch.float64)
    # the float32 basis of a float64 operator: half the blocks, plus each product's input
    # and output in float64
    assert f64 == 8 * n * 2 * (20 + 8) and f32 == f64 // 2 + 2 * 8 * n * 2
    d = spectral_density(op, 20, 2, ritz_vectors=True, memory_budget=f64)
    assert d.ritz_vectors.dtype == torch.float64
    d = spectral_density(op, 20, 2, ritz_vectors=True, memory_budget=f64 - 1)
    assert d.ritz_vectors.dtype == torch.float32
    e = eigenpairs_bytes(n, 3, 30, "stored", torch.float64)
    assert e == 8 * n * (2 * 30 + 16 + 6)  # Q (GPyTorch's block), A Q (the closure's block)
    assert eigenpairs(op, k=3, max_basis=30, memory_budget=e).converged
    # a GPU operator: the host-held basis costs the device only its working blocks, and
    # must fit in the free CPU memory (fixed here: the test must not depend on the machine)
    monkeypatch.setattr(memory, "available_host_bytes", lambda: 10**12)
    mode = choose_basis(
        lambda dt, how: density_bytes(10**6, 80, 4, dt, how), torch.device("cuda"), 2e8, None,
        None, working=4 * 10**6 * 4,
    )  # fmt: skip
    assert mode.device.type == "cpu" and mode.dtype == torch.float64
    assert mode.device_bytes == 8 * (4 * 10**6 * 4) and mode.host_bytes == 8 * 10**6 * 4 * 88
    monkeypatch.setattr(memory, "available_host_bytes", lambda: 10**9)  # neither fits the host
    with pytest.raises(ValueError, match="float32 basis on cpu: 128 MB on the device"):
        choose_basis(
            lambda dt, how: density_bytes(10**6, 80, 4, dt, how), torch.device("cuda"), 2e8,
            None, None, working=4 * 10**6 * 4,
        )  # fmt: skip


def test_a_budget_too_small_names_the_modes_that_fit(mlp_hessian):
    op, _ = mlp_hessian
    n = op.shape[0]
    f32 = density_bytes(n, 20, 2, torch.float32, op_dtype=torch.float64)
    with pytest.raises(ValueError, match="float32 basis on cpu") as err:
        spectral_density(op, 20, 2, basis_dtype=torch.float64, memory_budget=f32)
    text = str(err.value)
    assert "use float32 basis on cpu" in text and 'reorthogonalize="none" (float64)' in text
    assert f"{density_bytes(n, 20, 2, torch.float64) / 1e3:.3g} kB" in text  # bytes of each
    none64 = density_bytes(n, 20, 2, torch.float64, "none", torch.float64)
    with pytest.raises(ValueError, match=r'use reorthogonalize="none" \(float64\)'):
        spectral_density(op, 20, 2, memory_budget=none64)
    with pytest.raises(ValueError, match="none of them fits"):
        eigenpairs(op, k=3, memory_budget=100)
    with pytest.raises(ValueError, match="memory_budget must be a positive number"):
        spectral_density(op, 20, memory_budget=-1)
