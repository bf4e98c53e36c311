"""Lanczos with its basis split in row slices across 2 gloo processes (float64, CPU).

Each rank holds rows ``[lo, hi)`` of every Lanczos vector (``shard_basis=True``); the
products sum the ranks' data shards. The references are the dense float64 Hessian of the
whole data by ``torch.func`` (computed in the parent process) and the unsharded run of the
same seed on the same ranks.
"""

from __future__ import annotations

import pytest
import torch
from test_distributed import BATCH, START, WORLD, make_problem
from test_fsdp import _error, _replica, _shard
from torch.func import functional_call, jacrev

import jupyter_curvature as jc
import jupyter_curvature.distributed as jd
from jupyter_curvature.spectral.lanczos import start_vectors

HIDDEN = 10  # n = 6 * 10 + 10 + 10 * 3 + 3 = 103 parameters: 52 + 51 rows
N = 103
NUM_ITERS, PROBES, SEED = 20, 2, 3
K, TOL = 3, 1e-12
UNEVEN = [70, 33]  # a layout given by hand


def _job():
    model, loss_fn, dataset = make_problem(HIDDEN)
    H = jc.HessianOperator(model, loss_fn, jd.shard_loader(dataset, BATCH))
    out = {}
    density = dict(num_iters=NUM_ITERS, num_probes=PROBES, seed=SEED)
    sharded = jd.spectral_density(H, shard_basis=True, ritz_vectors=True, **density)
    plain = jd.spectral_density(H, ritz_vectors=True, **density)
    out["density"] = (sharded.ritz_values, sharded.weights)
    out["density_plain"] = (plain.ritz_values, plain.weights)
    out["ritz_rows"] = tuple(sharded.ritz_vectors.shape)
    out["ritz_vectors"] = jd.gather_rows(sharded.ritz_vectors.transpose(0, 1)).transpose(0, 1)
    out["ritz_vectors_plain"] = plain.ritz_vectors
    none = jd.spectral_density(H, shard_basis=True, reorthogonalize="none", **density)
    out["density_none"] = (none.ritz_values, none.weights)
    single = jd.spectral_density(H, shard_basis=True, basis_dtype=torch.float32, **density)
    out["density_float32"] = (single.ritz_values, single.weights)

    lanczos = jc.spectral.lanczos(jd.ShardedBasis(H), 12, PROBES, SEED, keep_basis=True)
    out["basis_shape"] = tuple(lanczos.basis.shape)
    uneven = jc.spectral.lanczos(jd.ShardedBasis(H, UNEVEN), 12, PROBES, SEED, keep_basis=True)
    out["uneven"] = (tuple(uneven.basis.shape), uneven.ritz_values)
    out["lanczos_plain"] = jc.spectral.lanczos(H, 12, PROBES, SEED).ritz_values

    pairs = dict(tol=TOL, seed=SEED, max_basis=24)  # 24 < 51 rows: thick restarts run
    for which in ("LA", "SA"):
        r = jd.eigenpairs(H, K, which=which, shard_basis=True, **pairs)
        p = jd.eigenpairs(H, K, which=which, **pairs)
        out[which] = (r.eigenvalues, r.residuals, r.converged, r.restarts)
        out[which + "_plain"] = (p.eigenvalues, p.residuals)
        out[which + "_rows"] = tuple(r.eigenvectors.shape)
        out[which + "_vectors"] = jd.gather_rows(r.eigenvectors)
    # residuals by a final product of the sharded vectors; a warm start from full vectors
    checked = jd.eigenpairs(H, K, shard_basis=True, verify="product", **pairs)
    out["product"] = (checked.eigenvalues, checked.residuals)
    warm = jd.eigenpairs(H, K, shard_basis=True, start=out["LA_vectors"], **pairs)
    out["warm"] = (warm.eigenvalues, warm.num_matvecs)

    out["sizes_error"] = _error(
        lambda: jd.spectral_density(H, shard_basis=True, basis_sizes=[50, 50])
    )
    out["rows_error"] = _error(lambda: jd.spectral_density(H, shard_basis=True, num_iters=60))
    # an FSDP2-sharded model (its own small problem, n = 53: 27 + 26 rows)
    fsdp_model, _, _ = make_problem()
    G = jd.ShardedOperator(_shard(fsdp_model), loss_fn, jd.shard_loader(dataset, BATCH), _replica())
    fsdp = dict(num_iters=12, num_probes=PROBES, seed=SEED)
    out["fsdp"] = jd.spectral_density(G, shard_basis=True, **fsdp).ritz_values
    out["fsdp_plain"] = jd.spectral_density(G, **fsdp).ritz_values

    out["trace_error"] = _error(lambda: jc.trace(jd.ShardedBasis(H), num_matvecs=6))
    out["space"] = (jd.ShardedSpace(N).lo, jd.ShardedSpace(N).hi)
    return out


@pytest.fixture(scope="module")
def results():
    return jd.launch(_job, WORLD, timeout=30, join_timeout=240, start_method=START)


@pytest.fixture(scope="module")
def dense():
    """The Hessian of the mean loss over all the data, by torch.func (float64)."""
    model, loss_fn, dataset = make_problem(HIDDEN)
    x, y = dataset.tensors
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat):
        parts = flat.split([s.numel() for s in shapes])
        params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes)}
        return loss_fn(functional_call(model, params, (x,)), y)

    H = jacrev(jacrev(loss))(theta)  # no forward AD (its decompositions warn at load)
    assert H.shape == (N, N)
    return (H + H.T) / 2


def _close(actual, expected, tol, what):
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    err = float((actual - expected).abs().max())
    scale = max(float(expected.abs().max()), 1e-300)
    assert err <= tol * scale, f"{what}: max |difference| {err:.3e} (scale {scale:.3e})"


