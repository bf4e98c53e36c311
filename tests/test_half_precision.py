"""bfloat16 and float16 models: products in the half dtype, summed over batches in float32.

References are float64 products at the *same rounded* weights and inputs (the half model's
values converted exactly to float64), so what is compared is the arithmetic of the product.

The bound. A product is three passes (forward, gradient, second-order backward) through a
network of depth ``L``; each layer's output is rounded once to the half dtype (relative error
``u``, the unit roundoff; CPU matmuls accumulate in float32 inside), and those errors
propagate through the remaining layers with gains that the curvature's own size
``||H||_2`` bounds. A first-order bound is thus ``3 L u ||H||_2 ||v||``; we assert
``4 (L + 1) u ||H||_2 ||v||`` (a little slack for the loss layer and the float32 sum over
batches). Measured: 0.1-1.1 ``u`` (benchmarks/bench_half_precision.py), so the bound is
loose by an order of magnitude and holds under any CPU kernel.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import jupyter_curvature as jc
from jupyter_curvature.data.builtin import digits_dataset
from jupyter_curvature.spectral import reachable_tol

HALF = (torch.bfloat16, torch.float16)
DEPTH = 3  # Linear layers of the model below
BATCH = 8  # 16 batches: the float32 sum over them is exercised


def problem(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 24), nn.Tanh(), nn.Linear(24, 16), nn.Tanh(),
                          nn.Linear(16, 10)).to(dtype)  # fmt: skip
    x, y = digits_dataset("train", flatten=True, limit=128).tensors
    x = x.to(dtype)
    data = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(y), BATCH)]
    ref = nn.Sequential(nn.Linear(64, 24), nn.Tanh(), nn.Linear(24, 16), nn.Tanh(),
                        nn.Linear(16, 10)).double()  # fmt: skip
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    ref_data = [(xb.double(), yb) for xb, yb in data]
    return model, data, ref, ref_data


def unit_roundoff(dtype):
    return torch.finfo(dtype).eps / 2


def spectral_norm(A64):
    """``||A||_2`` of the float64 reference, by Lanczos (a few dozen products, not n)."""
    return float(jc.eigenpairs(A64, k=1, which="LM", tol=1e-8, seed=0).eigenvalues.abs()[0])


def probes(n, k=4):
    V = torch.randn(n, k, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return V / V.norm(dim=0)


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_products_are_within_the_rounding_bound(dtype, curvature):
    cls = jc.HessianOperator if curvature == "hessian" else jc.GGNOperator
    model, data, ref, ref_data = problem(dtype)
    A, A64 = cls(model, nn.CrossEntropyLoss(), data), cls(ref, nn.CrossEntropyLoss(), ref_data)
    assert A.dtype == dtype and A.accumulation_dtype == torch.float32
    norm = spectral_norm(A64)
    V = probes(A.shape[0])
    product = A @ V.to(dtype)
    assert product.dtype == torch.float32  # returned as accumulated
    err = float((product.double() - A64 @ V).norm(dim=0).max())
    bound = 4 * (DEPTH + 1) * unit_roundoff(dtype) * norm
    assert err <= bound, f"{dtype} {curvature}: error {err:.3e} > bound {bound:.3e}"


def test_batches_are_summed_in_float32():
    """The result is the float32 sum of the batches' half-precision products, exactly
    (weighted as in the mean), not their half-precision sum."""
    model, data, _, _ = problem(torch.bfloat16)
    loss = nn.CrossEntropyLoss()
    v = probes(sum(p.numel() for p in model.parameters()), 1).to(torch.bfloat16)
    total = torch.zeros(v.shape, dtype=torch.float32)
    for batch in data:
        part = jc.HessianOperator(model, loss, batch) @ v  # one batch: no sum to round
        total += part * len(batch[1])
    expected = total / sum(len(b[1]) for b in data)
    got = jc.HessianOperator(model, loss, data) @ v
    scale = float(total.abs().max()) / 128
    assert float((got - expected).abs().max()) <= 64 * torch.finfo(torch.float32).eps * scale


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_eigenpairs_at_the_reachable_tol_are_certified_against_float64(dtype):
    model, data, ref, ref_data = problem(dtype)
    H = jc.HessianOperator(model, nn.CrossEntropyLoss(), data)
    H64 = jc.HessianOperator(ref, nn.CrossEntropyLoss(), ref_data)
    tol = reachable_tol(dtype)
    result = jc.eigenpairs(H, k=2, tol=tol, seed=0)
    assert result.converged
    lam = torch.as_tensor(result.eigenvalues, dtype=torch.float64)
    vecs = torch.as_tensor(result.eigenvectors, dtype=torch.float64)
    norm = spectral_norm(H64)
    residual = float((H64 @ vecs - vecs * lam).norm(dim=0).max()) / norm
    # certified against the noisy products (tol), plus their error (bound above)
    assert residual <= tol + 4 * (DEPTH + 1) * unit_roundoff(dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_a_tol_below_the_reachable_one_warns_and_names_it(dtype):
    model, data, _, _ = problem(dtype)
    H = jc.HessianOperator(model, nn.CrossEntropyLoss(), data)
    floor = reachable_tol(dtype)
    assert floor == 4 * unit_roundoff(dtype)
    with pytest.warns(UserWarning, match=f"pass tol={floor:g}"):
        jc.eigenpairs(H, k=1, tol=floor / 10, seed=0, max_iters=3, warn=False)


def test_float64_has_no_floor_and_float32_has_eight_unit_roundoffs():
    assert reachable_tol(torch.float64) == 0.0
    assert reachable_tol(torch.float32) == 8 * unit_roundoff(torch.float32)


def float32_dense(seed=0, n=203):
    """The audit's float32 operator: eigenvalues 100, 50, 49.9 and a bulk in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    ev = torch.rand(n - 3, generator=gen, dtype=torch.float64)
    ev = torch.cat([torch.tensor([100.0, 50.0, 49.9], dtype=torch.float64), ev])
    return ((Q * ev) @ Q.T).float()


