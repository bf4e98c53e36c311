"""Matrix-free trace estimation: Hutchinson and Hutch++, each with a standard error.

* Hutchinson (1990): ``tr(A) ~= (1/N) sum_i z_i^T A z_i`` with Rademacher ``z_i``; variance
  per probe ``2 (||A||_F^2 - sum_i A_ii^2)`` (Avron & Toledo, JACM 2011).
* Hutch++ (Meyer, Musco, Musco & Woodruff, SOSA 2021, Algorithm 1): with ``N`` products,
  ``N/3`` build a sketch ``Q = qr(A S)``, ``N/3`` give ``tr(Q^T A Q)`` exactly, and the rest run
  Hutchinson on the deflated remainder ``(I - QQ^T) A (I - QQ^T)``. It needs ``O(1/eps)``
  products for PSD ``A`` against ``O(1/eps^2)``, and pays off when a few outliers carry the
  trace, as in deep-network Hessians. The standard error is that of the remainder's
  Hutchinson part (the sketch part is exact given ``Q``).

A budget of at least ``n`` products (the operator's dimension) buys the exact trace instead:
``sum_i e_i^T A e_i`` over the ``n`` unit vectors, ``n`` products and no more, with standard
error 0 and ``method="exact"`` in the result. (A larger budget could not do better, and
drawing ``num_matvecs`` probes of length ``n`` would hold ``n x num_matvecs`` numbers.)

Probes are multiplied in blocks (``block_size`` columns at once), so a Hessian shares one
forward and one gradient graph per batch among them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ..core.progress import Cancelled, Progress
from ._checks import Operator, check_int, check_seed

METHODS = ("hutch++", "hutchinson")


@dataclass
class TraceEstimate:
    """A stochastic trace estimate.

    Attributes:
        estimate: the trace estimate.
        stderr: its standard error (sample standard deviation of the stochastic part over
            ``sqrt`` of its number of probes); ``nan`` with fewer than two probes.
        num_matvecs: operator products used.
        method: ``"hutch++"``, ``"hutchinson"``, or ``"exact"`` when the budget reached ``n``.
        exact_part: Hutch++'s ``tr(Q^T A Q)`` (0 for Hutchinson, the trace when exact).
        samples: the stochastic samples ``z^T A z`` (of the remainder for Hutch++, scaled so
            that ``estimate = exact_part + mean(samples)``).
        n: dimension of the operator.
        cancelled: the run was cancelled: the estimate uses the probes finished by then
            (Hutchinson's, or Hutch++'s remainder probes; its sketch must be complete).
    """

    estimate: float
    stderr: float
    num_matvecs: int
    method: str
    exact_part: float
    samples: list[float]
    n: int
    cancelled: bool = False

    def interval(self, z: float = 3.0) -> tuple[float, float]:
        """``estimate +- z stderr``."""
        return (self.estimate - z * self.stderr, self.estimate + z * self.stderr)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __float__(self) -> float:
        return float(self.estimate)

    def __repr__(self) -> str:
        return (
            f"TraceEstimate({self.method}: {self.estimate:.6g} +- {self.stderr:.3g} (1 s.e.), "
            f"matvecs={self.num_matvecs}, n={self.n})"
        )


def check_budget(
    method: str,
    methods: tuple[str, ...],
    sketched: str,
    num_matvecs: Any,
    block_size: Any,
    seed: Any,
) -> tuple[int, int, torch.Generator]:
    """The checks shared by the stochastic estimators: the method, the budget (4 products for
    the ``sketched`` method, 2 for plain Hutchinson), the block size; the seeded generator."""
    if method not in methods:
        raise ValueError(f"method must be one of {methods}, got {method!r}")
    low = 4 if method == sketched else 2
    num_matvecs = check_int(
        "num_matvecs", num_matvecs, low, hint=f"{method} needs at least {low} products"
    )
    block_size = check_int("block_size", block_size, 1)
    return num_matvecs, block_size, torch.Generator(device="cpu").manual_seed(check_seed(seed))


def _probes(n: int, k: int, gen: torch.Generator, distribution: str) -> torch.Tensor:
    if distribution == "rademacher":
        return (torch.randint(0, 2, (n, k), generator=gen) * 2 - 1).double()
    return torch.randn(n, k, generator=gen, dtype=torch.float64)


def _blocked(
    A: Operator, X: torch.Tensor, block_size: int, tracker: Progress | None = None,
    whole: bool = True, done: Callable[[], int] | None = None,
) -> torch.Tensor:  # fmt: skip
    """``A X`` a block at a time; cancelled: the finished columns (``whole``: raise instead).

    ``done()``: the products of the whole call so far (default ``A``'s), for the progress."""
    out = []
    for i in range(0, X.shape[1], block_size):
        count = A.num_matvecs if done is None else done()
        if tracker is not None and tracker.step(count, count):
            if whole or not out:
                raise Cancelled("trace")
            break
        out.append(A.matmat(X[:, i : i + block_size]))
    return torch.cat(out, 1)


def _exact_trace(
    A: Operator, block_size: int, basis_dtype: torch.dtype, tracker: Progress | None = None
) -> TraceEstimate:
    """``sum_i e_i^T A e_i``: the diagonal, ``block_size`` unit vectors at a time."""
    total = 0.0
    with A:
        for start in range(0, A.n, block_size):
            if tracker is not None and tracker.step(A.num_matvecs, A.num_matvecs):
                raise Cancelled("trace")
            stop = min(start + block_size, A.n)
            E = torch.zeros(A.n, stop - start, dtype=basis_dtype, device=A.device)
            E[torch.arange(start, stop), torch.arange(stop - start)] = 1
            total += float(A.matmat(E)[start:stop].diagonal().sum(dtype=torch.float64))
    return TraceEstimate(total, 0.0, A.num_matvecs, "exact", total, [], A.n)


def trace(
    op: Any,
    method: str = "hutch++",
    num_matvecs: int = 99,
    seed: int = 0,
    *,
    distribution: str = "rademacher",
    block_size: int = 33,
    basis_dtype: torch.dtype = torch.float64,
    keep_graphs: bool | None = None,
    progress: Any = None,
    cancel: Any = None,
) -> TraceEstimate:
    """Estimate ``tr(A)`` with Hutchinson or Hutch++.

    Args:
        op: a curvature operator or a symmetric square tensor.
        method: ``"hutch++"`` (default) or ``"hutchinson"``.
        num_matvecs: product budget (default 99 = 3 x 33); Hutch++ needs at least 4, Hutchinson 2.
            From ``n`` on, the trace is computed exactly with ``n`` products (see above).
        seed: seeds the probes.
        distribution: ``"rademacher"`` (lower variance, Avron & Toledo 2011) or ``"gaussian"``.
        block_size: probes multiplied together in one block.
        basis_dtype: dtype of the probes and the sketch (products run in the operator's).
        keep_graphs: for a ``HessianOperator``, keep each batch's gradient graph across the
            blocks (``None``: when they fit in half the free memory; see
            :func:`~.lanczos.lanczos`).
        progress: ``True`` (a ``tqdm.auto`` bar) or a callable receiving a
            :class:`~jupyter_curvature.core.progress.ProgressEvent` before each block
            (phase ``"trace"``; steps and total count products).
        cancel: a :class:`~jupyter_curvature.core.progress.CancelToken` checked before each
            block: the estimate then uses the finished probes (``cancelled=True``).

    Raises:
        ValueError: unknown method or distribution, too small a budget.
        FloatingPointError: a product contained NaN (the loss or the model produced NaN).
        Cancelled: cancelled before any usable probe (or during Hutch++'s sketch, or an
            exact trace).

    Example:
        >>> import torch
        >>> round(trace(torch.diag(torch.arange(4.0, dtype=torch.float64)), num_matvecs=12).estimate, 10)
        6.0
    """
    A = Operator(op, keep_graphs=keep_graphs)
    if distribution not in ("rademacher", "gaussian"):
        raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")
    num_matvecs, block_size, gen = check_budget(
        method, METHODS, "hutch++", num_matvecs, block_size, seed
    )
    n = A.n
    device = A.device
    tracker = Progress.of(progress, cancel, "trace", min(num_matvecs, n))
    watch = tracker if tracker.callback is not None or cancel is not None else None
    if num_matvecs >= n:
        result = _exact_trace(A, block_size, basis_dtype, watch)
        tracker.finish(result.num_matvecs, lambda: result, step=result.num_matvecs)
        return result
    views = [A]  # the products are counted by the views they went through

    def done() -> int:
        return sum(view.num_matvecs for view in views)

    with A:
        if method == "hutchinson":
            Z = _probes(n, num_matvecs, gen, distribution).to(basis_dtype).to(device)
            AZ = _blocked(A, Z, block_size, watch, whole=False)
            samples = (Z[:, : AZ.shape[1]] * AZ).sum(0).double().cpu().numpy()
            exact = 0.0
        else:
            s = num_matvecs // 3
            g = num_matvecs - 2 * s
            S = _probes(n, s, gen, distribution).to(basis_dtype).to(device)
            Q, _ = torch.linalg.qr(_blocked(A, S, block_size, watch))  # (n, min(n, s))
            exact = float((Q * _blocked(A, Q, block_size, watch)).sum())
            # Hutchinson on the remainder P A P, P = I - Q Q^T: g^T P A P g = (Pg)^T A (Pg)
            remainder = Operator(A.op.projected(Q))
            views.append(remainder)
            G = _probes(n, g, gen, distribution).to(basis_dtype).to(device)
            AG = _blocked(remainder, G, block_size, watch, whole=False, done=done)
            samples = (G[:, : AG.shape[1]] * AG).sum(0).double().cpu().numpy()
    est = exact + float(samples.mean())
    stderr = (
        float(samples.std(ddof=1) / math.sqrt(samples.size)) if samples.size > 1 else float("nan")
    )
    result = TraceEstimate(
        estimate=est,
        stderr=stderr,
        num_matvecs=done(),
        method=method,
        exact_part=exact,
        samples=[float(x) for x in np.asarray(samples)],
        n=n,
        cancelled=tracker.cancelled and done() < num_matvecs,
    )
    tracker.finish(done(), lambda: result, step=done())
    return result
