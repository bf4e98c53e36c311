"""A PyTorch Lightning callback: curvature checks every ``every`` optimiser steps.

>>> import lightning.pytorch as pl  # doctest: +SKIP
>>> from jupyter_curvature.integrations.lightning import CurvatureCallback
>>> cb = CurvatureCallback(curvature_batch, every=50, loss_fn=nn.CrossEntropyLoss())  # doctest: +SKIP
>>> pl.Trainer(max_steps=1000, callbacks=[cb]).fit(module, loader)  # doctest: +SKIP
>>> cb.tracker.history  # doctest: +SKIP

Importing this module needs ``lightning`` (or the older ``pytorch_lightning``):
``pip install "jupyter_curvature[lightning]"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .extras import require
from .tracker import Tracker

__all__ = ["CurvatureCallback"]


def _lightning() -> Any:
    try:
        return importlib.import_module("lightning.pytorch")
    except ImportError:
        pass
    try:
        return importlib.import_module("pytorch_lightning")
    except ImportError:
        return require("lightning")  # raises the one-line error naming the extra


pl = _lightning()

_LOSS_ATTRIBUTES = ("loss_fn", "criterion", "loss")


def module_loss(module: nn.Module) -> Callable:
    """The LightningModule's own loss: its ``loss_fn``, ``criterion`` or ``loss`` attribute."""
    for name in _LOSS_ATTRIBUTES:
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    raise ValueError(
        f"{type(module).__name__} has no loss attribute ({', '.join(_LOSS_ATTRIBUTES)}); pass "
        "CurvatureCallback(loss_fn=...), the loss of the module's outputs and the targets"
    )


class CurvatureCallback(pl.Callback):
    """Curvature checks in a Lightning run, through a
    :class:`~jupyter_curvature.integrations.tracker.Tracker` on the LightningModule.

    Every ``every`` global steps (optimiser steps: with ``accumulate_grad_batches`` a step
    is checked once, after its optimiser step), in ``on_train_batch_end``, the tracker runs
    one check on the fixed ``data`` within its time budget (``max_overhead``). The model is
    the LightningModule itself (``module(inputs)``); the loss is ``loss_fn``, or the
    module's ``loss_fn``/``criterion``/``loss`` attribute.

    Mixed precision (``precision="16-mixed"``/``"bf16-mixed"``) is handled: the weights
    are float32 and the checks run in float32 outside autocast. Under ``"16-true"``/``"bf16-true"``
    (half-precision weights) the products run in that dtype and are summed in float32, and
    ``tol`` is raised to what they can certify (a warning says so; docs/operators.md). Under a
    multi-process strategy only global rank 0 checks (alone, on its whole curvature set).

    Args:
        data: the fixed curvature set (one batch, a dataset or batches).
        every: optimiser steps between checks.
        loss_fn: the loss (default: the module's, see above).
        loggers: loggers called after each check
            (:class:`~jupyter_curvature.integrations.TensorBoardLogger`, ...).
        trainer_logger: also log to the trainer's own TensorBoard or W&B logger (its
            ``SummaryWriter`` or run), when it has one.
        **tracker: the :class:`~jupyter_curvature.integrations.tracker.Tracker`'s settings
            (``curvature``, ``top_k``, ``num_iters``, ``num_probes``, ``num_samples``,
            ``seed``, ``max_overhead``, ``trace_matvecs``, ``params``, ...).

    Attributes:
        tracker: the tracker (after the start of training); its ``history`` holds the records.
    """

    def __init__(
        self,
        data: Any,
        *,
        every: int = 50,
        loss_fn: Callable | None = None,
        loggers: Iterable[Any] = (),
        trainer_logger: bool = False,
        **tracker: Any,
    ) -> None:
        super().__init__()
        if "optimizer" in tracker:
            raise TypeError("the optimiser is the trainer's; do not pass optimizer=")
        self.data = data
        self.every = every
        self.loss_fn = loss_fn
        self.loggers = list(loggers)
        self.trainer_logger = trainer_logger
        self.settings = tracker
        self.tracker: Tracker | None = None
        self._last_step: int | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        loggers = list(self.loggers)
        if self.trainer_logger:
            loggers += _trainer_loggers(trainer)
        optimizers = getattr(trainer, "optimizers", None) or [None]
        self.tracker = Tracker(
            pl_module,
            self.loss_fn or module_loss(pl_module),
            self.data,
            every=self.every,
            optimizer=optimizers[0],
            loggers=loggers,
            **self.settings,
        )
        self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if self.tracker is None or step == self._last_step:
            return  # not rank 0, or no optimiser step since the last call (accumulation)
        self._last_step = step
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self.tracker.step(step, loss=loss if torch.is_tensor(loss) else None)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.tracker is not None:
            self.tracker.close()


def _trainer_loggers(trainer: Any) -> list[Any]:
    """Loggers of this package on the trainer's TensorBoard writers and W&B runs."""
    from .loggers import TensorBoardLogger, WandbLogger

    out: list[Any] = []
    for logger in getattr(trainer, "loggers", None) or ():
        kind = type(logger).__name__
        if kind == "TensorBoardLogger":
            out.append(TensorBoardLogger(writer=logger.experiment))
        elif kind == "WandbLogger":
            out.append(WandbLogger(run=logger.experiment))
    return out
