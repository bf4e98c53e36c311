"""Certified extreme eigenpairs warm-started from earlier vectors: tracking the top-k in training.

During training the curvature changes between two checks, and the eigenvectors of the last
check approximate the next ones, the better the less the weights moved.
:func:`warm_eigenpairs` starts the certified Lanczos of :func:`~.eigenpairs.eigenpairs` (thick
restarts, the same stopping rule and the same residual certificate) from them instead of from
a random vector:

    x_0 = sum_i q_i / ||sum_i q_i|| + EXPLORE * r / ||r||,

where ``q_i`` is an orthonormal basis of the earlier vectors (the last check's eigenvectors)
and ``r`` a fresh seeded Gaussian vector, the *explorer*. The Krylov space of ``x_0`` holds
approximations of every earlier direction after as many steps as there are directions, and
the explorer keeps a component along every eigenvector, so that a direction the earlier
vectors miss (a new outlier, stale or garbage vectors) is still found, as from a cold start.
Everything after the start vector is :func:`~.eigenpairs.eigenpairs`: the ``k`` wanted pairs
must all reach ``||A v - lambda v|| <= tol * scale`` measured from true (stored) products, no
verdict before ``2k + 1`` products, and the guard pair must converge too unless ARPACK's
``ncv = max(2k + 1, 20)`` products are made. A warm start changes how fast the run gets there,
never what it certifies.

Lanczos converges to an eigenvector ``u`` at a rate set by ``tan angle(x_0, u)`` times a
Chebyshev factor (Kaniel-Paige-Saad bounds; Saad, "Numerical Methods for Large Eigenvalue
Problems", 2nd ed., SIAM 2011, Sec. 6.6): from a random start ``tan angle ~ sqrt(n)``, from the
earlier eigenvectors about the tangent of their angle to the new ones. How much that saves
depends on how far the eigenvectors moved between checks (benchmarks/bench_training.py
measures it on the README's training run).
"""

from __future__ import annotations

from typing import Any

import torch

from ._checks import Operator, check_int, check_seed, resolve_device
from .eigenpairs import EigenpairsResult, _check_args, _eigenpairs

__all__ = ["warm_eigenpairs", "warm_start_vector"]

#: weight of the random explorer against the earlier vectors in the start vector (see the
#: module docstring). On tests/test_spectral_tracking.py's matrix (k = 3) 0.003-0.01 certify
#: from exact eigenvectors at the floor of 2k + 1 = 7 products (tol 1e-3; a cold start: 15),
#: 0.03 took 9 and 0.1 took 10; none of 0.003-0.1 certified a wrong set from the stale and
#: garbage starts of that test (3 orders x 6 seeds x 8 starts), the missing top eigenvector
#: included (Lanczos amplifies its small component like any other)
EXPLORE = 0.01


def warm_start_vector(
    earlier: torch.Tensor | None, n: int, seed: int, dtype: torch.dtype, device: Any
) -> torch.Tensor:
    """The ``(n, 1)`` start vector ``x_0`` of the module docstring (the explorer alone when
    there are no earlier vectors: then it is a cold start)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    r = torch.randn(n, 1, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    r = r / r.norm()
    if earlier is None or not earlier.shape[1]:
        return r
    V = earlier.detach().to(dtype=dtype, device=device)
    V = V[:, V.norm(dim=0) > 0]
    if not V.shape[1] or not bool(torch.isfinite(V).all()):
        return r
    x = torch.linalg.qr(V / V.norm(dim=0, keepdim=True)).Q.sum(1, keepdim=True)
    return x / x.norm() + EXPLORE * r


def warm_eigenpairs(
    op: Any,
    k: int = 3,
    start: torch.Tensor | None = None,
    which: str = "LA",
    tol: float = 1e-3,
    max_iters: int | None = None,
    seed: int = 0,
    *,
    max_basis: int | None = None,
    verify: str = "stored",
    basis_dtype: torch.dtype = torch.float64,
    basis_device: torch.device | str | None = None,
    warn: bool = True,
    keep_graphs: bool | None = None,
) -> EigenpairsResult:
    """The ``k`` extreme eigenpairs of a symmetric operator, warm-started from earlier vectors.

    :func:`~.eigenpairs.eigenpairs` from the start vector of the module docstring: the same
    certificate (every pair of a ``converged`` result has ``||A v - lambda v|| <= tol *
    scale``), stopping rule and result; only the start differs.

    Args:
        op: a curvature operator or a symmetric square tensor (``n x n``).
        k: number of eigenpairs, ``1 <= k < n``.
        start: ``(n, p)`` earlier vectors, typically the last check's
            ``EigenpairsResult.eigenvectors`` of the same parameters (any dtype, need not be
            orthonormal; NaN, zero or useless ones only cost products). ``None`` or no
            columns: a cold start from the seeded explorer.
        which, tol, max_iters, max_basis, verify, basis_dtype, basis_device, warn,
            keep_graphs: as for :func:`~.eigenpairs.eigenpairs`.
        seed: seeds the explorer.

    Returns:
        :class:`~.eigenpairs.EigenpairsResult`.

    Raises:
        ValueError: as :func:`~.eigenpairs.eigenpairs`, or ``start`` not ``(n, p)``.
        TypeError: ``start`` not a tensor.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.arange(10, dtype=torch.float64))
        >>> last = torch.eye(10, dtype=torch.float64)[:, [9, 8, 7]]
        >>> [round(v, 8) for v in warm_eigenpairs(A, k=2, start=last, tol=1e-8).eigenvalues.tolist()]
        [9.0, 8.0]
    """
    A = Operator(op, keep_graphs=keep_graphs)
    k, which, tol = _check_args(A, k, which, tol)
    seed = check_seed(seed)
    if verify not in ("stored", "product", "estimate"):
        raise ValueError(f"verify must be 'stored', 'product' or 'estimate', got {verify!r}")
    n = A.n
    max_iters = check_int("max_iters", max(300, 20 * k) if max_iters is None else max_iters, 1)
    max_basis = check_int(
        "max_basis",
        min(n, max(100, 4 * k)) if max_basis is None else max_basis,
        min(n, k + 2),
        hint=f"a restart keeps k + 1 = {k + 1} Ritz vectors and adds one; raise max_basis or lower k",
    )
    if start is not None:
        if not isinstance(start, torch.Tensor):
            raise TypeError(f"start must be a tensor of shape (n, p), got {type(start).__name__}")
        if start.ndim == 1:
            start = start[:, None]
        if start.ndim != 2 or start.shape[0] != n:
            raise ValueError(
                f"start must have shape (n, p) = ({n}, p), got {tuple(start.shape)}: pass the "
                "eigenvectors of an earlier check of the same parameters"
            )
    device = resolve_device(basis_device, A.device)
    x0 = warm_start_vector(start, n, seed, basis_dtype, device)
    with A:
        return _eigenpairs(A, k, which, tol, max_iters, seed, max_basis, verify, basis_dtype,
                           basis_device, warn, start=x0)  # fmt: skip
