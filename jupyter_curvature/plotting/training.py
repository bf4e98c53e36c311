"""The training figure: loss and accuracy curves, and the curvature seen while training.

One figure for every kind of history:

- a per-step view with curvature checks (``training_view(trainer)`` of
  :mod:`jupyter_curvature.training`, what the live dashboard shows: ``steps``, ``loss``, ``accuracy``, ``eval_steps``, ``test_loss``,
  ``test_accuracy``, ``spectrum_steps``, ``spectra``, ``top_eigenvalues``, ``lr``): a
  2 x 2 figure, loss and accuracy against the step (mini-batch values and test
  evaluations) over the latest spectral density and the largest eigenvalues against the
  step, with the stability threshold ``2 / lr`` of gradient descent on a quadratic
  (Cohen et al., "Gradient descent on neural networks typically occurs at the edge of
  stability", ICLR 2021);
- per-epoch records (a trainer's ``History``, its ``epochs`` list, a list of dicts or a
  mapping of metric name to values, with keys such as ``train_loss``, ``test_loss``,
  ``train_acc``/``train_accuracy``/``train_top1``): a 1 x 2 figure of loss and accuracy
  against ``x`` (default ``"epoch"``), one line per split (train, test, val).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._figures import figure
from .spectrum import draw_density

__all__ = ["plot_training", "plot_training_history"]

_SPLITS = ("train", "test", "val")


def _records_to_columns(history: Any) -> Mapping[str, Sequence[Any]]:
    if isinstance(history, Mapping):
        return history
    keys = sorted({k for record in history for k in record})
    return {k: [record.get(k, np.nan) for record in history] for k in keys}


def _epoch_series(history: Any, x: str) -> list[tuple[str, Any, Any, Any, dict[str, Any]]]:
    """``(label, xs, loss, accuracy, style)`` per split found in per-epoch records."""
    columns = _records_to_columns(history)
    longest = max((len(v) for v in columns.values()), default=0)
    steps = columns.get(x) or list(range(1, 1 + longest))
    style = {"marker": "o", "markersize": 3}
    out = []
    for split in _SPLITS:
        found = []
        for kind in ("loss", "acc"):
            values = None
            for key in (f"{split}_{kind}", f"{split}_{kind}uracy", f"{split}_top1"):
                candidate = columns.get(key)
                if candidate is not None and len(candidate) == len(steps):
                    values = candidate
                    break
            found.append(values)
        if any(v is not None for v in found):
            out.append((split, steps, found[0], found[1], style))
    return out


def _step_series(history: Any) -> list[tuple[str, Any, Any, Any, dict[str, Any]]]:
    """Mini-batch values per step, and the test evaluations."""
    out = [("train (batch)", np.asarray(history.steps), history.loss, history.accuracy, {})]
    if history.eval_steps:
        style = {"marker": "o", "color": "#d62728"}
        out.append(("test", history.eval_steps, history.test_loss, history.test_accuracy, style))
    return out


def _draw_curves(ax_loss: Any, ax_acc: Any, series: list, xlabel: str) -> None:
    colors = iter(["#1f77b4", "#d62728", "#2ca02c"])
    accuracies = []
    for label, xs, loss, accuracy, style in series:
        style = {"color": next(colors), **style}
        if loss is not None and len(loss):
            ax_loss.plot(xs, loss, label=label, **style)
        if accuracy is not None and len(accuracy):  # loops of one's own report none
            ax_acc.plot(xs, accuracy, label=label, **style)
            accuracies.append(np.asarray(accuracy, dtype=float))
    ax_loss.set(xlabel=xlabel, ylabel="loss", title="Loss")
    ax_acc.set(xlabel=xlabel, ylabel="top-1 accuracy", title="Accuracy")
    finite = np.concatenate(accuracies) if accuracies else np.empty(0)
    finite = finite[np.isfinite(finite)]
    if finite.size and finite.min() >= 0 and finite.max() <= 1:
        ax_acc.set_ylim(0, 1)
    for ax in (ax_loss, ax_acc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")


def _draw_curvature(ax_density: Any, ax_top: Any, history: Any) -> None:
    name = "GGN" if getattr(history, "curvature", "hessian") == "ggn" else "Hessian"
    if history.spectra:
        draw_density(
            ax_density,
            history.spectra[-1],
            stems=False,
            title=f"{name} spectral density at step {history.spectrum_steps[-1]}",
        )
        top = history.top_eigenvalues
        k = max(len(t) for t in top)
        values = np.full((len(top), k), np.nan)
        for j, t in enumerate(top):
            values[j, : len(t)] = t
        top_steps = getattr(history, "top_steps", history.spectrum_steps)
        for i in range(k):
            ax_top.plot(top_steps, values[:, i], "o-", label=f"λ{i + 1}")
        thresholds = np.asarray(history.thresholds, dtype=float)  # 2/lr at each check
        if thresholds.size and np.isfinite(thresholds).all():
            ax_top.plot(top_steps, thresholds, "--", color="#555555", label="2 / lr")
        ax_top.legend(loc="best", fontsize="small")
    else:
        for ax in (ax_density, ax_top):
            ax.text(
                0.5,
                0.5,
                "no curvature checks\n(--spectrum-every N)",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
    ax_top.set(xlabel="step", ylabel="eigenvalue", title=f"Largest {name} eigenvalues")


def plot_training(
    history: Any,
    *,
    x: str = "epoch",
    axes: Any = None,
    figsize: tuple[float, float] | None = None,
) -> Any:
    """Loss, accuracy and (when recorded) curvature of a training run as one figure.

    Args:
        history: a per-step view with curvature checks (``training_view(trainer)``), a trainer's
            ``History`` (its per-epoch records are drawn), a list of per-epoch records or a
            mapping of metric name to values (see the module docstring).
        x: the record key on the horizontal axis of per-epoch records (default ``"epoch"``;
            the record's position when absent).
        axes: axes to draw into: two (loss, accuracy), or four (a 2 x 2 array; the second
            row gets the curvature). Default: a new ``Figure`` (no pyplot state).
        figsize: size of a new figure (default ``(11, 7.5)`` with curvature, else ``(9, 3.4)``).

    Returns:
        the figure.
    """
    per_step = hasattr(history, "eval_steps") and hasattr(history, "spectra")
    if per_step:
        series, xlabel = _step_series(history), "step"
    else:
        if hasattr(history, "epochs") and not isinstance(history, (Mapping, Sequence)):
            history = history.epochs  # a trainer's History: its per-epoch records
        series, xlabel = _epoch_series(history, x), x
    if axes is None:
        rows = 2 if per_step else 1
        fig, grid = figure(rows, 2, figsize or ((11, 7.5) if per_step else (9, 3.4)))
        flat = list(grid.reshape(-1))
    else:
        flat = list(np.asarray(axes, dtype=object).reshape(-1))
        if len(flat) < 2:
            raise ValueError(f"axes must hold at least two axes (loss, accuracy), got {len(flat)}")
        fig = flat[0].figure
    _draw_curves(flat[0], flat[1], series, xlabel)
    if per_step and len(flat) >= 4:
        _draw_curvature(flat[2], flat[3], history)
    if per_step:
        fig.suptitle(f"Training ({history.status}, {history.steps_done} steps)")
    return fig


def plot_training_history(history: Any, *, x: str = "epoch", axes: Any = None) -> Any:
    """:func:`plot_training` as the CLI calls it: returns the loss and accuracy axes.

    The name the CLI tasks use. Without ``axes`` the figure is made with pyplot (as it
    always was), so a notebook's inline backend shows it.
    """
    if axes is None:
        from ._figures import pyplot_figure

        axes = pyplot_figure((9, 3.4)).subplots(1, 2)
    plot_training(history, x=x, axes=axes)
    return axes
