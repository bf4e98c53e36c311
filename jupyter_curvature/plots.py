"""Static matplotlib figures of the engine's results, for papers, reports and the CLI.

The landscape figures live with the landscape engine (:mod:`jupyter_curvature.landscape.plot`);
this module draws spectra and training histories. Only matplotlib is imported, never a Jupyter
package, and pyplot is imported lazily so a headless process can pick its backend first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def plot_spectral_density(
    density: Any, *, ax=None, sigma: float | None = None, log: bool = True, title: str | None = None
):
    """The smoothed spectral density with its band across probes, and the Ritz values as stems.

    Args:
        density: a :class:`~jupyter_curvature.spectral.SpectralDensity`.
        sigma: Gaussian broadening (default: the density's automatic bandwidth).
        log: logarithmic density axis (the bulk near zero dwarfs the outliers otherwise).
    """
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 3.6))
    curve = density.density(sigma=sigma)
    floor = 1e-8 if log else 0.0
    ax.plot(
        curve.grid, np.maximum(curve.density, floor), color="C0", label="density (mean of probes)"
    )
    if density.num_probes > 1:
        ax.fill_between(
            curve.grid,
            np.maximum(curve.lower, floor),
            np.maximum(curve.upper, floor),
            color="C0",
            alpha=0.25,
            label="spread across probes",
        )
    ritz = density.ritz_values.numpy(force=True).reshape(-1)
    weights = density.weights.numpy(force=True).reshape(-1) / density.num_probes
    stem_ax = ax.twinx()
    stem_ax.vlines(ritz, 0, weights, color="C3", alpha=0.6, linewidth=1)
    stem_ax.set_ylabel("Ritz weight", color="C3")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(title or "Spectral density (stochastic Lanczos quadrature)")
    ax.legend(loc="upper right", fontsize="small")
    return ax


def plot_training_history(
    history: Mapping[str, Sequence[float]] | Sequence[Mapping[str, Any]],
    *,
    x: str = "epoch",
    axes=None,
):
    """Loss and accuracy curves (train and test) from a trainer history.

    Args:
        history: a mapping of metric name to values, or a list of per-epoch records with keys
            such as ``epoch``, ``train_loss``, ``test_loss``, ``train_acc``/``train_accuracy``.
    """
    plt = _pyplot()
    if not isinstance(history, Mapping):
        keys = sorted({k for record in history for k in record})
        history = {k: [record.get(k, np.nan) for record in history] for k in keys}
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    steps = history.get(x) or list(range(1, 1 + max(len(v) for v in history.values())))
    for ax, kind in zip(axes, ("loss", "acc")):
        for split in ("train", "test", "val"):
            for key in (f"{split}_{kind}", f"{split}_{kind}uracy", f"{split}_top1"):
                values = history.get(key)
                if values is not None and len(values) == len(steps):
                    ax.plot(steps, values, marker="o", markersize=3, label=f"{split}")
                    break
        ax.set_xlabel(x)
        ax.set_ylabel("loss" if kind == "loss" else "accuracy")
        ax.legend(fontsize="small")
    return axes