@pytest.mark.distributed
def test_each_rank_stores_its_rows_of_the_basis(results):
    rows = [(0, 52), (52, 103)]
    for rank, r in enumerate(results):
        lo, hi = rows[rank]
        assert r["space"] == (lo, hi)
        assert r["basis_shape"] == (PROBES, hi - lo, 12)
        assert r["ritz_rows"] == (PROBES, hi - lo, NUM_ITERS)
        assert r["uneven"][0] == (PROBES, UNEVEN[rank], 12)
        for which in ("LA", "SA"):
            assert r[which + "_rows"] == (hi - lo, K)


@pytest.mark.distributed
def test_density_equals_the_unsharded_run_and_the_dense_moments(results, dense):
    # the same global start vectors whatever the layout: the same quadrature to rounding
    for r in results:
        for got, ref in zip(r["density"], r["density_plain"]):
            _close(got, ref, 1e-9, "density")  # observed 6e-15
        # without reorthogonalisation rounding grows once a Ritz value converges (observed
        # 2e-12 against the reorthogonalised run)
        for got, ref in zip(r["density_none"], r["density_plain"]):
            _close(got, ref, 1e-7, "density without reorthogonalisation")
        _close(r["ritz_vectors"], r["ritz_vectors_plain"], 1e-8, "gathered Ritz vectors")
        _close(r["uneven"][1], r["lanczos_plain"], 1e-9, "uneven layout")
        _close(r["fsdp"], r["fsdp_plain"], 1e-9, "FSDP model")
        # a float32 basis (float64 accumulation, all-reduced in float64): float32 rounding
        _close(r["density_float32"][0], r["density_plain"][0], 1e-4, "float32 basis")
    # Gauss quadrature: sum_k tau_k theta_k^j = q0^T H^j q0 for j < 2m (dense reference)
    theta, tau = results[0]["density"]
    q0 = start_vectors(N, PROBES, SEED)
    q0 = q0 / q0.norm(dim=0)
    for j in range(1, 8):
        quadrature = (tau * theta**j).sum(1)
        exact = (q0 * (torch.linalg.matrix_power(dense, j) @ q0)).sum(0)
        _close(quadrature, exact, 1e-10, f"moment {j}")


@pytest.mark.distributed
def test_eigenpairs_equal_the_dense_hessian(results, dense):
    exact = torch.linalg.eigvalsh(dense)
    scale = float(exact.abs().max())
    wanted = {"LA": exact.flip(0)[:K], "SA": exact[:K]}
    for which, ref in wanted.items():
        for r in results:
            values, residuals, converged, _ = r[which]
            assert converged
            _close(values, ref, 1e-10, which)
            _close(values, r[which + "_plain"][0], 1e-10, which + " unsharded")
            assert float(residuals.max()) <= TOL * scale
        V = results[0][which + "_vectors"]  # gathered: eigenvectors of the full Hessian
        assert torch.equal(V, results[1][which + "_vectors"])
        res = (dense @ V - V * results[0][which][0]).norm(dim=0)
        assert float(res.max()) <= 1e-10 * scale
    assert any(r["LA"][3] or r["SA"][3] for r in results)  # thick restarts were exercised
    for r in results:
        _close(r["product"][0], wanted["LA"], 1e-10, "verify='product'")
        assert float(r["product"][1].max()) <= TOL * scale
        _close(r["warm"][0], wanted["LA"], 1e-10, "warm start")


@pytest.mark.distributed
def test_bad_layouts_are_named(results):
    for r in results:
        assert "basis_sizes=[50, 50]" in r["sizes_error"] and "add up to 103" in r["sizes_error"]
        assert "lower num_iters" in r["rows_error"]
        assert "pass the operator itself" in r["trace_error"]


def test_sharding_without_a_process_group_is_named():
    model, loss_fn, dataset = make_problem(HIDDEN)
    H = jc.HessianOperator(model, loss_fn, dataset.tensors)
    with pytest.raises(ValueError, match="needs an initialised process group"):
        jd.ShardedBasis(H)
    with pytest.raises(ValueError, match="needs an initialised process group"):
        jd.spectral_density(H, shard_basis=True)
    with pytest.raises(ValueError, match="pass both"):
        jd.spectral_density(H, basis_sizes=[50, 53])
    with pytest.raises(TypeError, match="shard_basis must be True or False"):
        jd.eigenpairs(H, shard_basis="yes")


def test_memory_model_divides_the_basis_by_the_ranks():
    from jupyter_curvature.spectral.memory import density_bytes, eigenpairs_bytes

    n, m, p, W, f64, f32 = 10**6 + 1, 80, 4, 4, torch.float64, torch.float32
    rows = 250_001  # ceil(n / W)
    # basis and working blocks on this rank's rows, plus the gathered input and output
    assert density_bytes(n, m, p, f64, world_size=W) == 8 * rows * p * (m + 8) + 2 * 8 * n * p
    assert density_bytes(n, m, p, f64, "none", world_size=W) == 8 * rows * p * 10 + 16 * n * p
    assert density_bytes(n, m, p, f32, op_dtype=f32, world_size=W) == (
        4 * rows * p * (m + 8) + 2 * 4 * n * p
    )
    assert density_bytes(n, m, p, f64, world_size=1) == 8 * n * p * (m + 8)
    # eigenpairs: 3 bases of max_basis (verify="stored"), 16 working vectors, 2 k candidates
    assert eigenpairs_bytes(n, 5, 100, "stored", f64, W) == 8 * rows * (200 + 16 + 10) + 16 * n
    assert eigenpairs_bytes(n, 5, 100, "stored", f64, 1) == 8 * n * (200 + 16 + 10)
