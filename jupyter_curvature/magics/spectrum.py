"""``%curv_spectrum``: the Hessian/GGN spectral density with its band, Ritz values, top
eigenvalues and statistics, with broadening and log/linear controls.

Without widgets it prints the density's statistics, the certified eigenpairs, the Lanczos
basis used and, with ``--blocks``, each block's table.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display

from .. import tasks
from .arguments import (
    BASIS_KEYWORDS,
    SPECTRUM_KEYWORDS,
    basis_flags,
    call,
    check_out,
    curvature_flags,
    deprecated,
    keywords,
    loss_flags,
    parse_line,
    positive,
    samples_flags,
    seed_flag,
    usage_errors,
)

__all__ = ["curv_spectrum"]


@magic_arguments()
@argument("--model", required=True, help="model variable or registry name")
@argument("--data", required=True, help="data variable or built-in name (digits, digits:test)")
@curvature_flags
@argument("--num-iters", type=positive(int), default=80, help="Lanczos steps per probe (80)")
@deprecated("--iters", "--num-iters", type=positive(int))
@argument("--num-probes", type=positive(int), default=4, help="SLQ probes (4)")
@deprecated("--probes", "--num-probes", type=positive(int))
@argument(
    "--top-k",
    type=int,
    default=0,
    help="also compute the K largest eigenpairs, certified by residuals",
)
@deprecated("--top", "--top-k", type=int)
@argument(
    "--tol",
    type=positive(float),
    default=1e-3,
    help="residual tolerance of the eigenpairs, relative to the largest |eigenvalue| (1e-3)",
)
@argument(
    "--params",
    default=None,
    help="parameters: a module prefix (classifier), a glob (features.0.*) or re:<regex>",
)
@argument(
    "--blocks", nargs="?", const="auto", default=None,
    help="also each block's top eigenvalue, trace and density (auto, or module names a,b)",
)  # fmt: skip
@argument(
    "--batchnorm", choices=["eval", "train"], default="eval",
    help="BatchNorm mode during the products (eval)",
)  # fmt: skip
@deprecated("--bn", "--batchnorm", choices=["eval", "train"])
@basis_flags
@samples_flags
@argument("--batch-size", type=positive(int), default=500, help="batch size of built-in data (500)")
@loss_flags
@argument(
    "--sigma",
    type=positive(float),
    default=None,
    help="initial broadening (default: Papyan's)",
)
@argument("--log", action="store_true", help="start with a logarithmic density axis")
@seed_flag
@argument("--device", default=None, help="cpu | cuda | cuda:N")
@argument("--out", default=None, help="store the SpectralDensity in this variable")
@argument("--out-eigen", default=None, help="store the EigenpairsResult (--top-k) in this variable")
def curv_spectrum(magics: Any, line: str) -> None:
    """Compute and show the Hessian (or GGN) spectral density of a model on some data."""
    name = "curv_spectrum"
    args = parse_line(magics.curv_spectrum, line, name)
    check_out(name, args.out, args.out_eigen)
    kwargs = keywords(args, name, SPECTRUM_KEYWORDS)
    if kwargs["top_k"] < 0:
        raise UsageError("%curv_spectrum: --top-k must be >= 0")
    if args.out_eigen is not None and not kwargs["top_k"]:
        raise UsageError(
            f"%{name}: --out-eigen {args.out_eigen} needs --top-k K (the eigenpairs to store)"
        )
    basis = {k: kwargs[k] for k in BASIS_KEYWORDS}
    call(name, tasks.basis_options, **basis, top_k=kwargs["top_k"], blocks=kwargs["blocks"])
    kind = "GGN" if kwargs.get("curvature") == "ggn" else "Hessian"
    with usage_errors(name):
        result, progress = magics._run_task(
            name, f"{kind} spectrum of {args.model}", tasks.spectrum, line,
            namespace=magics.ns, **kwargs,
        )  # fmt: skip
    if result is None:
        return
    magics._store(args.out, result.density)
    if result.eigen is not None:  # cancelled before the eigenpairs: the variable keeps its value
        magics._store(args.out_eigen, result.eigen)
    elif args.out_eigen is not None:
        print(f"%{name}: no eigenpairs were computed; {args.out_eigen} is unchanged")
    magics.last_result = result
    if progress is not None:
        from ..widgets.spectrum import SpectrumPanel

        progress.finish(SpectrumPanel(result, sigma=args.sigma, log=args.log))
        magics.last_panel = progress.result_panel
        magics._publish_static(progress)
        if result.blocks is not None:  # the per-block bars and densities, static
            display(result.blocks.plot())
    else:
        _print(result)


def _print(result: Any) -> None:
    """The spectrum as text (no widgets)."""
    print(f"{'GGN' if result.curvature == 'ggn' else 'Hessian'} spectrum, n = {result.num_params}")
    print(result.density.stats)
    if result.eigen is not None:
        print(result.eigen.describe(basis=False))
    print(result.basis_summary())  # one line for both runs' Lanczos vectors
    if result.blocks is not None:
        print(result.blocks.table())
