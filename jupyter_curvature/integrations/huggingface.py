"""A Hugging Face ``transformers.TrainerCallback``: curvature checks every ``every`` steps.

>>> from transformers import Trainer  # doctest: +SKIP
>>> from jupyter_curvature.integrations.huggingface import CurvatureCallback
>>> cb = CurvatureCallback(curvature_batch, every=50)  # a dict batch with "labels"  # doctest: +SKIP
>>> Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb]).train()  # doctest: +SKIP
>>> cb.tracker.history  # doctest: +SKIP

Importing this module needs ``transformers``: ``pip install "jupyter_curvature[hf]"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from .checks import pick_logits
from .extras import require
from .tracker import Tracker

__all__ = ["CurvatureCallback"]

transformers = require("transformers")


class CurvatureCallback(transformers.TrainerCallback):
    """Curvature checks in a Hugging Face ``Trainer`` run, through a
    :class:`~jupyter_curvature.integrations.tracker.Tracker` on ``kwargs["model"]``.

    In ``on_step_end`` (once per optimiser step, so gradient accumulation is handled), every
    ``every`` global steps, the tracker runs one check on the fixed ``data`` within its time
    budget (``max_overhead``); the learning rate for ``2/lr`` is the optimiser's at that
    step (after the scheduler).

    **Batches.** ``data`` holds dict batches as the model takes them, with the targets under
    ``"labels"`` (one dict of tensors, a list of them, a DataLoader, or a dataset of dict
    features, collated by :func:`torch.utils.data.default_collate`): the model is called as
    ``model(**inputs)`` without the labels, and the loss takes ``outputs.logits`` (or what
    ``outputs=`` picks) and the labels. **The loss** defaults to
    ``nn.CrossEntropyLoss()``, right for sequence classification (logits ``(B, C)``); for
    token-level heads and causal language models (logits ``(B, T, V)``, shifted labels)
    pass your own ``loss_fn(logits, labels)`` (a scalar, mean or sum); the curvature of
    ``model(**batch).loss`` itself is not supported.

    Mixed precision (``fp16=True``/``bf16=True``: float32 weights under autocast) is
    handled: the checks run in float32 outside autocast, calling the model's original forward
    (Accelerate wraps it in autocast; see
    :func:`~jupyter_curvature.integrations.checks.full_precision`). Half-precision weights are refused
    with a clear error. Only the main process (``state.is_world_process_zero``) checks.

    Args:
        data: the fixed curvature set.
        every: optimiser steps between checks.
        loss_fn: ``loss_fn(logits, labels)`` (default ``nn.CrossEntropyLoss()``).
        outputs: picks the loss's input from the model output (default ``.logits``).
        loggers: loggers called after each check.
        **tracker: the :class:`~jupyter_curvature.integrations.tracker.Tracker`'s settings.

    Attributes:
        tracker: the tracker (after the start of training).
    """

    def __init__(
        self,
        data: Any,
        *,
        every: int = 50,
        loss_fn: Callable | None = None,
        outputs: Callable[[Any], Any] | None = None,
        loggers: Iterable[Any] = (),
        **tracker: Any,
    ) -> None:
        if "optimizer" in tracker:
            raise TypeError("the optimiser is the trainer's; do not pass optimizer=")
        self.data = data
        self.every = every
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.outputs = outputs or pick_logits
        self.loggers = list(loggers)
        self.settings = tracker
        self.tracker: Tracker | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        model = kwargs.get("model")
        if not isinstance(model, nn.Module):
            raise TypeError("CurvatureCallback needs the Trainer's model (kwargs['model'])")
        self.tracker = Tracker(
            model,
            self.loss_fn,
            self.data,
            every=self.every,
            optimizer=kwargs.get("optimizer"),
            outputs=self.outputs,
            loggers=self.loggers,
            **self.settings,
        )
        self.tracker.num_steps = int(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.tracker is None:
            return
        if self.tracker.optimizer is None and kwargs.get("optimizer") is not None:
            self.tracker.optimizer = kwargs["optimizer"]
        self.tracker.step(int(state.global_step))

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        """The Trainer's logged training loss (every ``logging_steps``) goes to the loggers
        that draw curves (a notebook dashboard's feed)."""
        if self.tracker is not None and logs and "loss" in logs:
            self.tracker.log_step(int(state.global_step), float(logs["loss"]))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.tracker is not None:
            self.tracker.close()
