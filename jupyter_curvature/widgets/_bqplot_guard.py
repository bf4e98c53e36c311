"""A hidden anywidget that guards bqplot's axis views against a front-end race.

bqplot's ``AxisView`` hears its scale's ``domain_changed`` before it has drawn its axis; a
data update that lands in that window (a live panel pushing while its figures render) throws
``Cannot read properties of undefined (reading 'scale')`` in the browser, ipywidgets logs it
as "Error setting state", and the rest of that update is dropped. The module
``static/bqplot_guard.js`` patches the axis view classes, once per page, to skip the redraw
until the axis exists (its first draw reads the latest domain). ``%load_ext
jupyter_curvature`` shows one (so the guard is in place before any panel of a later cell
renders), and every panel's root carries one as its first child (for panels made from
Python). Its JavaScript is unit-tested in ``js/tests/bqplot_guard.test.mjs``.
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import bqplot as bq
import ipywidgets as W
import traitlets

_STATIC = Path(__file__).resolve().parent.parent / "static"
_AXIS_TRAITS = bq.Axis.class_traits()


class BqplotAxisGuard(anywidget.AnyWidget):
    """Invisible; its front end patches bqplot's ``Axis``/``ColorAxis`` views (see module doc)."""

    _esm = _STATIC / "bqplot_guard.js"
    bqplot_module = traitlets.Unicode(_AXIS_TRAITS["_view_module"].default_value).tag(sync=True)
    bqplot_version = traitlets.Unicode(_AXIS_TRAITS["_view_module_version"].default_value).tag(
        sync=True
    )
    #: the view classes to guard, as bqplot's widget models name them
    view_names = traitlets.List(
        traitlets.Unicode(),
        [cls.class_traits()["_view_name"].default_value for cls in (bq.Axis, bq.ColorAxis)],
    ).tag(sync=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(layout=W.Layout(display="none"), **kwargs)

    def __repr__(self) -> str:
        return ""  # invisible where widgets do not render too (a saved notebook's text)
