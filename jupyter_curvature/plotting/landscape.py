"""The landscape figures: lines, planes and surfaces of loss and accuracy.

- :func:`plot_landscape_1d`: the original package's 2 x 2 figure (rows train / test,
  columns loss / accuracy), one line per direction labelled with its eigenvalue;
- :func:`plot_landscape_2d`: a heat map with contour lines over it (or either alone);
- :func:`plot_landscape_surface`: a 3D surface;
- :func:`plot_landscape_overview`: one metric's lines next to its 2D map (the explorer's
  view, and its static fallback in a saved notebook).

Points not computed yet (a progressive or interrupted result) are left blank. matplotlib
is imported when a function is called, not when this module is imported; pick a backend
as usual (``matplotlib.use("Agg")`` for files).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._figures import figure, is_a, pyplot_figure

__all__ = [
    "plot_landscape_1d",
    "plot_landscape_2d",
    "plot_landscape_overview",
    "plot_landscape_surface",
]


_TITLES = {
    "train_loss": "train loss",
    "train_accuracy": "train accuracy",
    "test_loss": "test loss",
    "test_accuracy": "test accuracy",
}


def _direction_label(info: dict[str, Any], fallback: str) -> str:
    lam = info.get("eigenvalue")
    if lam is not None:
        index = info.get("index")
        return f"λ = {lam:.4g}" + (f" (#{index})" if index is not None else "")
    return str(info.get("label", fallback))


def plot_landscape_1d(
    result: Any,
    *,
    fig: Any = None,
    logy: bool = False,
    accuracy_percent: bool = True,
    title: str | None = None,
) -> Any:
    """The 2 x 2 picture: train/test (rows) x loss/accuracy (columns) against ``t``.

    Without test data it is 1 x 2. One line per direction, labelled with its eigenvalue
    (or its label for other directions). Returns the figure.
    """
    if not is_a(result, "Landscape1D"):
        raise TypeError(f"plot_landscape_1d needs a Landscape1D, got {type(result).__name__}")
    splits = ["train", "test"] if result.test_loss is not None else ["train"]
    if fig is None:
        fig = pyplot_figure((10, 3.6 * len(splits)))
    axes = fig.subplots(len(splits), 2, squeeze=False)
    t = np.asarray(result.coords)
    for r, split in enumerate(splits):
        for c, what in enumerate(("loss", "accuracy")):
            ax = axes[r][c]
            values = result.metric(f"{split}_{what}")
            if what == "accuracy" and accuracy_percent:
                values = 100 * values
            for i, info in enumerate(result.directions):
                ax.plot(t, values[i], marker=".", ms=4, label=_direction_label(info, f"d{i}"))
            ax.set_title(_TITLES[f"{split}_{what}"])
            ax.set_xlabel("t (perturbation along the direction)")
            ax.set_ylabel(what + (" (%)" if what == "accuracy" and accuracy_percent else ""))
            if what == "loss" and logy:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small", ncol=2 if len(result.directions) > 6 else 1)
    norm = ", ".join(sorted(set(result.normalizations)))
    fig.suptitle(
        title
        or f"loss landscape along {len(result.directions)} directions "
        f"({norm} directions, BatchNorm {result.bn})"
    )
    fig.tight_layout()
    return fig


def _grid(result: Any, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = result.metric(metric)
    X, Y = np.meshgrid(np.asarray(result.xs), np.asarray(result.ys), indexing="ij")
    return X, Y, z


def _axis_labels(ax: Any, result: Any) -> None:
    ax.set_xlabel(_direction_label(result.directions[0], "x"))
    ax.set_ylabel(_direction_label(result.directions[1], "y"))


def plot_landscape_2d(
    result: Any,
    metric: str = "train_loss",
    *,
    kind: str = "both",
    ax: Any = None,
    levels: int = 20,
    log: bool = False,
    cmap: str = "viridis",
    marker: bool = True,
    colorbar: bool = True,
) -> Any:
    """Heat map and/or contours of one metric over the plane.

    Args:
        result: a :class:`~jupyter_curvature.landscape.Landscape2D`.
        metric: ``"train_loss"``, ``"test_loss"``, ``"train_accuracy"``, ...
        kind: ``"both"`` (heat map with contour lines), ``"heatmap"`` or ``"contour"``.
        ax: axes to draw into (default: a new figure).
        levels: number of contour levels.
        log: colour by ``log10`` of the metric (losses spanning decades).
        marker: mark the origin.
        colorbar: add a colour bar.

    Returns:
        the axes.
    """
    if not is_a(result, "Landscape2D"):
        raise TypeError(f"plot_landscape_2d needs a Landscape2D, got {type(result).__name__}")
    if kind not in ("both", "heatmap", "contour"):
        raise ValueError(f"kind must be 'both', 'heatmap' or 'contour', got {kind!r}")
    if ax is None:
        ax = pyplot_figure((5.6, 4.6)).add_subplot()
    X, Y, z = _grid(result, metric)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log10(np.where(z > 0, z, np.nan))
    zm = np.ma.masked_invalid(z)
    mappable = None
    if kind in ("both", "heatmap"):
        mappable = ax.pcolormesh(X, Y, zm, shading="nearest", cmap=cmap)
    if kind in ("both", "contour") and np.isfinite(z).sum() >= 4 and min(z.shape) >= 2:
        finite = z[np.isfinite(z)]
        if finite.max() > finite.min():
            cs = ax.contour(
                X,
                Y,
                zm,
                levels=levels,
                colors="white" if kind == "both" else None,
                cmap=None if kind == "both" else cmap,
                linewidths=0.8,
            )
            if kind == "contour":
                mappable = cs
            ax.clabel(cs, inline=True, fontsize=7, fmt="%.3g")
    if marker:
        ax.plot([0], [0], marker="+", color="red", ms=10, mew=2, ls="none")
    if colorbar and mappable is not None:
        ax.figure.colorbar(mappable, ax=ax, label=("log10 " if log else "") + _TITLES[metric])
    _axis_labels(ax, result)
    ax.set_title(f"{_TITLES[metric]} (BatchNorm {result.bn})")
    return ax


def plot_landscape_surface(
    result: Any,
    metric: str = "train_loss",
    *,
    ax: Any = None,
    log: bool = False,
    cmap: str = "viridis",
) -> Any:
    """A 3D surface of one metric over the plane; returns the (3D) axes."""
    if not is_a(result, "Landscape2D"):
        raise TypeError(f"plot_landscape_surface needs a Landscape2D, got {type(result).__name__}")
    if ax is None:
        ax = pyplot_figure((6.4, 5.2)).add_subplot(projection="3d")
    X, Y, z = _grid(result, metric)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log10(np.where(z > 0, z, np.nan))
    ax.plot_surface(X, Y, np.ma.masked_invalid(z), cmap=cmap, linewidth=0, antialiased=True)
    _axis_labels(ax, result)
    ax.set_zlabel(("log10 " if log else "") + _TITLES[metric])
    ax.set_title(f"{_TITLES[metric]} (BatchNorm {result.bn})")
    return ax


def plot_landscape_overview(lines: Any, grid: Any = None, metric: str = "train_loss") -> Any:
    """One ``metric`` along every direction's line (left) and over the 2D map (right).

    Args:
        lines: a :class:`~jupyter_curvature.landscape.Landscape1D` (its lines pass through
            ``lines.meta["through"]`` when an explorer made it).
        grid: a :class:`~jupyter_curvature.landscape.Landscape2D`, or ``None`` (lines only).
        metric: ``"train_loss"``, ``"test_accuracy"``, ...

    Returns:
        a plain ``matplotlib.figure.Figure`` (not registered with pyplot).
    """
    if not is_a(lines, "Landscape1D"):
        raise TypeError(f"plot_landscape_overview needs a Landscape1D, got {type(lines).__name__}")
    if grid is not None and not is_a(grid, "Landscape2D"):
        raise TypeError(f"grid must be a Landscape2D or None, got {type(grid).__name__}")
    fig, axes = figure(1, 2 if grid is not None else 1, (11 if grid is not None else 6, 4.2))
    ax = axes[0][0]
    values = lines.metric(metric)
    t = np.asarray(lines.coords)
    for i, info in enumerate(lines.directions):
        ax.plot(t, values[i], marker=".", ms=4, label=_direction_label(info, f"d{i}"))
    ax.set_title(f"{_TITLES[metric]} along each direction")
    ax.set_xlabel("t (perturbation along the direction)")
    ax.set_ylabel(_TITLES[metric])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    if grid is not None:
        plot_landscape_2d(grid, metric, ax=axes[0][1])
    return fig
