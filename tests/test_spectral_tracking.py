"""Warm-started certified eigenpairs (spectral/tracking.py) against dense float64 eigenvalues."""

from __future__ import annotations

import pytest
import reference
import torch
from test_spectral_eigenpairs import check_pairs, expected, make_matrix

from jupyter_curvature.data.builtin import digits_dataset
from jupyter_curvature.models.small import MLP
from jupyter_curvature.operators import HessianOperator
from jupyter_curvature.spectral import eigenpairs, warm_eigenpairs
from jupyter_curvature.spectral.tracking import warm_start_vector


def eigvecs(A: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """Eigenvectors of ``A`` by descending eigenvalue position."""
    _, V = torch.linalg.eigh(A)
    return V.flip(1)[:, idx]


@pytest.mark.parametrize("tol", [1e-3, 1e-8])
def test_warm_start_from_the_last_check_matches_dense_float64(tol):
    """A float64 MLP's Hessian at two weights one SGD step apart: the second check, started from
    the first one's vectors, gives the dense top-k to the certified tolerance."""
    torch.manual_seed(0)
    x, y = digits_dataset().tensors
    x, y = x[:64].double(), y[:64]
    model = MLP(hidden=(12,)).double()
    loss_fn = torch.nn.functional.cross_entropy
    first = eigenpairs(HessianOperator(model, loss_fn, (x, y)), k=4, tol=tol)
    loss_fn(model(x), y).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    H = reference.dense_hessian(model, loss_fn, x, y)
    op = HessianOperator(model, loss_fn, (x, y))
    warm = warm_eigenpairs(op, k=3, start=first.eigenvectors, tol=tol)
    assert warm.converged
    dense = expected(H, 3, "LA")
    # |lambda - theta| <= ||H v - theta v|| (Parlett, Thm 4.5.1), and the residual is certified
    assert ((warm.eigenvalues - dense).abs() <= warm.residuals + 1e-12).all()
    assert float(warm.residuals.max()) <= tol * warm.scale
    true = (H @ warm.eigenvectors - warm.eigenvectors * warm.eigenvalues).norm(dim=0)
    reference.assert_close(true, warm.residuals, rtol=1e-6, atol=1e-12, what="residuals")


@pytest.mark.parametrize("tol", [1e-3, 1e-10])
def test_exact_eigenvectors_certify_in_few_products(tol):
    A = make_matrix()
    k = 3
    cold = eigenpairs(A, k=k, tol=tol)
    warm = warm_eigenpairs(A, k=k, start=eigvecs(A, list(range(k + 1))), tol=tol)
    check_pairs(A, warm, "LA", tol)
    # a deterministic count: at tol 1e-3 the floor of the stopping rule, 2k + 1 products
    assert warm.num_matvecs == 2 * k + 1 if tol == 1e-3 else warm.num_matvecs < cold.num_matvecs
    assert cold.num_matvecs >= 2 * k + 1 + 4 * (tol == 1e-3)


def garbage_starts(A: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    n = A.shape[0]
    gen = torch.Generator().manual_seed(5)
    other = make_matrix() + torch.diag(torch.linspace(-30, 30, n, dtype=torch.float64))
    nan = torch.full((n, k + 1), float("nan"), dtype=torch.float64)
    return {
        "random": torch.randn(n, k + 1, generator=gen, dtype=torch.float64),
        "missing the top (eigenvectors 2..k+2)": eigvecs(A, list(range(1, k + 2))),
        "the bulk's eigenvectors": eigvecs(A, list(range(40, 40 + k + 1))),
        "another matrix's": eigvecs(other, list(range(k + 1))),
        "zeros": torch.zeros(n, k + 1, dtype=torch.float64),
        "NaN": nan,
        "one repeated vector": eigvecs(A, [1]).repeat(1, k + 1),
        "float32": eigvecs(A, list(range(1, k + 2))).float(),
    }


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
@pytest.mark.parametrize("seed", range(4))
def test_stale_or_garbage_vectors_still_give_the_right_answer(which, seed):
    A = make_matrix()
    k = 3
    for name, start in garbage_starts(A, k).items():
        warm = warm_eigenpairs(A, k=k, start=start, which=which, tol=1e-6, seed=seed)
        assert warm.converged, name
        check_pairs(A, warm, which, 1e-6)


def test_bad_start_is_named():
    A = make_matrix()
    with pytest.raises(ValueError, match=r"start must have shape \(n, p\)"):
        warm_eigenpairs(A, k=2, start=torch.zeros(5, 2))
    with pytest.raises(TypeError, match="start must be a tensor"):
        warm_eigenpairs(A, k=2, start=[[0.0]])


def test_no_earlier_vectors_is_a_cold_start_from_the_explorer():
    A = make_matrix()
    x0 = warm_start_vector(None, A.shape[0], 3, torch.float64, "cpu")
    assert torch.allclose(x0.norm(), torch.tensor(1.0, dtype=torch.float64))
    warm = warm_eigenpairs(A, k=3, start=None, seed=3, tol=1e-8)
    check_pairs(A, warm, "LA", 1e-8)
