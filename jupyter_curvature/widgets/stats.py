"""``StatsPanel``: the advanced statistics as readable tables and a per-layer bar chart.

It shows the records of :func:`jupyter_curvature.tasks.statistics` (evaluation, gradient
statistics, curvature statistics, weight norms, per-layer curvature) exactly as the engine
prints them, one tab each, and a bar chart of one per-layer quantity (largest eigenvalue,
trace, parameter count, weight L2 norm) chosen from a dropdown.
"""

from __future__ import annotations

import html
from typing import Any

import bqplot as bq
import ipywidgets as W
import numpy as np

from ..plotting import layer_quantities, plot_stats
from ._base import Panel

__all__ = ["StatsPanel", "layer_quantities"]


class StatsPanel(Panel):
    """Tables of statistics records and a per-layer view.

    Args:
        result: a :class:`~jupyter_curvature.tasks.StatsResult` (or any object with some of the
            attributes ``evaluation``, ``gradients``, ``curvature``, ``norms``, ``layers``).
        title: heading.

    Attributes: ``tabs`` (one ``HTML`` per record), ``quantity`` (``Dropdown``), ``bars``
    (bqplot ``Bars``), ``figure``.
    """

    TAB_NAMES = {
        "evaluation": "Evaluation",
        "gradients": "Gradients",
        "curvature": "Curvature",
        "norms": "Weight norms",
        "layers": "Per layer",
    }

    static_on_display = True  # finished when built: carries its PNG from the first display

    def __init__(self, result: Any, *, title: str = "Statistics") -> None:
        super().__init__()
        self.result = result
        self.heading = W.HTML(f"<b>{html.escape(title)}</b>")
        pages, names = [], []
        for key, label in self.TAB_NAMES.items():
            rec = getattr(result, key, None)
            if rec is None:
                continue
            pages.append(
                W.HTML(f"<pre style='font-size:12px;line-height:1.3'>{html.escape(str(rec))}</pre>")
            )
            names.append(label)
        self.tabs = W.Tab(children=pages, titles=names)
        self.quantities = layer_quantities(result)
        self.xs = bq.OrdinalScale()
        self.ys = bq.LinearScale()
        self.bars = bq.Bars(
            x=np.zeros(0),
            y=np.zeros(0),
            scales={"x": self.xs, "y": self.ys},
            colors=["#1f77b4"],
            padding=0.2,
        )
        self.y_axis = bq.Axis(scale=self.ys, side="left", label="", tick_format=".3g")
        self.figure = bq.Figure(
            marks=[self.bars],
            axes=[bq.Axis(scale=self.xs, label="layer"), self.y_axis],
            title="Per-layer view",
            fig_margin={"top": 40, "bottom": 60, "left": 70, "right": 20},
            layout=W.Layout(width="100%", height="300px"),
        )
        options = list(self.quantities)
        self.quantity = W.Dropdown(
            options=options, value=options[0] if options else None, description="per layer"
        )
        self.quantity.observe(self.callback(self._on_quantity), names=["value"])
        children: list[W.Widget] = [self.heading, self.tabs]
        if options:
            children += [self.quantity, self.figure]
            self._draw(options[0])
        else:
            self._own(self.quantity)
            self._own(self.figure)
        self._set_root(children, width="100%")

    def _draw(self, label: str) -> None:
        names, values = self.quantities[label]
        with self.bars.hold_sync():
            self.bars.x = np.array(names, dtype=object)
            self.bars.y = values
            # the axis holds every bar, the tallest included, and 0 (bqplot's automatic range
            # ends at the largest value, so the top of the tallest bar was clipped)
            finite = values[np.isfinite(values)] if len(values) else values
            top = float(finite.max()) if len(finite) else 1.0
            bottom = float(finite.min()) if len(finite) else 0.0
            span = max(top, 0.0) - min(bottom, 0.0) or 1.0
            self.ys.min = min(bottom, 0.0) - (0.05 * span if bottom < 0 else 0.0)
            self.ys.max = max(top, 0.0) + 0.08 * span
        self.y_axis.label = label
        self.figure.title = f"{label} per layer"

    def _on_quantity(self, change: dict) -> None:
        self._draw(change["new"])

    def to_matplotlib(self, **kw: Any) -> Any:
        """The per-layer quantities as a matplotlib figure."""
        return plot_stats(self.result, **kw)
