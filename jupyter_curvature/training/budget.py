"""The time budget of live curvature checks: whether a due check runs, and how large it is.

A live check (:class:`~jupyter_curvature.training.CurvatureCallback`) is the certified top-k
(warm-started, :func:`~jupyter_curvature.spectral.warm_eigenpairs`) and an SLQ density of
``num_iters`` Lanczos steps per probe. Its cost is products of the curvature operator, so
:class:`CheckBudget` plans it from two measured quantities: the seconds of one product (the
last check's seconds over its products; before the first check, 2.5 gradients on the fixed
batch, a Hessian-vector product costing about 2-2.5 gradients) and the products the top-k
took last time (before the first check, ARPACK's ``ncv = max(2k + 1, 20)``, the most the
stopping rule of :func:`~jupyter_curvature.spectral.eigenpairs` waits for a guard pair).

With ``allowed = max_overhead * training seconds - seconds spent on checks so far`` (the
share of the training time the checks may still take), a due check runs in full when

    (eigen products + num_iters * num_probes) * seconds per product <= allowed,

else with the largest number of SLQ steps ``m >= MIN_ITERS`` that fits (a coarser density;
the top-k is always certified in full), else it is skipped. The decision depends only on
the numbers it is given, so it is the same on every run that measured the same costs (and
tests feed it costs from a fake clock).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MIN_ITERS", "CheckBudget", "CheckPlan"]

#: the fewest SLQ steps per probe a budgeted check shrinks to (a coarser density below is
#: not worth showing: the check is skipped instead)
MIN_ITERS = 8
#: a Hessian-vector product in gradients (Pearlmutter's trick: a forward and two backwards)
PRODUCT_IN_GRADIENTS = 2.5


@dataclass(frozen=True)
class CheckPlan:
    """One decision: ``num_iters`` SLQ steps per probe (``None``: skip), the expected seconds
    and the seconds the budget allowed."""

    num_iters: int | None
    expected_seconds: float
    allowed_seconds: float

    @property
    def skip(self) -> bool:
        return self.num_iters is None


@dataclass
class CheckBudget:
    """Plans live checks within ``max_overhead`` of the training time (module docstring).

    Args:
        max_overhead: the share of the training time checks may take (``> 0``).
        num_iters, num_probes: the full check's SLQ steps per probe and probes.
        top_k: certified eigenpairs per check (0: none).

    Attributes:
        product_seconds: measured seconds per product (``None`` until measured).
        eigen_products: products of the last top-k computation (``None`` before the first).
    """

    max_overhead: float
    num_iters: int
    num_probes: int
    top_k: int
    product_seconds: float | None = None
    eigen_products: int | None = None

    def calibrate(self, gradient_seconds: float) -> None:
        """Before any check: a product costs ``PRODUCT_IN_GRADIENTS`` gradients."""
        if self.product_seconds is None:
            self.product_seconds = PRODUCT_IN_GRADIENTS * gradient_seconds

    def measured(self, seconds: float, products: int, eigen_products: int) -> None:
        """Record a finished check: its seconds, all its products and the top-k's."""
        if products > 0:
            self.product_seconds = seconds / products
        self.eigen_products = eigen_products

    def expected_eigen_products(self) -> int:
        if not self.top_k:
            return 0
        if self.eigen_products is not None:
            return self.eigen_products
        return max(2 * self.top_k + 1, 20)

    def expected_seconds(self, num_iters: int) -> float:
        products = self.expected_eigen_products() + num_iters * self.num_probes
        return products * (self.product_seconds or 0.0)

    def plan(self, train_seconds: float, spent: float) -> CheckPlan:
        """The plan for a due check after ``train_seconds`` of training and ``spent`` seconds
        of checks."""
        allowed = self.max_overhead * train_seconds - spent
        full = self.expected_seconds(self.num_iters)
        if full <= allowed:
            return CheckPlan(self.num_iters, full, allowed)
        per_step = self.num_probes * (self.product_seconds or 0.0)
        room = allowed - self.expected_seconds(0)
        # (a relative 1e-9 of slack: 0.08 / 0.01 is 7.999... in binary floating point)
        fits = int(room / per_step * (1 + 1e-9)) if per_step > 0 and room > 0 else 0
        fits = min(fits, self.num_iters)
        if fits >= min(MIN_ITERS, self.num_iters):
            return CheckPlan(fits, self.expected_seconds(fits), allowed)
        return CheckPlan(None, self.expected_seconds(min(MIN_ITERS, self.num_iters)), allowed)
