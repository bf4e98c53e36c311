"""Matrix-free diagonal estimation: Hutchinson and Diag++, each entry with a standard error.

* Hutchinson (Bekas, Kokiopoulou & Saad, "An estimator for the diagonal of a matrix",
  Appl. Numer. Math. 57, 2007): ``diag(A) ~= (1/N) sum_i z_i * (A z_i)`` (entrywise) with
  Rademacher ``z_i``. Entry ``k`` of a sample is ``A_kk + sum_{l != k} A_kl z_k z_l``, so the
  estimator is unbiased, its per-sample variance is ``sum_{l != k} A_kl^2``, and it is exact
  on a diagonal matrix (``z_k^2 = 1``).
* Diag++ (Baston & Nakatsukasa, "Stochastic diagonal estimation: probabilistic bounds and an
  improved algorithm", arXiv:2201.10684, 2022; the diagonal analogue of Hutch++, Meyer et
  al. SOSA 2021): with ``N`` products, ``N/3`` sketch the range, ``Q = qr(A S)``; ``N/3``
  give ``diag(Q Q^T A)`` exactly (row sums of ``Q * (A Q)``); the rest run Hutchinson on the
  remainder ``(I - Q Q^T) A``. The variance is that of the remainder, small when a few
  directions carry the off-diagonal mass (as in deep-network Hessians); the estimate is
  exact when ``rank(A) <= N/3``. (XDiag, Epperly, Tropp & Webber, SIMAX 2024, refines this
  with exchangeable probes.)

The standard error of entry ``k`` is the sample standard deviation of the stochastic part
over the square root of its number of probes (``nan`` with one probe). A budget of at least
``n`` products gives the exact diagonal (``n`` unit vectors, standard error 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.records import jsonable, write_json
from ._checks import Operator
from .trace import _blocked, _probes, check_budget

DIAGONAL_METHODS = ("hutchinson", "diag++")


@dataclass
class DiagonalEstimate:
    """An estimate of ``diag(A)`` with a standard error per entry.

    Attributes:
        estimate: ``(n,)`` float64.
        stderr: ``(n,)`` float64 (zeros when exact; ``nan`` with one stochastic probe).
        method: ``"hutchinson"``, ``"diag++"`` or ``"exact"``.
        num_matvecs: operator products used.
        num_samples: stochastic probes behind ``stderr``.
    """

    estimate: torch.Tensor
    stderr: torch.Tensor
    method: str
    num_matvecs: int
    num_samples: int

    @property
    def n(self) -> int:
        return int(self.estimate.numel())

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "estimate": self.estimate.tolist(),
                "stderr": self.stderr.tolist(),
                "method": self.method,
                "num_matvecs": self.num_matvecs,
                "num_samples": self.num_samples,
            }
        )

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    def __repr__(self) -> str:
        return (
            f"DiagonalEstimate({self.method}: n={self.n}, sum={float(self.estimate.sum()):.6g}, "
            f"median s.e.={float(self.stderr.median()):.3g}, matvecs={self.num_matvecs})"
        )


def diagonal(
    op: Any,
    method: str = "diag++",
    num_matvecs: int = 99,
    seed: int = 0,
    *,
    block_size: int = 33,
    keep_graphs: bool | None = None,
) -> DiagonalEstimate:
    """Estimate ``diag(A)`` (the Hessian diagonal, for a ``HessianOperator``).

    Args:
        op: a curvature operator or a symmetric square tensor.
        method: ``"diag++"`` (default) or ``"hutchinson"`` (see the module docstring).
        num_matvecs: product budget (Diag++ needs at least 4, Hutchinson 2); from ``n`` on,
            the exact diagonal with ``n`` products.
        seed: seeds the Rademacher probes.
        block_size: probes multiplied together (a Hessian shares one forward and gradient
            graph per batch among them).
        keep_graphs: as :func:`~.trace.trace`.

    Raises:
        ValueError: unknown method, too small a budget.
    """
    A = Operator(op, keep_graphs=keep_graphs)
    num_matvecs, block_size, gen = check_budget(
        method, DIAGONAL_METHODS, "diag++", num_matvecs, block_size, seed
    )
    n, device = A.n, A.device
    with A:
        if num_matvecs >= n:
            eye = torch.eye(n, dtype=torch.float64, device=device)
            exact = (eye * _blocked(A, eye, block_size)).sum(0).cpu()
            return DiagonalEstimate(
                exact, torch.zeros(n, dtype=torch.float64), "exact", A.num_matvecs, 0
            )
        exact = torch.zeros(n, dtype=torch.float64, device=device)
        Q = None
        g = num_matvecs
        if method == "diag++":
            s = num_matvecs // 3
            g = num_matvecs - 2 * s
            S = _probes(n, s, gen, "rademacher").to(device)
            Q, _ = torch.linalg.qr(_blocked(A, S, block_size))
            exact = (Q * _blocked(A, Q, block_size)).sum(1)
        Z = _probes(n, g, gen, "rademacher").to(device)
        AZ = _blocked(A, Z, block_size)
        if Q is not None:
            AZ = AZ - Q @ (Q.T @ AZ)
        samples = Z * AZ  # (n, g)
    estimate = (exact + samples.mean(1)).cpu()
    if g > 1:
        stderr = (samples.std(1, correction=1) / math.sqrt(g)).cpu()
    else:
        stderr = torch.full((n,), float("nan"), dtype=torch.float64)
    return DiagonalEstimate(estimate, stderr, method, A.num_matvecs, g)
