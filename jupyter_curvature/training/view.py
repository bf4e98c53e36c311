"""What a training run looks like step by step, read from a Trainer: the one source of the
live dashboard (:mod:`jupyter_curvature.widgets.dashboard`), the static training figure
(:func:`jupyter_curvature.plotting.plot_training`) and the task results' ``.plot()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from .callbacks import CurvatureCallback

__all__ = ["thresholds_at", "training_view"]

#: the words of each ``Trainer.status`` on the status line
_WORDS = {"completed": "finished", "stopped": "stopped", "interrupted": "interrupted",
          "failed": "failed"}  # fmt: skip


def thresholds_at(steps: Sequence[int], lrs: Sequence[float]) -> list[float]:
    """``2 / lr`` at each of ``steps`` (1-based), from the per-step learning rates ``lrs``;
    NaN where no positive learning rate is known (the stability threshold of gradient descent
    on a quadratic: Cohen et al., "Gradient Descent on Neural Networks Typically Occurs at
    the Edge of Stability", ICLR 2021)."""
    out = []
    for step in steps:
        i = min(max(int(step) - 1, 0), len(lrs) - 1)
        lr = float(lrs[i]) if lrs else float("nan")
        out.append(2.0 / lr if lr > 0 else float("nan"))
    return out


def training_view(trainer: Any) -> SimpleNamespace:
    """What the dashboard and :func:`~jupyter_curvature.plotting.plot_training` draw, read
    from a :class:`~jupyter_curvature.training.Trainer`: its history's columns and views,
    the curvature kind, and the spectra its :class:`CurvatureCallback` kept (``spectra``
    and ``density_steps``; empty when the callback keeps no result objects)."""
    h = trainer.history
    spectra: list[Any] = []
    density_steps: list[int] = []
    kind = h.curvature[-1].get("curvature") if h.curvature else None
    for cb in trainer.callbacks:
        if isinstance(cb, CurvatureCallback):
            kind = kind or cb.curvature
            for step, result in cb.results:
                if callable(getattr(result, "density", None)):
                    density_steps.append(step)
                    spectra.append(result)
    status = getattr(trainer, "status", "running")
    return SimpleNamespace(
        steps=list(h.steps["step"]), loss=h.loss, accuracy=h.accuracy, lr=h.lr,
        eval_steps=h.eval_steps, test_loss=h.test_loss, test_accuracy=h.test_accuracy,
        spectrum_steps=density_steps, spectra=spectra, curvature=kind or "hessian",
        top_steps=h.spectrum_steps, top_eigenvalues=h.top_eigenvalues,
        thresholds=thresholds_at(h.spectrum_steps, h.lr),
        stats=dict(h.curvature[-1].get("stats", {})) if h.curvature else {},
        events=[(s, t) for (s, t), e in zip(h.event_lines(), h.events)
                if e.get("event") != "evaluation"],
        status=_WORDS.get(status, status), steps_done=trainer.step,
        total_steps=trainer.total_steps, curvature_seconds=h.curvature_seconds,
    )  # fmt: skip
