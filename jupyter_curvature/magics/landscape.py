"""``%curv_landscape``: the loss-landscape explorer
(:class:`~jupyter_curvature.widgets.landscape.LandscapeExplorer`) in a line.

Its old flags (``--range``, ``--points``, ``--ggn``, ``--loss``) are parsed as options of
their own and renamed by :func:`_renamed` with a ``FutureWarning``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from .. import tasks
from .arguments import call, check_out, first_line, parse_line, seed_flag, seeded_model

__all__ = ["curv_landscape"]


@magic_arguments()
@argument("--model", required=True, help="model variable (dotted paths work) or registry name")
@argument("--data", required=True, help="training data variable or built-in name (digits)")
@argument("--test-data", default=None, help="test data (default: the test split of a built-in set)")
@argument(
    "--directions",
    default="top:2",
    help="top:K | bottom:K | index:i,j | random:K (default top:2)",
)
@argument("--span", type=float, default=None, help="the sliders span [-SPAN, SPAN] (1)")
@argument("--range", type=float, default=None, help="deprecated alias of --span")
@argument("--num-points", type=int, default=None, help="grid points per direction (21)")
@argument("--points", type=int, default=None, help="deprecated alias of --num-points")
@argument(
    "--curvature",
    choices=("hessian", "ggn"),
    default=None,
    help="the matrix whose eigenvectors are the directions (hessian)",
)
@argument("--ggn", action="store_true", help="deprecated alias of --curvature ggn")
@argument("--eigen", default=None, help="eigenpairs variable to take directions from")
@argument("--loss-fn", default=None, help="loss variable or cross_entropy | mse | nll")
@argument("--loss", default=None, help="deprecated alias of --loss-fn")
@argument(
    "--params",
    default=None,
    help="parameters: a module prefix (classifier), a glob (features.0.*) or re:<regex>",
)
@seed_flag
@argument(
    "--preview",
    default="auto",
    help="live 1D lines on a seeded subsample: auto, N samples, or none (always exact)",
)
@argument("--no-grid", dest="grid", action="store_false", help="do not compute the 2D map now")
@argument("--no-canvas", dest="canvas", action="store_false", help="leave out the draggable canvas")
@argument("--out", default=None, help="store the explorer (the panel) in this variable")
def curv_landscape(magics: Any, line: str) -> None:
    """The loss-landscape explorer: sliders along curvature eigen-directions.

    ``%curv_landscape --model NAME --data NAME [--directions SPEC] [--span R]
    [--num-points N] [--curvature hessian|ggn] [--eigen NAME] [--out NAME] ...`` shows a
    :class:`~jupyter_curvature.widgets.landscape.LandscapeExplorer` and fills its 2D map
    in (coarse first). ``--range``, ``--points``, ``--ggn`` and ``--loss`` are deprecated
    aliases of ``--span``, ``--num-points``, ``--curvature ggn`` and ``--loss-fn``.
    """
    name = "curv_landscape"
    args = parse_line(magics.curv_landscape, line, name)
    span, num_points, curvature, loss = _renamed(args, name)
    check_out(name, args.out)
    if num_points < 2:
        raise UsageError(f"%{name}: --num-points must be at least 2, got {num_points}")
    if not (math.isfinite(span) and span > 0):
        raise UsageError(f"%{name}: --span must be a positive number, got {span}")
    preview = _preview(args.preview, name)
    eigen = None if args.eigen is None else _eigen(args.eigen, magics.ns, name)
    model = seeded_model(args.model, magics.ns, args.seed, name)
    if not magics.use_widgets:
        return _text(magics, args, name, model, eigen, span, num_points, curvature, loss)
    LandscapeExplorer = _explorer_class(name)
    data = call(name, tasks.resolve_data, args.data, magics.ns)
    test_data = call(name, tasks.resolve_test_data, args.test_data, args.data, magics.ns)
    loss_fn = call(name, tasks.resolve_loss, loss, magics.ns)
    previous = magics.ns.get(args.out) if args.out else None
    if isinstance(previous, LandscapeExplorer):
        previous.close()  # re-running the cell replaces its panel
    try:
        explorer = LandscapeExplorer(
            model,
            data,
            loss_fn=loss_fn,
            test_data=test_data,
            directions=args.directions,
            eigen=eigen,
            curvature=curvature,
            params=args.params,
            span=span,
            num_points=num_points,
            seed=args.seed,
            canvas=args.canvas,
            preview=preview,
        )
    except (ValueError, TypeError) as exc:
        raise UsageError(f"%{name}: {first_line(exc)}") from None
    magics._store(args.out, explorer)
    magics._show(explorer, f"landscape {line}")  # re-running the cell closes this panel
    if args.grid and len(explorer.directions) > 1:
        explorer.compute_grid()
    magics._publish_static(explorer)


def _text(
    magics: Any, args: Any, name: str, model: Any, eigen: Any, span: float, num_points: int,
    curvature: str, loss: Any,
) -> None:  # fmt: skip
    """Without widgets (a terminal, ``%config CurvMagics.widgets = "off"``): the landscape
    task's lines (and, unless ``--no-grid``, the plane of the first two directions) as text;
    ``--out`` stores the :class:`~jupyter_curvature.tasks.landscape.LandscapeTaskResult`."""
    result = call(
        name, tasks.landscape, model, args.data, test_data=args.test_data, loss_fn=loss,
        directions=args.directions, span=span, num_points=num_points, plane=args.grid,
        eigen=eigen, curvature=curvature, params=args.params, seed=args.seed,
        namespace=magics.ns,
    )  # fmt: skip
    magics._store(args.out, result)
    magics.last_result = result
    print(result.describe())


def _renamed(args: Any, name: str) -> tuple[Any, Any, Any, Any]:
    """``(span, num_points, curvature, loss)``: each new flag, its deprecated alias (with a
    FutureWarning), or its default; both at once is a UsageError."""

    def alias(new: Any, old: Any, new_flag: str, old_flag: str, default: Any) -> Any:
        if old is None or old is False:
            return default if new is None else new
        warnings.warn(
            f"%{name}: {old_flag} is deprecated; use {new_flag} (docs/vocabulary.md)",
            FutureWarning,
            stacklevel=2,
        )
        if new is not None:
            raise UsageError(f"%{name}: give {new_flag} or {old_flag}, not both")
        return old

    span = alias(args.span, args.range, "--span", "--range", 1.0)
    num_points = alias(args.num_points, args.points, "--num-points", "--points", 21)
    curvature = alias(
        args.curvature, "ggn" if args.ggn else None, "--curvature", "--ggn", "hessian"
    )
    loss = alias(args.loss_fn, args.loss, "--loss-fn", "--loss", None)
    return span, num_points, curvature, loss


def _preview(text: str, name: str) -> Any:
    """``--preview``: ``"auto"``, ``None`` (none, off, exact: always exact) or a sample count."""
    preview: Any = text.strip().lower()
    if preview in ("none", "off", "exact"):
        return None
    if preview == "auto":
        return preview
    try:
        return int(preview)
    except ValueError:
        raise UsageError(
            f"%{name}: --preview must be auto, none or a number of samples, got {text!r}"
        ) from None


def _explorer_class(name: str) -> Any:
    """The explorer class; a UsageError where this installation lacks its module."""
    try:
        from ..widgets.landscape import LandscapeExplorer
    except ModuleNotFoundError as exc:
        if exc.name != "jupyter_curvature.widgets.landscape":
            raise
        raise UsageError(
            f"%{name}: the landscape explorer is not available in this installation "
            "(jupyter_curvature.widgets.landscape is missing)"
        ) from None
    return LandscapeExplorer


def _eigen(variable: str, ns: dict[str, Any], name: str) -> Any:
    """The eigenpairs of ``--eigen``: a notebook variable holding an eigenpairs result or an
    ``(eigenvalues, eigenvectors)`` pair."""
    eigen = tasks.lookup(variable, ns)
    if eigen is tasks.MISSING:
        raise UsageError(f"%{name}: --eigen {variable!r} is not a variable of the notebook")
    if not (hasattr(eigen, "eigenvalues") or (isinstance(eigen, tuple) and len(eigen) == 2)):
        raise UsageError(
            f"%{name}: --eigen {variable!r} is a {type(eigen).__name__}, not an "
            "eigenpairs result (%curv_spectrum --top K --out-eigen NAME makes one)"
        )
    return eigen
