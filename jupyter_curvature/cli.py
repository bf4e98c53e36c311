"""``jupyter-curvature`` (also ``python -m jupyter_curvature``): train, spectrum, stats, landscape, demo.

Every subcommand writes its results (JSON, ``.npz``) and figures (PNG) to ``--out``. Models and
datasets are chosen by name; ``digits`` (bundled with scikit-learn) is the offline default.
Checkpoints are read with ``torch.load(weights_only=True)`` (a pickle payload is refused, never
run) and every file is written atomically. A bad checkpoint or ``--out``, or a full disk, is one
line on stderr and exit status 2. Under ``torchrun`` every rank computes its shard and only rank
0 writes; ``train`` runs the Trainer under ``DistributedDataParallel`` (``--batch-size`` is the
global batch, split across the ranks).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from ._version import __version__


def _deprecated(parser: argparse.ArgumentParser, old: str, new: str, **kwargs: Any) -> None:
    """An old flag, parsed under its old name (absent unless given) and renamed with a
    warning by :func:`jupyter_curvature.core.vocabulary.task_kwargs`."""
    parser.add_argument(
        old, dest=old.lstrip("-").replace("-", "_"), default=argparse.SUPPRESS,
        help=f"deprecated: use {new}", **kwargs,
    )  # fmt: skip


def _common(parser: argparse.ArgumentParser, *, model: str = "small_cnn") -> None:
    parser.add_argument("--model", default=model, help="model name (see `jupyter-curvature list`)")
    parser.add_argument(
        "--data", default="digits", help="dataset name (default: the built-in digits)"
    )
    parser.add_argument("--data-root", default=None, help="folder holding the dataset files")
    parser.add_argument(
        "--download", action="store_true", help="download a missing torchvision dataset"
    )
    parser.add_argument("--checkpoint", default=None, help="weights to load (a .pt from `train`)")
    parser.add_argument(
        "--batch-size", type=int, default=128, help="mini-batch size (default: %(default)s)"
    )
    parser.add_argument(
        "--num-samples", type=int, default=None, help="use a seeded subset of the training split"
    )
    _deprecated(parser, "--subsample", "--num-samples", type=int)
    parser.add_argument("--loss-fn", default=None, help="cross_entropy (default), mse or nll")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float64"],
        help="dtype of the model and the products (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of everything random")
    parser.add_argument("--out", type=Path, default=None, help="output folder")


def _curvature(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--curvature", choices=["hessian", "ggn"], default="hessian", help=help)
    _deprecated(parser, "--ggn", "--curvature ggn", action="store_true")


def _basis_flags(parser: argparse.ArgumentParser) -> None:
    """How the Lanczos vectors are held (docs/scale.md); the magics have the same flags."""
    from .core.sizes import size_argument  # no torch: the parser stays quick to build

    parser.add_argument(
        "--memory-budget", type=size_argument, default=None, metavar="SIZE",
        help="memory the Lanczos vectors of each run may take on the model's device: bytes "
        "(8e9) or a size (8GB, 512MiB); picks the most accurate basis that fits (float64, "
        "float32 with float64 sums, pinned CPU memory for a GPU model) or fails before any "
        "product, listing each mode's bytes (default: the memory free now; float32 with a "
        "warning when float64 does not fit)",
    )  # fmt: skip
    parser.add_argument(
        "--basis-dtype", choices=("float64", "float32"), default=None,  # tasks.BASIS_DTYPES
        help="dtype of the Lanczos vectors (default: float64, or what --memory-budget allows)",
    )  # fmt: skip
    parser.add_argument(
        "--basis-device", default=None, metavar="DEVICE",
        help="where the Lanczos vectors live: cpu for a GPU model (default: the model's "
        "device, or what --memory-budget allows)",
    )  # fmt: skip
    parser.add_argument(
        "--reorthogonalize", choices=("full", "none"), default="full",
        help="full (default): a stored, reorthogonalised basis; none: the density only, with "
        "no stored basis (memory independent of --num-iters; needs --top-k 0, no --blocks)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jupyter-curvature",
        description="Curvature of neural networks: Hessian/GGN spectra, statistics, landscapes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="train a small CNN on the built-in digits and report its curvature"
    )
    demo.add_argument(
        "--out", type=Path, default=Path("curvature-demo"), help="output folder (%(default)s)"
    )
    demo.add_argument("--epochs", type=int, default=8, help="training epochs (%(default)s)")
    demo.add_argument("--quick", action="store_true", help="a smaller, faster run")
    demo.add_argument(
        "--task",
        choices=("digits", "text"),
        default="digits",
        help="digits: a small CNN on the built-in digits; text: a small GPT on the standard "
        "library's sources, per block (needs the [hf] extra) (%(default)s)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of everything random")

    train = sub.add_parser("train", help="train a network and save checkpoints and its history")
    _common(train)
    train.add_argument("--optimizer", default="sgd", help="sgd, adam, kfac or swats")
    train.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: sgd and kfac 0.05, adam and swats 1e-3)",
    )
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (%(default)s)")
    train.add_argument(
        "--weight-decay", type=float, default=0.0, help="L2 weight decay (%(default)s)"
    )
    train.add_argument("--epochs", type=int, default=10, help="training epochs (%(default)s)")
    train.add_argument("--schedule", default="linear", help="linear (the original's) or constant")
    train.add_argument(
        "--spectrum-every", type=int, default=0, help="steps between live spectra (0: off)"
    )
    train.add_argument(
        "--max-overhead",
        type=float,
        default=None,
        help="skip a due spectrum when spectra would exceed this share of the training time "
        "(default: compute every one)",
    )
    train.add_argument("--resume", default=None, help="checkpoint to resume from")
    train.add_argument(
        "--tensorboard",
        default=None,
        metavar="DIR",
        help="write TensorBoard event files (metrics and curvature checks) to DIR",
    )

    spectrum = sub.add_parser("spectrum", help="Hessian or GGN spectral density and top eigenpairs")
    _common(spectrum)
    spectrum.add_argument(
        "--progress", action="store_true",
        help="tqdm progress bars on stderr even when it is not a terminal (default: on a terminal)",
    )  # fmt: skip
    _curvature(spectrum, "the curvature matrix: hessian (default) or ggn (Gauss-Newton)")
    spectrum.add_argument(
        "--num-iters", type=int, default=80, help="Lanczos steps of the density (%(default)s)"
    )
    _deprecated(spectrum, "--iters", "--num-iters", type=int)
    spectrum.add_argument(
        "--num-probes",
        type=int,
        default=4,
        help="random probe vectors of the density (%(default)s)",
    )
    _deprecated(spectrum, "--probes", "--num-probes", type=int)
    spectrum.add_argument(
        "--top-k", type=int, default=5, help="certified largest eigenpairs (%(default)s)"
    )
    _deprecated(spectrum, "--top", "--top-k", type=int)
    spectrum.add_argument(
        "--tol",
        type=float,
        default=1e-3,
        help="residual tolerance of the eigenpairs, relative to the largest |eigenvalue| "
        "(%(default)s)",
    )
    spectrum.add_argument(
        "--params", default=None, help="only these parameters (glob or module name)"
    )
    spectrum.add_argument(
        "--blocks", nargs="?", const="auto", default=None, metavar="NAMES",
        help="also each block's top eigenvalue, trace and density: auto (embeddings, attention, "
        "MLP, norms, head; CNN stages) or comma-separated module names (their Lanczos vectors "
        "are checked against --memory-budget too)",
    )  # fmt: skip
    _basis_flags(spectrum)

    stats = sub.add_parser("stats", help="gradient, curvature and weight statistics")
    _common(stats)
    stats.add_argument(
        "--progress", action="store_true",
        help="tqdm progress bars on stderr even when it is not a terminal (default: on a terminal)",
    )  # fmt: skip
    stats.add_argument(
        "--stats-batch", type=int, default=128, help="mini-batch size of the statistics"
    )
    stats.add_argument(
        "--num-probes",
        type=int,
        default=8,
        help="random unit probes of the curvature statistics (%(default)s)",
    )
    _deprecated(stats, "--probes", "--num-probes", type=int)
    stats.add_argument(
        "--per-sample",
        action="store_true",
        help="gradient statistics of single samples (batch size 1, vmapped)",
    )
    stats.add_argument("--no-layers", action="store_true", help="skip the per-layer table")

    landscape = sub.add_parser(
        "landscape", help="loss landscape along eigenvectors or random directions"
    )
    _common(landscape)
    landscape.add_argument("--directions", default="top:2", help="top:K, bottom:K or random:K")
    landscape.add_argument(
        "--span",
        type=float,
        default=1.0,
        help="the coordinates run over [-span, span] (%(default)s)",
    )
    _deprecated(landscape, "--range", "--span", type=float)
    landscape.add_argument(
        "--num-points", type=int, default=21, help="points per direction (%(default)s)"
    )
    _deprecated(landscape, "--points", "--num-points", type=int)
    landscape.add_argument("--no-plane", action="store_true", help="only the 1D lines")
    _curvature(landscape, "eigenvectors of hessian (default) or ggn")

    sub.add_parser("list", help="list the known models and datasets")
    return parser


#: the task keywords each command takes from its parsed flags
_SETUP = ("model", "data", "data_root", "download", "checkpoint", "batch_size", "num_samples",
          "loss_fn", "device", "dtype", "seed")  # fmt: skip
_BASIS = ("memory_budget", "basis_dtype", "basis_device", "reorthogonalize")
_KEYWORDS = {
    "train": ("model", "data", "data_root", "batch_size", "num_samples", "device", "seed",
              "optimizer", "lr", "momentum", "weight_decay", "epochs", "schedule",
              "spectrum_every", "max_overhead", "resume", "loss_fn", "tensorboard"),
    "spectrum": ("curvature", "num_iters", "num_probes", "top_k", "tol", "params", "blocks",
                 "memory_budget", "basis_dtype", "basis_device", "reorthogonalize", "seed"),
    "stats": ("num_probes", "per_sample", "seed"),
    "landscape": ("directions", "span", "num_points", "curvature", "seed"),
}  # fmt: skip


def _keywords(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """The task keywords of ``args``; each deprecated flag warns with one line on stderr."""
    from .core.vocabulary import task_kwargs

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FutureWarning)
        kwargs = task_kwargs(args, names, where=args.command)
    for warning in caught:
        if is_main_process():
            print(f"jupyter-curvature {warning.message}", file=sys.stderr)
    return kwargs


def is_main_process() -> bool:
    from .distributed import is_main_process as main_process

    return main_process()


def _out(args: argparse.Namespace, default: str) -> Path:
    return args.out if args.out is not None else Path(f"curvature-{default}")


def _say(*values: object, **kwargs) -> None:
    """Print on the main process only (every rank computes under torchrun)."""
    if is_main_process():
        print(*values, **kwargs)


def _with_progress(task: Any, *args: Any, progress: bool | None = None, **kwargs: Any) -> Any:
    """``task(*args, progress=..., cancel=..., **kwargs)`` in a worker thread, with tqdm bars
    on stderr (main process only; ``progress=None``: when stderr is a terminal). Ctrl-C cancels: the task stops before its next product and
    its partial result (marked cancelled) is printed and saved."""
    from .core.progress import Worker, tqdm_callback

    show = progress if progress is not None else sys.stderr.isatty()
    bars = tqdm_callback(file=sys.stderr) if show and is_main_process() else None
    worker = Worker(lambda **ctl: task(*args, **ctl, **kwargs), on_event=bars)
    result = worker.run()
    if worker.interrupted:
        print("interrupted: the partial result is kept (marked cancelled)", file=sys.stderr)
    return result


def run(args: argparse.Namespace) -> int:
    from . import tasks

    if args.command == "list":
        from . import data, models

        _say("models:  ", ", ".join(models.available()))
        _say("datasets:", ", ".join(data.available_datasets()))
        return 0
    if args.command == "demo":
        if args.task == "text":
            out = Path("curvature-text") if args.out == Path("curvature-demo") else args.out
            tasks.text_report(out, quick=args.quick, seed=args.seed)
        else:
            tasks.report(args.out, epochs=args.epochs, quick=args.quick, seed=args.seed)
        return 0
    if args.command == "train":
        kwargs = _keywords(args, _KEYWORDS["train"])
        result = tasks.train(out=_out(args, "train"), progress=True, **kwargs)
        _say(result.trainer.history)
        return 0
    every = _keywords(args, (*_SETUP, *_KEYWORDS[args.command]))
    setup_kwargs = {k: every[k] for k in _SETUP if k in every}
    kwargs = {k: every[k] for k in _KEYWORDS[args.command] if k in every}
    out = _out(args, args.command)
    if args.command == "spectrum":  # a basis setting the request cannot use fails first
        tasks.basis_options(**{k: kwargs[k] for k in _BASIS}, top_k=kwargs["top_k"],
                            blocks=kwargs["blocks"])  # fmt: skip
    from .tasks.outputs import output_folder

    output_folder(out)  # a bad --out fails before any computation
    setup = tasks.resolve_setup(**setup_kwargs)
    objects = dict(loss_fn=setup.loss_fn, out=out)
    if args.command == "spectrum":
        result = _with_progress(
            tasks.spectrum, setup.model, setup.data, warn=True, progress=args.progress or None,
            **objects, **kwargs,
        )  # fmt: skip
        _say(result.density.describe(basis=False))
        if result.eigen is not None:
            _say(result.eigen.describe(basis=False))
        _say(result.basis_summary())  # one line for both runs' Lanczos vectors
        if result.blocks is not None:
            _say(result.blocks.table())
    elif args.command == "stats":
        include = [k for k in tasks.STATS_KINDS if k != "layers" or not args.no_layers]
        result = _with_progress(
            tasks.statistics, setup.model, setup.data, test_data=setup.test_data, include=include,
            progress=args.progress or None,
            curvature=["hessian", "ggn"], batch_size=args.stats_batch, **objects, **kwargs,
        )  # fmt: skip
        for value in result.records():
            _say(value, end="\n\n")
    elif args.command == "landscape":
        result = tasks.landscape(
            setup.model, setup.data, test_data=setup.test_data, plane=not args.no_plane,
            **objects, **kwargs,
        )  # fmt: skip
        for value in result:
            _say(value, end="\n\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; user mistakes print one line (``error: ...``) and exit with status 2."""
    import matplotlib

    matplotlib.use("Agg")
    parser = build_parser()
    args = parser.parse_args(argv)
    from .core.progress import Cancelled
    from .distributed import init_distributed

    context = init_distributed()  # a no-op outside torchrun; then only rank 0 writes
    try:
        if context.world_size > 1 and getattr(args, "device", None) == "auto":
            args.device = str(context.device)
        return run(args)
    except (ValueError, TypeError, OSError) as error:  # OSError: files, folders, a full disk
        parser.exit(2, f"jupyter-curvature {args.command}: error: {error}\n")
    except KeyboardInterrupt:
        print("interrupted; results written so far are kept", file=sys.stderr)
        return 130
    except Cancelled as error:
        print(f"interrupted: {error}", file=sys.stderr)
        return 130
    finally:
        context.close()


if __name__ == "__main__":
    sys.exit(main())
