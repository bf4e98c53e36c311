"""Where new figures come from: the object API, or pyplot where a function always used it.

Figures made with :func:`figure` are plain ``matplotlib.figure.Figure`` objects: no pyplot
state is left behind, so they are safe in scripts, threads and tests whatever the backend.
:func:`pyplot_figure` is kept for the functions that have always registered their figure
with pyplot (the landscape figures and the CLI's spectrum figure), so that a notebook's
inline backend keeps showing them without ``display``. matplotlib is imported on call.
"""

from __future__ import annotations

from typing import Any


def figure(nrows: int, ncols: int, size: tuple[float, float]) -> tuple[Any, Any]:
    """A new ``Figure`` (constrained layout) and its ``(nrows, ncols)`` array of axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def pyplot_figure(size: tuple[float, float]) -> Any:
    """A new figure registered with pyplot (shown by a notebook's inline backend)."""
    import matplotlib.pyplot as plt

    return plt.figure(figsize=size)


def is_a(result: Any, class_name: str) -> bool:
    """``isinstance`` by class name, so that plotting need not import the result classes."""
    return any(c.__name__ == class_name for c in type(result).__mro__)


def curvature_label(kind: str) -> str:
    """The curvature's name as a title writes it: ``"Hessian"`` or ``"GGN"`` (never lower case)."""
    return "GGN" if str(kind).lower() == "ggn" else "Hessian"


def format_count(value: float, stderr: float | None = None) -> str:
    """An estimated count: an integer with its standard error, ``"≈ 1170 ± 40"``.

    A count estimated from quadrature weights (``n`` times a mass) is not an integer; it is
    shown rounded, with its standard error rounded to two significant digits (or alone,
    ``"≈ 1170"``, when there is none: a single probe).
    """
    if value != value:  # NaN
        return "n/a"
    if stderr is None or not stderr == stderr or stderr <= 0:
        return f"≈ {round(value):d}" if stderr is None or stderr != stderr else f"{round(value):d}"
    digits = 2 - len(str(int(stderr))) if stderr >= 1 else 0
    se = round(stderr, digits) if digits < 0 else round(stderr)
    return f"≈ {round(value):d} ± {int(se):d}"
