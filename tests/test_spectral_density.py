"""SLQ density, statistics and trace estimators against exact dense float64 quantities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jupyter_curvature.operators import DenseOperator
from jupyter_curvature.spectral import SpectralDensity, spectral_density, trace
from jupyter_curvature.spectral.lanczos import start_vectors


def dense_with_spectrum(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    n = eigenvalues.numel()
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (Q * eigenvalues) @ Q.T


def spectrum(n: int = 120) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    bulk = torch.rand(n - 4, generator=gen, dtype=torch.float64) * 3 - 1  # [-1, 2]
    return torch.cat([torch.tensor([30.0, 20.0, 12.0, -9.0], dtype=torch.float64), bulk])


def test_full_slq_is_the_exact_spectrum():
    ev = spectrum()
    A = dense_with_spectrum(ev)
    s = spectral_density(A, num_iters=ev.numel(), num_probes=3, seed=1)
    assert s.num_steps == ev.numel()
    exact = torch.sort(ev).values
    assert torch.allclose(s.ritz_values, exact.expand(3, -1), atol=1e-11 * 30)
    assert torch.allclose(s.weights.sum(1), torch.ones(3, dtype=torch.float64), atol=1e-12)
    # weights are the squared components of each probe in the eigenbasis
    _, U = torch.linalg.eigh(A)
    q = start_vectors(ev.numel(), 3, 1)
    q = q / q.norm(dim=0)
    assert torch.allclose(s.weights, ((U.T @ q) ** 2).T, atol=1e-10)


def test_stats_match_brute_force():
    ev = spectrum()
    A = dense_with_spectrum(ev)
    n = ev.numel()
    s = spectral_density(A, num_iters=40, num_probes=4, seed=0)
    st = s.stats
    theta, tau = s.ritz_values.numpy(), s.weights.numpy()
    # trace = n * weighted mean = Hutchinson with the same Rademacher probes
    Z = start_vectors(n, 4, 0)
    hutch = (Z * (A @ Z)).sum(0)
    assert st.trace == pytest.approx(float(hutch.mean()), rel=1e-10)
    assert st.trace_stderr == pytest.approx(float(hutch.std() / 2), rel=1e-8)
    assert st.largest == pytest.approx(30.0, rel=1e-10) and st.smallest == pytest.approx(
        -9.0, rel=1e-10
    )
    neg = (
        sum(tau[p, i] for p in range(4) for i in range(theta.shape[1]) if theta[p, i] < -1e-8 * 30)
        / 4
    )
    assert st.negative_mass == pytest.approx(neg, rel=1e-12)
    assert st.negative_count == pytest.approx(n * neg, rel=1e-12)
    logdet = (
        sum(tau[p, i] * math.log(abs(theta[p, i])) for p in range(4) for i in range(theta.shape[1]))
        / 4
    )
    assert st.log_abs_det == pytest.approx(n * logdet, rel=1e-10)
    # outliers: the separated eigenvalues, and nothing from the bulk
    assert np.allclose(sorted(st.outliers), [-9.0, 12.0, 20.0, 30.0], atol=1e-6)
    assert st.bulk_range[0] >= -1.0 - 1e-9 and st.bulk_range[1] <= 2.0 + 1e-9


def test_stats_with_full_steps_match_exact_counts():
    ev = spectrum(60)
    A = dense_with_spectrum(ev)
    s = spectral_density(A, num_iters=60, num_probes=8, seed=3)
    st = s.stats
    # exact: the negative count and log|det| as expectations over probes -> n * mean weight
    assert abs(st.negative_count - int((ev < 0).sum())) < 4 * math.sqrt(60) * 0.5 + 1
    assert st.largest == pytest.approx(float(ev.max()), rel=1e-12)


def test_density_integrates_to_one_and_band():
    A = dense_with_spectrum(spectrum())
    s = spectral_density(A, num_iters=30, num_probes=4)
    d = s.density(num_points=4000)
    assert np.trapezoid(d.density, d.grid) == pytest.approx(1.0, abs=1e-6)
    assert (
        d.per_probe.shape == (4, 4000)
        and np.all(d.lower <= d.density)
        and np.all(d.upper >= d.density)
    )
    assert np.allclose(d.std, d.per_probe.std(0, ddof=1))
    # closed form at one point for one probe
    t, sig = 0.3, 0.2
    d1 = s.density(grid=[t], sigma=sig)
    th, w = s.ritz_values[0].numpy(), s.weights[0].numpy()
    manual = (w * np.exp(-0.5 * ((t - th) / sig) ** 2)).sum() / (sig * math.sqrt(2 * math.pi))
    assert d1.per_probe[0, 0] == pytest.approx(manual, rel=1e-12)
    # Papyan's bandwidth: (range/2 * 1.05) * 2/(m-1) / sqrt(8 ln 1.25)
    half = (float(s.ritz_values.max() - s.ritz_values.min())) / 2 * 1.05
    assert s.default_sigma() == pytest.approx(half * 2 / 29 / math.sqrt(8 * math.log(1.25)))


def test_probes_share_each_product_call():
    A = dense_with_spectrum(spectrum())
    calls = []

    class Counting(DenseOperator):
        def _matmat(self, block):
            calls.append(block.shape[1])
            return super()._matmat(block)

    s = spectral_density(Counting(A), num_iters=10, num_probes=4)
    assert calls == [4] * 10 and s.num_matvecs == 40


def test_ritz_vectors_on_request():
    A = dense_with_spectrum(spectrum())
    s = spectral_density(A, num_iters=25, num_probes=2, ritz_vectors=True)
    Y = s.ritz_vectors[1]
    true = (A @ Y - Y * s.ritz_values[1]).norm(dim=0)
    assert torch.allclose(true, s.residuals[1], atol=1e-10)


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_save_load_lossless(tmp_path, suffix):
    A = dense_with_spectrum(spectrum())
    s = spectral_density(A, num_iters=20, num_probes=2, ritz_vectors=True)
    back = SpectralDensity.load(s.save(tmp_path / f"spec{suffix}"))
    assert torch.equal(back.ritz_values, s.ritz_values) and torch.equal(back.weights, s.weights)
    assert torch.equal(back.ritz_vectors, s.ritz_vectors)
    assert back.to_dict() == s.to_dict()
    assert "SpectralDensity(n=120" in repr(s) and "trace" in repr(s.stats)


def test_rank_deficient_zero_and_one_dimensional():
    ev = torch.zeros(50, dtype=torch.float64)
    ev[:2] = torch.tensor([4.0, -1.0])
    s = spectral_density(dense_with_spectrum(ev), num_iters=30, num_probes=2)
    assert s.breakdown and s.num_steps == 3
    assert s.stats.zero_mass > 0.5 and s.stats.largest == pytest.approx(4.0)
    z = spectral_density(torch.zeros(5, 5, dtype=torch.float64), num_iters=5, num_probes=2)
    assert z.stats.trace == 0 and z.stats.zero_mass == 1.0
    one = spectral_density(torch.tensor([[2.5]], dtype=torch.float64), num_iters=3, num_probes=2)
    assert one.stats.trace == pytest.approx(2.5) and one.num_steps == 1


def test_bad_input():
    A = dense_with_spectrum(spectrum())
    with pytest.raises(ValueError, match="num_iters"):
        spectral_density(A, num_iters=0)
    with pytest.raises(ValueError, match="num_probes"):
        spectral_density(A, num_probes=0)
    with pytest.raises(ValueError, match="sigma"):
        spectral_density(A, 5).density(sigma=-1)
    with pytest.raises(ValueError, match="not symmetric"):
        spectral_density(torch.randn(6, 6, dtype=torch.float64), 4)


# ------------------------------------------------------------------------------- trace
@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_within_three_standard_errors(method):
    ev = spectrum()
    A = dense_with_spectrum(ev)
    exact = float(ev.sum())
    hits = 0
    for seed in range(10):
        t = trace(A, method=method, num_matvecs=60, seed=seed)
        assert t.num_matvecs == 60
        hits += abs(t.estimate - exact) <= 3 * t.stderr
        assert t.estimate == pytest.approx(t.exact_part + np.mean(t.samples))
    assert hits >= 9  # 3 s.e. covers ~99.7% of a normal estimate


def test_hutchpp_beats_hutchinson_and_converges():
    ev = spectrum()
    A = dense_with_spectrum(ev)
    exact = float(ev.sum())
    e1 = [abs(trace(A, "hutchinson", 90, seed=s).estimate - exact) for s in range(8)]
    e2 = [abs(trace(A, "hutch++", 90, seed=s).estimate - exact) for s in range(8)]
    assert np.mean(e2) < np.mean(e1)
    # with a sketch as large as the space, Hutch++ is exact
    full = trace(A, "hutch++", num_matvecs=3 * ev.numel() + 3)
    assert full.estimate == pytest.approx(exact, rel=1e-10)


def test_trace_bad_input_and_float32():
    A = dense_with_spectrum(spectrum())
    with pytest.raises(ValueError, match="method"):
        trace(A, method="exact")
    with pytest.raises(ValueError, match="num_matvecs"):
        trace(A, method="hutch++", num_matvecs=3)
    t = trace(DenseOperator(A.float()), "hutchinson", 20)
    assert math.isfinite(t.estimate) and "hutchinson" in repr(t)
