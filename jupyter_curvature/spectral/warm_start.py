"""The start vector of a warm-started Lanczos run (:func:`~.tracking.warm_eigenpairs`).

    x_0 = sum_i q_i / ||sum_i q_i|| + EXPLORE * r / ||r||,

``q_i`` an orthonormal basis of the earlier vectors and ``r`` a seeded Gaussian explorer (see
:mod:`~.tracking` for the method). Its own module so that :mod:`~.eigenpairs` can use it
without importing :mod:`~.tracking`, which imports :mod:`~.eigenpairs`.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["EXPLORE", "warm_start_vector"]

#: weight of the random explorer against the earlier vectors in the start vector (see the
#: module docstring). On tests/test_spectral_tracking.py's matrix (k = 3) 0.003-0.01 certify
#: from exact eigenvectors at the floor of 2k + 1 = 7 products (tol 1e-3; a cold start: 15),
#: 0.03 took 9 and 0.1 took 10; none of 0.003-0.1 certified a wrong set from the stale and
#: garbage starts of that test (3 orders x 6 seeds x 8 starts), the missing top eigenvector
#: included (Lanczos amplifies its small component like any other)
EXPLORE = 0.01


def warm_start_vector(
    earlier: Any, n: int, seed: int, dtype: torch.dtype, device: Any
) -> torch.Tensor:
    """The ``(n, 1)`` start vector ``x_0`` of the module docstring (the explorer alone when
    there are no usable earlier vectors: then it is a cold start).

    Raises:
        TypeError: ``earlier`` is not a tensor.
        ValueError: ``earlier`` is not ``(n, p)``.
    """
    if earlier is not None and not isinstance(earlier, torch.Tensor):
        raise TypeError(f"start must be a tensor of shape (n, p), got {type(earlier).__name__}")
    if earlier is not None and earlier.ndim == 1:
        earlier = earlier[:, None]
    if earlier is not None and (earlier.ndim != 2 or earlier.shape[0] != n):
        raise ValueError(
            f"start must have shape (n, p) = ({n}, p), got {tuple(earlier.shape)}: pass the "
            "eigenvectors of an earlier check of the same parameters"
        )
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    r = torch.randn(n, 1, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    r = r / r.norm()
    if earlier is None:
        return r
    V = earlier.detach().to(dtype=dtype, device=device)
    V = V[:, V.norm(dim=0) > 0]
    if not V.shape[1] or not bool(torch.isfinite(V).all()):
        return r
    x = torch.linalg.qr(V / V.norm(dim=0, keepdim=True)).Q.sum(1, keepdim=True)
    return x / x.norm() + EXPLORE * r
