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

from .eigenpairs import EigenpairsResult, eigenpairs
from .warm_start import EXPLORE, warm_start_vector

__all__ = ["EXPLORE", "warm_eigenpairs", "warm_start_vector"]


def warm_eigenpairs(
    op: Any,
    k: int = 3,
    start: torch.Tensor | None = None,
    which: str = "LA",
    tol: float = 1e-3,
    max_iters: int | None = None,
    seed: int = 0,
    **kwargs: Any,
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
            orthonormal; NaN, zero or useless ones only cost products). ``None``: a cold
            start (:func:`~.eigenpairs.eigenpairs`' seeded Gaussian vector).
        which, tol, max_iters: as for :func:`~.eigenpairs.eigenpairs`.
        seed: seeds the explorer.
        **kwargs: the keyword-only options of :func:`~.eigenpairs.eigenpairs`
            (``max_basis``, ``verify``, ``basis_dtype``, ``basis_device``, ``warn``,
            ``keep_graphs``).

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
    return eigenpairs(op, k, which, tol, max_iters, seed, start=start, **kwargs)
