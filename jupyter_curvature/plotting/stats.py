"""The per-layer statistics figure: one bar chart per per-layer quantity.

The quantities are the per-layer rows of a statistics result: the largest eigenvalue and
the trace of each layer's diagonal curvature block (``result.layers``, a
``LayerCurvature``) and its parameter count, and each layer's weight L2 norm
(``result.norms``, a ``WeightNorms``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._figures import figure

__all__ = ["layer_quantities", "plot_stats"]


def _part(result: Any, has: str, names: tuple[str, ...]) -> Any:
    """``result`` itself if it has attribute ``has``, else its first attribute in ``names``
    that has it (a container of records: ``StatsResult``, ``NetworkStatistics``)."""
    if hasattr(result, has):
        return result
    for name in names:
        part = getattr(result, name, None)
        if part is not None and hasattr(part, has):
            return part
    return None


def layer_quantities(result: Any) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per-layer quantities available in ``result``: ``{label: (layer names, values)}``.

    From a ``LayerCurvature`` (``result`` or ``result.layers``; the ``(all)`` row left
    out): ``λ max``, ``trace``, ``parameters``; from a ``WeightNorms`` (``result``,
    ``result.norms`` or ``result.weights``): ``weight L2`` (NaN where a layer has no weight).
    """
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    layers = _part(result, "rows", ("layers",))
    if layers is not None:
        rows = [r for r in layers.rows if r.layer != "(all)"]
        names = [r.layer for r in rows]
        out["λ max"] = (names, np.array([r.lambda_max for r in rows], dtype=float))
        out["trace"] = (names, np.array([r.trace for r in rows], dtype=float))
        out["parameters"] = (names, np.array([r.num_params for r in rows], dtype=float))
    norms = _part(result, "linf", ("norms", "weights"))
    if norms is not None and norms.layers:
        names = [r.layer for r in norms.layers]
        vals = [np.nan if r.weight_l2 is None else r.weight_l2 for r in norms.layers]
        out["weight L2"] = (names, np.array(vals, dtype=float))
    return out


def plot_stats(result: Any, *, figsize: tuple[float, float] = (10, 3.5)) -> Any:
    """Bar charts of every per-layer quantity of a statistics result; returns the figure.

    Args:
        result: a ``LayerCurvature``, a ``WeightNorms`` or a result holding them (see
            :func:`layer_quantities`); others give a figure that says so.
        figsize: figure size (a new ``Figure``, no pyplot state).
    """
    quantities = layer_quantities(result)
    fig, ax = figure(1, max(len(quantities), 1), figsize)
    if not quantities:
        ax[0, 0].text(0.5, 0.5, "no per-layer statistics", ha="center", va="center")
        return fig
    for a, (label, (names, values)) in zip(ax[0], quantities.items()):
        a.bar(range(len(names)), values, color="#1f77b4")
        a.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize="small")
        a.set_xlabel("layer")
        a.set_ylabel(label)
        a.set_title(label)
    return fig
