"""The Lanczos core against dense float64 eigendecompositions (DenseOperator, negative eigenvalues)."""

from __future__ import annotations

import pytest
import torch

from jupyter_curvature.operators import DenseOperator
from jupyter_curvature.spectral import lanczos, spectral_density
from jupyter_curvature.spectral.lanczos import start_vectors


def dense_with_spectrum(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    n = eigenvalues.numel()
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (Q * eigenvalues) @ Q.T


def spectrum(n: int = 60) -> torch.Tensor:
    bulk = torch.linspace(-4.0, 3.0, n - 6, dtype=torch.float64)
    return torch.cat(
        [
            torch.tensor([40.0, 25.0, 18.0], dtype=torch.float64),
            bulk,
            torch.tensor([-15.0, -10.0, -8.0], dtype=torch.float64),
        ]
    )


@pytest.mark.parametrize("scale", [1.0, 1e-7, 1e5])
def test_full_run_reproduces_the_spectrum_and_keeps_every_step(scale):
    ev = spectrum()
    A = dense_with_spectrum(ev) * scale
    r = lanczos(DenseOperator(A), num_iters=ev.numel(), num_probes=3, keep_basis=True)
    assert r.num_steps == ev.numel() and not r.breakdown  # no step lost to the 1e-6 test
    exact = torch.sort(ev * scale).values
    for p in range(3):
        assert torch.allclose(r.ritz_values[p], exact, rtol=0, atol=1e-12 * 40 * scale)
        B = r.basis[p]
        assert (B.T @ B - torch.eye(B.shape[1], dtype=B.dtype)).abs().max() < 1e-12
    assert torch.allclose(r.ritz_weights.sum(-1), torch.ones(3, dtype=torch.float64), atol=1e-12)
    assert r.num_matvecs == 3 * ev.numel()


def test_weights_are_squared_eigencomponents_of_the_start_vector():
    ev = spectrum(30)
    A = dense_with_spectrum(ev, seed=3)
    r = lanczos(A, 30, num_probes=2, seed=5)
    w, U = torch.linalg.eigh(A)
    q0 = start_vectors(30, 2, 5)
    q0 = q0 / q0.norm(dim=0)
    expected = (U.T @ q0).T ** 2  # (p, n), ascending eigenvalue order
    assert torch.allclose(r.ritz_weights, expected, atol=1e-10)


def test_residual_estimates_are_true_residuals_and_T_is_the_projection():
    A = dense_with_spectrum(spectrum())
    r = lanczos(A, 20, num_probes=2, keep_basis=True)
    for p in range(2):
        Q = r.basis[p]
        assert torch.allclose(Q.T @ A @ Q, r.tridiagonal[p], atol=1e-11)
        Y = r.ritz_vectors(p)
        true = (A @ Y - Y * r.ritz_values[p]).norm(dim=0)
        assert torch.allclose(true, r.ritz_residuals[p], atol=1e-11)


def test_seeded_and_reproducible():
    A = dense_with_spectrum(spectrum())
    a, b = lanczos(A, 15, 2, seed=1), lanczos(A, 15, 2, seed=1)
    c = lanczos(A, 15, 2, seed=2)
    assert torch.equal(a.tridiagonal, b.tridiagonal)
    assert not torch.equal(a.tridiagonal, c.tridiagonal)


def test_block_is_one_product_call_per_step():
    A = dense_with_spectrum(spectrum())
    calls = []

    class Counting(DenseOperator):
        def _matmat(self, block):
            calls.append(block.shape[1])
            return super()._matmat(block)

    r = lanczos(Counting(A), 12, num_probes=4)
    assert calls == [4] * 12 and r.num_matvecs == 48


def test_rank_deficient_breakdown_and_zero_operator():
    ev = torch.zeros(40, dtype=torch.float64)
    ev[:3] = torch.tensor([5.0, -2.0, 1.0])
    A = dense_with_spectrum(ev)
    r = lanczos(A, 30, num_probes=2)
    assert r.breakdown and r.num_steps == 4  # 3 non-zero eigenvalues and the null space
    for p in range(2):
        assert torch.allclose(
            r.ritz_values[p], torch.tensor([-2.0, 0.0, 1.0, 5.0], dtype=torch.float64), atol=1e-12
        )
    z = lanczos(torch.zeros(7, 7, dtype=torch.float64), 5, num_probes=3)
    assert z.breakdown and z.num_steps == 1 and torch.all(z.ritz_values == 0)
    assert torch.all(torch.isfinite(z.ritz_weights))


def test_mixed_breakdown_probe_restarts_without_nan():
    # one Rademacher probe is an eigenvector of this operator (every entry +1), the other is not
    n = 6
    A = (
        torch.full((n, n), 1.0, dtype=torch.float64)
        + torch.diag(torch.arange(n, dtype=torch.float64)) * 0
    )
    A = A + torch.diag(torch.tensor([0, 0, 0, 0, 0, 0.5], dtype=torch.float64))
    A = (A + A.T) / 2
    init = torch.ones(n, 2, dtype=torch.float64)
    init[0, 1] = -1
    init[:, 0] = torch.linalg.eigh(A).eigenvectors[:, -1]
    r = lanczos(A, n, num_probes=2, init=init)
    assert torch.all(torch.isfinite(r.tridiagonal)) and r.num_steps >= 2
    # probe 1 still finds the operator's extremes; every Ritz value is an eigenvalue of A
    exact = torch.linalg.eigvalsh(A)
    assert abs(float(r.ritz_values[1].max() - exact.max())) < 1e-10
    for theta in r.ritz_values.flatten():
        assert (exact - theta).abs().min() < 1e-8
    # probe 0 broke down at step 1: its later Ritz values carry no weight
    assert r.ritz_weights[0].max() == pytest.approx(1.0, abs=1e-12)


def test_n_equals_one_and_one_step():
    r = lanczos(torch.tensor([[-3.0]], dtype=torch.float64), 10, num_probes=2)
    assert r.num_steps == 1 and torch.allclose(
        r.ritz_values, torch.full((2, 1), -3.0, dtype=torch.float64), rtol=1e-15
    )
    r1 = lanczos(dense_with_spectrum(spectrum()), 1)
    assert r1.num_steps == 1 and r1.num_matvecs == 1


def test_float32_operator_keeps_float64_basis():
    ev = spectrum()
    A = dense_with_spectrum(ev)
    r = lanczos(DenseOperator(A.float()), 60, keep_basis=True)
    assert r.basis.dtype == torch.float64 and r.ritz_values.dtype == torch.float64
    assert (r.ritz_values[0] - torch.sort(ev).values).abs().max() < 1e-5 * 40


def textbook_lanczos(A: torch.Tensor, q: torch.Tensor, m: int) -> tuple[torch.Tensor, ...]:
    """The plain three-term recurrence in float64 (Parlett 1998, section 13.1): the reference.

    ``w = A q_j - beta_j q_{j-1}``, ``alpha_j = q_j^T w``, ``beta_{j+1} = ||w - alpha_j q_j||``.
    """
    q = q / q.norm()
    previous, beta = torch.zeros_like(q), 0.0
    alphas, betas = [], []
    for j in range(m):
        w = A @ q - beta * previous
        alphas.append(float(q @ w))
        w = w - alphas[-1] * q
        if j + 1 < m:
            beta = float(w.norm())
            betas.append(beta)
            previous, q = q, w / beta
    return torch.tensor(alphas, dtype=torch.float64), torch.tensor(betas, dtype=torch.float64)


def outlier_spectrum(n: int = 400, seed: int = 0) -> torch.Tensor:
    """Three isolated eigenvalues (100, 50, -20) beside a standard normal bulk: the audit's case."""
    gen = torch.Generator().manual_seed(seed)
    bulk = torch.randn(n - 3, generator=gen, dtype=torch.float64)
    return torch.cat([torch.tensor([100.0, 50.0, -20.0], dtype=torch.float64), bulk])


def test_no_reorthogonalisation_records_the_textbook_tridiagonal():
    # window=2 once made every beta subtract alpha_1 and beta_1 (Ritz values outside the
    # spectrum). The first 8 steps, before the top Ritz value converges and the two runs'
    # roundings part, agree to 2e-15 of ||A||; the wrong coefficients fed back into the
    # recurrence and gave 1e-14 at step 3 and 3e-12 at step 7, so 1e-13 tells them apart
    ev = outlier_spectrum()
    A = dense_with_spectrum(ev)
    steps, compared = 80, 8
    r = lanczos(DenseOperator(A), steps, num_probes=3, seed=0, reorthogonalize="none")
    q0 = start_vectors(ev.numel(), 3, 0)
    norm = float(ev.abs().max())
    for p in range(3):
        alphas, betas = textbook_lanczos(A, q0[:, p], steps)
        T = r.tridiagonal[p]
        assert (T.diagonal()[:compared] - alphas[:compared]).abs().max() <= 1e-13 * norm
        assert (T.diagonal(1)[:compared] - betas[:compared]).abs().max() <= 1e-13 * norm


def test_no_reorthogonalisation_ritz_values_in_spectrum_and_residuals_honest():
    ev = outlier_spectrum()
    A = dense_with_spectrum(ev)
    exact = torch.linalg.eigvalsh(A)
    # rounding allowance of Paige's error analysis (1980): a small multiple of n eps ||A||
    slack = 10 * ev.numel() * torch.finfo(torch.float64).eps * float(exact.abs().max())
    for how in ("lanczos", "density"):
        if how == "lanczos":
            r = lanczos(DenseOperator(A), 80, num_probes=3, seed=0, reorthogonalize="none")
            theta, res = r.ritz_values, r.ritz_residuals
        else:
            s = spectral_density(A, 80, 3, seed=0, reorthogonalize="none")
            theta, res = s.ritz_values, s.residuals
        assert theta.max() <= exact[-1] + slack and theta.min() >= exact[0] - slack
        # |lambda - theta| <= ||A y - theta y|| for every Ritz pair (Parlett, Thm 4.5.1)
        distance = (theta.unsqueeze(-1) - exact).abs().min(-1).values
        assert (distance <= res + slack).all(), (distance - res).max()


def test_bad_input_is_named():
    A = dense_with_spectrum(spectrum())
    with pytest.raises(ValueError, match="num_iters"):
        lanczos(A, 0)
    with pytest.raises(ValueError, match="num_probes"):
        lanczos(A, 5, num_probes=0)
    with pytest.raises(TypeError, match="num_iters"):
        lanczos(A, 2.5)
    with pytest.raises(ValueError, match="not symmetric"):
        lanczos(torch.randn(8, 8, dtype=torch.float64), 4)
    with pytest.raises(ValueError, match="square"):
        lanczos(torch.zeros(3, 4), 2)
    with pytest.raises(TypeError, match="curvature operator"):
        lanczos([[1.0]], 2)
    bad = A.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="the loss or the model produced NaN"):
        spectral_density(bad, 5)
