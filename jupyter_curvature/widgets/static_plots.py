"""Static matplotlib versions of every panel: for papers, and for front ends without widgets.

* :func:`plot_training`: loss, accuracy, the latest spectral density and the largest
  eigenvalues against ``2 / lr`` (the four views of ``TrainingDashboard``);
* :func:`plot_spectrum`: density with its band, Ritz stems (``SpectrumPanel``);
* :func:`plot_stats`: the per-layer quantities (``StatsPanel``).

Each returns a ``matplotlib.figure.Figure`` (no ``pyplot`` state is left behind, so they are
safe in scripts and tests). Only matplotlib and numpy are imported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["plot_training", "plot_spectrum", "plot_stats"]


def _figure(nrows: int, ncols: int, size: tuple[float, float]) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _density_axes(
    ax: Any, density: Any, sigma: float | None, log: bool, stems: bool, label: str
) -> Any:
    curve = density.density(None, sigma)
    ax.fill_between(
        curve.grid,
        curve.lower,
        curve.upper,
        color="#9ecae1",
        alpha=0.6,
        label="± 2 s.e. over probes",
    )
    ax.plot(curve.grid, curve.density, color="#1f77b4", label="density")
    if log:
        ax.set_yscale("log")
        ax.set_ylim(max(curve.density.max() * 1e-6, 1e-300), None)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(label)
    if stems:
        twin = ax.twinx()
        theta = density.ritz_values.numpy(force=True).reshape(-1)
        w = density.weights.numpy(force=True).reshape(-1)
        twin.vlines(theta, 0, w, color="#888888", alpha=0.6, linewidth=0.8)
        twin.set_ylabel("Ritz weight")
        twin.set_ylim(0, None)
    ax.legend(loc="upper right", fontsize="small")
    return curve


def plot_training(history: Any, *, figsize: tuple[float, float] = (11, 7.5)) -> Any:
    """The four dashboard views of a ``TrainHistory`` as one matplotlib figure."""
    fig, ax = _figure(2, 2, figsize)
    steps = np.asarray(history.steps)
    ax[0, 0].plot(steps, history.loss, color="#1f77b4", label="train (batch)")
    ax[0, 1].plot(steps, history.accuracy, color="#1f77b4", label="train (batch)")
    if history.eval_steps:
        ax[0, 0].plot(history.eval_steps, history.test_loss, "o-", color="#d62728", label="test")
        ax[0, 1].plot(
            history.eval_steps, history.test_accuracy, "o-", color="#d62728", label="test"
        )
    ax[0, 0].set(xlabel="step", ylabel="loss", title="Loss")
    ax[0, 1].set(xlabel="step", ylabel="top-1 accuracy", title="Accuracy", ylim=(0, 1))
    for a in ax[0]:
        a.legend(fontsize="small")
    name = "GGN" if history.curvature == "ggn" else "Hessian"
    if history.spectra:
        _density_axes(
            ax[1, 0],
            history.spectra[-1],
            None,
            False,
            False,
            f"{name} spectral density at step {history.spectrum_steps[-1]}",
        )
        top = history.top_eigenvalues
        k = max(len(t) for t in top)
        vals = np.full((len(top), k), np.nan)
        for j, t in enumerate(top):
            vals[j, : len(t)] = t
        for i in range(k):
            ax[1, 1].plot(history.spectrum_steps, vals[:, i], "o-", label=f"λ{i + 1}")
        lrs = np.asarray(history.lr, dtype=float)
        if lrs.size and (lrs > 0).all():
            idx = np.clip(np.asarray(history.spectrum_steps) - 1, 0, lrs.size - 1)
            ax[1, 1].plot(
                history.spectrum_steps, 2 / lrs[idx], "--", color="#555555", label="2 / lr"
            )
        ax[1, 1].legend(fontsize="small")
    else:
        for a in ax[1]:
            a.text(
                0.5,
                0.5,
                "no curvature checks\n(--spectrum-every N)",
                ha="center",
                va="center",
                transform=a.transAxes,
            )
    ax[1, 1].set(xlabel="step", ylabel="eigenvalue", title=f"Largest {name} eigenvalues")
    fig.suptitle(f"Training ({history.status}, {history.steps_done} steps)")
    return fig


def plot_spectrum(
    density: Any,
    *,
    eigen: Any = None,
    sigma: float | None = None,
    log: bool = False,
    title: str | None = None,
    figsize: tuple[float, float] = (8, 4.5),
) -> Any:
    """A spectral density with its band and the Ritz stems; certified eigenvalues as ticks."""
    density = (
        getattr(density, "density", density)
        if not callable(getattr(density, "density", None))
        else density
    )
    fig, ax = _figure(1, 1, figsize)
    a = ax[0, 0]
    _density_axes(a, density, sigma, log, True, title or f"Spectral density (n = {density.n})")
    if eigen is not None:
        for v in eigen.eigenvalues.tolist():
            a.axvline(v, color="#d62728", linestyle=":", linewidth=1)
    return fig


def layer_quantities(result: Any) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per-layer quantities available in ``result``: ``{label: (layer names, values)}``.

    From ``result.layers`` (``LayerCurvature``, the ``(all)`` row left out): ``λ max``,
    ``trace``, ``parameters``; from ``result.norms`` (``WeightNorms``): ``weight L2``.
    """
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    layers = getattr(result, "layers", None)
    if layers is not None:
        rows = [r for r in layers.rows if r.layer != "(all)"]
        names = [r.layer for r in rows]
        out["λ max"] = (names, np.array([r.lambda_max for r in rows], dtype=float))
        out["trace"] = (names, np.array([r.trace for r in rows], dtype=float))
        out["parameters"] = (names, np.array([r.num_params for r in rows], dtype=float))
    norms = getattr(result, "norms", None)
    if norms is not None and norms.layers:
        names = [r.layer for r in norms.layers]
        vals = [np.nan if r.weight_l2 is None else r.weight_l2 for r in norms.layers]
        out["weight L2"] = (names, np.array(vals, dtype=float))
    return out


def plot_stats(result: Any, *, figsize: tuple[float, float] = (10, 3.5)) -> Any:
    """Bar charts of every per-layer quantity of a statistics result."""
    quantities = layer_quantities(result)
    n = max(len(quantities), 1)
    fig, ax = _figure(1, n, (figsize[0], figsize[1]))
    if not quantities:
        ax[0, 0].text(0.5, 0.5, "no per-layer statistics", ha="center", va="center")
        return fig
    for a, (label, (names, values)) in zip(ax[0], quantities.items()):
        a.bar(range(len(names)), values, color="#1f77b4")
        a.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize="small")
        a.set_title(label)
    return fig
