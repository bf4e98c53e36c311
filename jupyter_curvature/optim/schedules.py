"""Learning-rate schedules, including the original package's ``linear`` schedule.

The schedules are picklable callable objects for :class:`torch.optim.lr_scheduler.LambdaLR`,
so their settings travel in the scheduler's ``state_dict`` (LambdaLR saves callable
objects, not plain functions).
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


class LinearSchedule:
    """The original's ``linear`` schedule as a multiplier of the initial learning rate.

    With ``t = index / total``: 1 until ``t = 0.5``, then a straight line down to
    ``lr_ratio`` at ``t = 0.9``, then ``lr_ratio``:

    .. math::

        f(t) = 1 \\ (t \\le 0.5),\\quad 1 - (1 - r)\\frac{t - 0.5}{0.4} \\ (0.5 < t \\le 0.9),
        \\quad r \\ (t > 0.9)

    ``index`` counts epochs (or steps) from 0, as the original's ``schedule(epoch)`` did;
    ``lr_ratio`` is 0.01 there (or ``swa_lr / lr_init`` with SWA).

    >>> s = LinearSchedule(total=100)
    >>> [round(s(i), 4) for i in (0, 50, 70, 90, 99)]
    [1.0, 1.0, 0.505, 0.01, 0.01]
    """

    def __init__(
        self, total: int, lr_ratio: float = 0.01, start: float = 0.5, end: float = 0.9
    ) -> None:
        if not isinstance(total, int) or total < 1:
            raise ValueError(f"total must be a positive number of epochs or steps, got {total!r}")
        if not 0 < lr_ratio:
            raise ValueError(f"lr_ratio must be positive, got {lr_ratio}")
        if not 0 <= start < end <= 1:
            raise ValueError(f"need 0 <= start < end <= 1, got start={start}, end={end}")
        self.total = total
        self.lr_ratio = float(lr_ratio)
        self.start = float(start)
        self.end = float(end)

    def __call__(self, index: int) -> float:
        t = index / self.total
        if t <= self.start:
            return 1.0
        if t <= self.end:
            return 1.0 - (1.0 - self.lr_ratio) * (t - self.start) / (self.end - self.start)
        return self.lr_ratio

    def __repr__(self) -> str:
        return (
            f"LinearSchedule(total={self.total}, lr_ratio={self.lr_ratio}, "
            f"start={self.start}, end={self.end})"
        )


class ConstantSchedule:
    """A multiplier of 1 (the original's ``constant`` schedule)."""

    def __call__(self, index: int) -> float:
        return 1.0

    def __repr__(self) -> str:
        return "ConstantSchedule()"


def linear_schedule(
    optimizer: torch.optim.Optimizer, total: int, lr_ratio: float = 0.01
) -> LambdaLR:
    """A ``LambdaLR`` with :class:`LinearSchedule`; call its ``step()`` once per epoch (or step)."""
    return LambdaLR(optimizer, LinearSchedule(total, lr_ratio))


def constant_schedule(optimizer: torch.optim.Optimizer) -> LambdaLR:
    """A ``LambdaLR`` that keeps the learning rate."""
    return LambdaLR(optimizer, ConstantSchedule())


SCHEDULES = ("linear", "constant")
