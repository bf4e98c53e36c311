"""``%curv_stats``: the advanced statistics (loss, gradients, curvature, norms, per layer) as
tables and a per-layer view.

``--include`` picks the kinds (``tasks.STATS_KINDS``); ``--layers`` names the layers of the
per-layer view.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from .. import tasks
from .arguments import (
    STATS_KEYWORDS,
    call,
    check_out,
    deprecated,
    keywords,
    loss_flags,
    parse_line,
    positive,
    samples_flags,
    seed_flag,
)

__all__ = ["curv_stats"]


@magic_arguments()
@argument("--model", required=True, help="model variable or registry name")
@argument("--data", required=True, help="data variable or built-in name (digits, digits:test)")
@argument(
    "--include",
    default=",".join(tasks.STATS_KINDS),
    help=f"comma-separated subset of {','.join(tasks.STATS_KINDS)}",
)
@argument(
    "--curvature", choices=["hessian", "ggn"], default="hessian",
    help="curvature statistics of hessian (default) or ggn",
)  # fmt: skip
@deprecated("--ggn", "--curvature ggn", action="store_true")
@argument(
    "--num-probes",
    type=positive(int),
    default=8,
    help="random probes of the curvature statistics (8)",
)
@deprecated("--probes", "--num-probes", type=positive(int))
@argument(
    "--batch-size",
    type=positive(int),
    default=None,
    help="mini-batch size of the gradient/curvature statistics (128, or half the samples "
    "of data with at most 128: the statistics need two batches)",
)
@argument(
    "--layers",
    default=None,
    help="comma-separated layers (module names or patterns) for the per-layer view",
)
@samples_flags
@loss_flags
@seed_flag
@argument("--device", default=None, help="cpu | cuda | cuda:N")
@argument("--out", default=None, help="store the StatsResult in this variable")
def curv_stats(magics: Any, line: str) -> None:
    """Compute and show the advanced statistics (loss, gradients, curvature, norms, per layer)."""
    name = "curv_stats"
    args = parse_line(magics.curv_stats, line, name)
    check_out(name, args.out)
    kwargs = keywords(args, name, STATS_KEYWORDS)
    include = [k.strip() for k in args.include.split(",") if k.strip()]
    bad = [k for k in include if k not in tasks.STATS_KINDS]
    if bad or not include:
        raise UsageError(
            f"%{name}: --include {args.include!r}: choose from {','.join(tasks.STATS_KINDS)}"
        )
    layers = [s.strip() for s in args.layers.split(",")] if args.layers else None
    result, progress = call(
        name, magics._run_task, name, f"Statistics of {args.model}", tasks.statistics, line,
        include=include, layers=layers, namespace=magics.ns, **kwargs,
    )  # fmt: skip
    if result is None:
        return
    magics._store(args.out, result)
    magics.last_result = result
    if progress is not None:
        from ..widgets.stats import StatsPanel

        progress.finish(StatsPanel(result, title=f"Statistics of {args.model}"))
        magics.last_panel = progress.result_panel
        magics._publish_static(progress)
    else:
        print(result)