def test_float32_tol_below_the_reachable_one_warns_and_names_it():
    floor = reachable_tol(torch.float32)
    A = jc.operators.DenseOperator(float32_dense())
    with pytest.warns(UserWarning, match=rf"pass tol={floor:g}.*float64"):
        jc.eigenpairs(A, k=1, tol=3e-8, seed=0, max_iters=3, warn=False)


@pytest.mark.parametrize("verify", ["stored", "product", "estimate"])
@pytest.mark.parametrize("tol", [3e-8, "reachable"])
def test_float32_certified_pairs_hold_for_the_returned_vectors(tol, verify):
    # the float32 vectors returned, checked in float64 against the exact float32 matrix: a
    # pair reported converged must meet tol * scale as returned, and its reported residual
    # must bound the true one up to the products' own rounding error (2 u ||A||)
    A32 = float32_dense()
    tol = reachable_tol(torch.float32) if tol == "reachable" else tol
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unreachable tol and the ConvergenceWarning
        r = jc.eigenpairs(jc.operators.DenseOperator(A32), k=3, tol=tol, verify=verify)
    assert r.eigenvectors.dtype == torch.float32
    A, V = A32.double(), r.eigenvectors.double()
    exact = torch.linalg.eigvalsh(A).flip(0)[:3]
    true = (A @ V - V * r.eigenvalues).norm(dim=0)
    assert (true[r.pair_converged] <= tol * r.scale).all(), (true, r.residuals)
    u = unit_roundoff(torch.float32)
    assert (true <= r.residuals + 2 * u * r.scale).all(), (true, r.residuals)
    if tol >= reachable_tol(torch.float32) and verify != "estimate":
        assert r.converged
        assert ((r.eigenvalues - exact).abs() <= true).all()
    if tol < 4 * u:
        assert not r.converged  # 3e-8 is half a unit roundoff: no float32 vector meets it
