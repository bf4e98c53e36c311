"""The package's own :class:`~jupyter_curvature.training.Trainer` logged to TensorBoard or W&B.

:class:`LoggingCallback` forwards what the ``Trainer`` reports to loggers: per step
``train/loss``, ``train/accuracy``, ``train/lr``; per epoch ``epoch/train_loss``,
``epoch/train_accuracy``, ``epoch/test_loss``, ``epoch/test_accuracy``; and each live
curvature record of its :class:`~jupyter_curvature.training.CurvatureCallback`
(``spectrum_every``) as the loggers log a check (its ``top_eigenvalues`` are then the
largest Ritz values, not certified eigenvalues; the density image is drawn from the
callback's kept result). This is what ``train --tensorboard DIR`` uses:

>>> from jupyter_curvature.integrations import tensorboard_callback
>>> jc.train(model="small_cnn", data="digits", spectrum_every=50,
...          callbacks=[tensorboard_callback("runs/exp1")])  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..core.distributed.context import is_main_process
from ..training import Callback, CurvatureCallback
from .loggers import TensorBoardLogger

__all__ = ["LoggingCallback", "tensorboard_callback"]


def _finite(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


class LoggingCallback(Callback):
    """A ``Trainer`` callback that sends training metrics and curvature records to loggers.

    Args:
        *loggers: objects with ``log(record, result)``, ``log_scalars(values, step)`` and
            ``close()`` (:class:`~jupyter_curvature.integrations.TensorBoardLogger`,
            :class:`~jupyter_curvature.integrations.WandbLogger`); closed at the end of
            training.
        every: log the per-step metrics every this many steps.

    Under ``torch.distributed`` only the main process logs (the figures are the same on
    every rank: the trainer reduces them), and with a lazily made
    :class:`~jupyter_curvature.integrations.TensorBoardLogger` the other ranks write no file.
    """

    def __init__(self, *loggers: Any, every: int = 1) -> None:
        if not loggers:
            raise ValueError("LoggingCallback needs at least one logger")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.loggers = list(loggers)
        self.every = every
        self.active = True

    def on_train_begin(self, trainer: Any) -> None:
        self.active = is_main_process()

    def on_step_end(self, trainer: Any, logs: dict[str, Any]) -> None:
        if not self.active or logs["step"] % self.every:
            return
        values = _finite({f"train/{k}": logs.get(k) for k in ("loss", "accuracy", "lr")})
        for logger in self.loggers:
            logger.log_scalars(values, logs["step"])

    def on_epoch_end(self, trainer: Any, logs: dict[str, Any]) -> None:
        if not self.active:
            return
        keys = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
        values = _finite({f"epoch/{k}": logs.get(k) for k in keys})
        for logger in self.loggers:
            logger.log_scalars(values, logs["step"])

    def on_curvature(self, trainer: Any, record: dict[str, Any]) -> None:
        if not self.active:
            return
        result = None
        for cb in getattr(trainer, "callbacks", ()):
            if isinstance(cb, CurvatureCallback) and cb.results:
                step, last = cb.results[-1]
                if step == record.get("step"):
                    result = last
        for logger in self.loggers:
            logger.log(record, result)

    def on_train_end(self, trainer: Any, logs: dict[str, Any]) -> None:
        for logger in self.loggers:
            close = getattr(logger, "close", None)
            if callable(close):
                close()


def tensorboard_callback(log_dir: str | Path, every: int = 1) -> LoggingCallback:
    """A :class:`LoggingCallback` writing TensorBoard event files to ``log_dir``."""
    return LoggingCallback(TensorBoardLogger(log_dir), every=every)
