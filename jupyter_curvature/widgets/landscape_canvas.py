"""The 2D loss-landscape canvas: a custom anywidget (heat map, contours, colour bar, a draggable point).

The front end is ``jupyter_curvature/static/landscape_canvas.js``, an ES module shipped
inside the package and loaded by anywidget's prebuilt extension: no npm, no build step, no
CDN. Dragging the point sends ``point = [x, y]`` to the kernel (at most one message per
animation frame); a callback registered with :meth:`LandscapeCanvas.on_move` computes the
loss there and answers with :meth:`LandscapeCanvas.show_readout`. The grid travels as one
binary buffer of float64 (``NaN`` = not computed yet, drawn transparent).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets

_STATIC = Path(__file__).resolve().parent.parent / "static"

COLORMAPS = ("viridis", "magma", "greys")


def _range_trait(default: Sequence[float]) -> traitlets.List:
    return traitlets.List(traitlets.Float(), default_value=list(default), minlen=2, maxlen=2)


class LandscapeCanvas(anywidget.AnyWidget):
    """A 2D landscape (row-major ``z[iy, ix]`` over ``x_range`` x ``y_range``) with a draggable point.

    Traits synced with the browser:
        z: the grid as float64 bytes (use :meth:`set_grid`); ``nx``, ``ny`` its size.
        x_range, y_range: ``[min, max]`` of the two coordinates.
        point: ``[x, y]``, the draggable point (the browser writes it; so may Python).
        readout, readout_point: the text the kernel returns for a point, and that point
            (the front end shows an interpolated "≈" value until they match).
        log_scale, colormap, levels: colour scale, map (``viridis``/``magma``/``greys``) and
            number of contour lines.
        xlabel, ylabel, title, status, width, height: decoration.

    Example:
        >>> c = LandscapeCanvas()
        >>> c.set_grid(np.arange(6.0).reshape(2, 3), x_range=(-1, 1), y_range=(0, 1))
        >>> (c.nx, c.ny, len(c.z))
        (3, 2, 48)
    """

    _esm = _STATIC / "landscape_canvas.js"
    _css = _STATIC / "landscape_canvas.css"

    z = traitlets.Bytes(b"").tag(sync=True)
    nx = traitlets.Int(0).tag(sync=True)
    ny = traitlets.Int(0).tag(sync=True)
    x_range = _range_trait((-1.0, 1.0)).tag(sync=True)
    y_range = _range_trait((-1.0, 1.0)).tag(sync=True)
    point = _range_trait((0.0, 0.0)).tag(sync=True)
    readout = traitlets.Unicode("").tag(sync=True)
    readout_point = traitlets.List(traitlets.Float(), default_value=[]).tag(sync=True)
    log_scale = traitlets.Bool(False).tag(sync=True)
    colormap = traitlets.Enum(COLORMAPS, default_value="viridis").tag(sync=True)
    levels = traitlets.Int(8, min=0, max=50).tag(sync=True)
    xlabel = traitlets.Unicode("direction 1").tag(sync=True)
    ylabel = traitlets.Unicode("direction 2").tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    status = traitlets.Unicode("").tag(sync=True)
    width = traitlets.Int(420, min=120).tag(sync=True)
    height = traitlets.Int(360, min=120).tag(sync=True)

    @traitlets.validate("x_range", "y_range")
    def _check_range(self, proposal: Any) -> list[float]:
        lo, hi = proposal["value"]
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise traitlets.TraitError(
                f"{proposal['trait'].name} must be [min, max] with min < max, got {[lo, hi]}"
            )
        return [float(lo), float(hi)]

    @traitlets.validate("point")
    def _check_point(self, proposal: Any) -> list[float]:
        x, y = proposal["value"]
        if not (math.isfinite(x) and math.isfinite(y)):
            raise traitlets.TraitError(f"point must be finite, got {[x, y]}")
        return [float(x), float(y)]

    def set_grid(
        self,
        z: np.ndarray,
        *,
        x_range: Sequence[float] | None = None,
        y_range: Sequence[float] | None = None,
    ) -> None:
        """Show the grid ``z`` (shape ``(ny, nx)``, rows along y; NaN = not computed yet)."""
        arr = np.asarray(z, dtype="<f8")
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(f"z must be a 2-D array (ny, nx), got shape {arr.shape}")
        with self.hold_sync():
            if x_range is not None:
                self.x_range = [float(v) for v in x_range]
            if y_range is not None:
                self.y_range = [float(v) for v in y_range]
            self.ny, self.nx = (int(s) for s in arr.shape)
            self.z = np.ascontiguousarray(arr).tobytes()

    def grid(self) -> np.ndarray:
        """The grid as a ``(ny, nx)`` float64 array (a copy)."""
        if not self.z:
            return np.zeros((0, 0))
        return np.frombuffer(self.z, dtype="<f8").reshape(self.ny, self.nx).copy()

    def on_move(self, callback: Callable[[float, float], Any]) -> Callable[[dict], None]:
        """Call ``callback(x, y)`` whenever the point moves; returns the observer (to unobserve)."""

        def handler(change: dict) -> None:
            x, y = change["new"]
            callback(x, y)

        self.observe(handler, names=["point"])
        return handler

    def show_readout(self, text: str, point: Sequence[float]) -> None:
        """Show ``text`` as the kernel's answer for ``point`` (one message)."""
        with self.hold_sync():
            self.readout = text
            self.readout_point = [float(v) for v in point]
