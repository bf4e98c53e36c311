"""Curvature checks logged where people look: TensorBoard and Weights & Biases.

A logger is a small object with ``log(record, result)`` (and ``close()``) that a
:class:`~jupyter_curvature.integrations.tracker.Tracker` calls after each check. Both log
the same things under ``prefix`` (default ``"curvature/"``):

- scalars ``lambda_1`` ... ``lambda_k`` (certified, descending), ``lambda_max``,
  ``lambda_min`` (smallest Ritz value), ``trace``, ``negative_mass``, ``seconds`` and,
  with a learning rate, ``two_over_lr`` and ``sharpness_ratio`` (``lambda_max * lr / 2``);
- the Ritz values of all probes as a histogram (``ritz_values``);
- the density figure (:func:`jupyter_curvature.plotting.plot_spectrum`, certified
  eigenvalues as dotted lines) as an image (``density``).

TensorBoard goes through ``torch.utils.tensorboard.SummaryWriter`` (needs the
``tensorboard`` package), W&B through ``wandb``; both are imported only when a logger is
made, and a missing one is a one-line ``ImportError`` naming the extra to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .extras import require

__all__ = ["TensorBoardLogger", "WandbLogger", "scalars"]


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The scalar values of a check record, by name (without prefix).

    Takes the records of :func:`~jupyter_curvature.integrations.checks.curvature_check` and
    those of the package ``Trainer``'s
    :class:`~jupyter_curvature.training.CurvatureCallback` (trace and negative mass under
    ``stats``; ``2/lr`` from ``lr``).
    """
    out: dict[str, float] = {}
    for i, value in enumerate(record.get("top_eigenvalues") or (), start=1):
        out[f"lambda_{i}"] = float(value)
    stats = record.get("stats") or {}
    lr = record.get("lr")
    derived = {}
    if isinstance(lr, (int, float)) and lr > 0:
        derived["two_over_lr"] = 2.0 / lr
        if isinstance(record.get("lambda_max"), (int, float)):
            derived["sharpness_ratio"] = record["lambda_max"] * lr / 2.0
    for key in (
        "lambda_max",
        "lambda_min",
        "trace",
        "negative_mass",
        "two_over_lr",
        "sharpness_ratio",
        "seconds",
    ):
        value = record.get(key, stats.get(key, derived.get(key)))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def _ritz(record: dict[str, Any]) -> list[float]:
    return [float(v) for row in record.get("ritz_values") or () for v in row]


def _figure(record: dict[str, Any], result: Any) -> Any:
    """The density figure of a check (a :class:`CheckResult` or a ``SpectralDensity``), or
    ``None`` when there is no density."""
    if getattr(result, "density", None) is None:
        return None
    from ..plotting import plot_spectrum

    title = f"{record.get('curvature', 'hessian')} spectral density, step {record.get('step')}"
    return plot_spectrum(result, eigen=getattr(result, "eigen", None), title=title)


class TensorBoardLogger:
    """Logs each check to TensorBoard (scalars, Ritz histogram, density image).

    Args:
        log_dir: the run folder for a new ``SummaryWriter`` (closed by :meth:`close`).
        writer: an existing ``SummaryWriter`` instead (left open; Lightning's
            ``trainer.logger.experiment`` is one).
        prefix: tag prefix.
        histogram, image: also log the Ritz histogram / the density figure.
    """

    def __init__(
        self,
        log_dir: str | Path | None = None,
        *,
        writer: Any = None,
        prefix: str = "curvature/",
        histogram: bool = True,
        image: bool = True,
    ) -> None:
        if (log_dir is None) == (writer is None):
            raise ValueError("give exactly one of log_dir= (a folder) or writer= (a SummaryWriter)")
        if writer is None:
            require("tensorboard")  # fail now, not at the first check
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.owned = writer is None
        self._writer = writer
        self.prefix = prefix
        self.histogram = histogram
        self.image = image

    @property
    def writer(self) -> Any:
        """The ``SummaryWriter``; a new one is made on first use (so a logger that never
        logs, e.g. on a non-main rank, writes no event file)."""
        if self._writer is None:
            tb = importlib.import_module("torch.utils.tensorboard")
            self._writer = tb.SummaryWriter(log_dir=str(self.log_dir))
        return self._writer

    def log(self, record: dict[str, Any], result: Any = None) -> None:
        step = int(record.get("step", 0))
        for name, value in scalars(record).items():
            self.writer.add_scalar(self.prefix + name, value, step)
        ritz = _ritz(record)
        if self.histogram and ritz:
            import numpy as np

            self.writer.add_histogram(self.prefix + "ritz_values", np.asarray(ritz), step)
        if self.image and result is not None:
            fig = _figure(record, result)
            if fig is not None:
                self.writer.add_figure(self.prefix + "density", fig, step, close=False)
        self.writer.flush()

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        """Plain scalars (training metrics) under their own names."""
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self._writer is None:
            return
        if self.owned:
            self._writer.close()
        else:
            self._writer.flush()


class WandbLogger:
    """Logs each check to Weights & Biases (scalars, Ritz histogram, density image).

    The values go in with ``<prefix>step`` as their own step metric
    (``wandb.define_metric``), so they never fight the training loop's own ``wandb.log``
    steps (the Hugging Face and Lightning W&B loggers').

    Args:
        run: a W&B run; default the active one (``wandb.run``), else a new ``wandb.init(**init)``
            (finished by :meth:`close`). Offline: ``WANDB_MODE=offline`` or ``mode="offline"``.
        prefix: key prefix.
        histogram, image: also log the Ritz histogram / the density figure.
        **init: arguments of ``wandb.init`` for a new run (``project``, ``dir``, ``mode``...).
    """

    def __init__(
        self,
        run: Any = None,
        *,
        prefix: str = "curvature/",
        histogram: bool = True,
        image: bool = True,
        **init: Any,
    ) -> None:
        wandb = require("wandb")
        self.wandb = wandb
        self.owned = False
        if run is None:
            run = wandb.run
        if run is None:
            run = wandb.init(**init)
            self.owned = True
        self.run = run
        self.prefix = prefix
        self.histogram = histogram
        self.image = image
        run.define_metric(prefix + "step")
        run.define_metric("trainer/step")
        self._groups: set[str] = set()
        run.define_metric(prefix + "*", step_metric=prefix + "step")

    def log(self, record: dict[str, Any], result: Any = None) -> None:
        data: dict[str, Any] = {self.prefix + "step": int(record.get("step", 0))}
        data.update({self.prefix + k: v for k, v in scalars(record).items()})
        ritz = _ritz(record)
        if self.histogram and ritz:
            data[self.prefix + "ritz_values"] = self.wandb.Histogram(ritz)
        if self.image and result is not None:
            fig = _figure(record, result)
            if fig is not None:
                data[self.prefix + "density"] = self.wandb.Image(_png(fig))
        self.run.log(data)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        """Plain scalars (training metrics), with ``trainer/step`` as their step metric."""
        for group in {name.split("/")[0] for name in values} - self._groups:
            self.run.define_metric(f"{group}/*", step_metric="trainer/step")
            self._groups.add(group)
        self.run.log({"trainer/step": int(step), **values})

    def close(self) -> None:
        if self.owned:
            self.run.finish()


def _png(fig: Any) -> Any:
    """A matplotlib figure as a PIL image (W&B's own conversion goes through plotly)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    buf.seek(0)
    return Image.open(buf)
