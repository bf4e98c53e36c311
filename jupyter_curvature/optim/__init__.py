"""Optimisers: K-FAC (optimiser and preconditioner), SWATS, and learning-rate schedules.

``create_optimizer(name, model, lr=..., **kw)`` builds one by name (``sgd``, ``adam``,
``adamw``, ``kfac``, ``swats``), for the CLI and the notebook magics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.validate import unit_interval
from .kfac import KFAC, SUPPORTED_LAYERS, KFACPreconditioner
from .schedules import (
    SCHEDULES,
    ConstantSchedule,
    LinearSchedule,
    constant_schedule,
    linear_schedule,
)
from .swats import SWATS

OPTIMIZERS = ("sgd", "adam", "adamw", "kfac", "swats")


def create_optimizer(
    name: str, model: nn.Module, lr: float, **kwargs: Any
) -> torch.optim.Optimizer:
    """An optimiser by name for ``model``.

    ``sgd`` is ``torch.optim.SGD`` (``momentum`` defaults to 0.9 here, as in the original's
    runs), ``adam``/``adamw`` are torch's, ``kfac`` is :class:`KFAC` (it takes the model),
    ``swats`` is :class:`SWATS`. Extra keywords go to the optimiser.

    Raises:
        ValueError: unknown name (the known ones are listed), a non-positive ``lr``, or a
            ``momentum`` outside ``[0, 1)`` (torch checks only ``>= 0``; heavy-ball momentum
            ``>= 1`` makes the buffer a growing sum of every past gradient, never settling).
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimiser {name!r}; known optimisers: {', '.join(OPTIMIZERS)}")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if "momentum" in kwargs:
        unit_interval("momentum", kwargs["momentum"])
    params = [p for p in model.parameters() if p.requires_grad]
    if key == "sgd":
        kwargs.setdefault("momentum", 0.9)
        return torch.optim.SGD(params, lr=lr, **kwargs)
    if key == "adam":
        return torch.optim.Adam(params, lr=lr, **kwargs)
    if key == "adamw":
        return torch.optim.AdamW(params, lr=lr, **kwargs)
    if key == "kfac":
        return KFAC(model, lr=lr, **kwargs)
    return SWATS(params, lr=lr, **kwargs)


__all__ = [
    "KFAC",
    "OPTIMIZERS",
    "SCHEDULES",
    "SUPPORTED_LAYERS",
    "SWATS",
    "ConstantSchedule",
    "KFACPreconditioner",
    "LinearSchedule",
    "constant_schedule",
    "create_optimizer",
    "linear_schedule",
]
