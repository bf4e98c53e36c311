"""``jupyter-curvature`` (also ``python -m jupyter_curvature``): train, spectrum, stats, landscape, demo.

Every subcommand writes its results (JSON, ``.npz``) and figures (PNG) to ``--out`` (default
``curvature-<command>``; a failed run removes the empty folders it made). Models and
datasets are chosen by name; ``digits`` (bundled with scikit-learn) is the offline default.
Checkpoints are read with ``torch.load(weights_only=True)`` (a pickle payload is refused, never
run) and every file is written atomically. A bad checkpoint or ``--out``, or a full disk, is one
line on stderr and exit status 2; Ctrl-C keeps what finished and exits with status 130. Under
``torchrun`` every rank computes its shard and only rank 0 writes; ``train`` runs the Trainer under ``DistributedDataParallel`` (``--batch-size`` is the
global batch, split across the ranks).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator
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


def _folder(text: str) -> Path:
    """An ``--out`` value: an empty one would silently mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("give a folder path (it is created if missing), not ''")
    return Path(text)


def _common(parser: argparse.ArgumentParser, *, train: bool = False) -> None:
    """The flags every computing command takes; ``train`` leaves out those it cannot use
    (it starts from fresh weights, or from ``--resume``, in float32)."""
    parser.add_argument(
        "--model", default="small_cnn", help="model name (see `jupyter-curvature list`)"
    )
    parser.add_argument(
        "--data", default="digits", help="dataset name (default: the built-in digits)"
    )
    parser.add_argument("--data-root", default=None, help="folder holding the dataset files")
    parser.add_argument(
        "--download", action="store_true", help="download a missing torchvision dataset"
    )
    if not train:
        parser.add_argument(
            "--checkpoint", default=None, help="weights to load (a .pt from `train`)"
        )
    parser.add_argument(
        "--batch-size", type=int, default=128, help="mini-batch size (default: %(default)s)"
    )
    parser.add_argument(
        "--num-samples", type=int, default=None, help="use a seeded subset of the training split"
    )
    _deprecated(parser, "--subsample", "--num-samples", type=int)
    parser.add_argument(
        "--loss-fn", default=None,
        help="cross_entropy (default); mse (squared error to one-hot targets); nll (the "
        "negative log-likelihood of log_softmax(outputs): cross_entropy on logits)",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    if not train:
        parser.add_argument(
            "--dtype",
            default="float32",
            choices=["float32", "float64"],
            help="dtype of the model and the products (default: %(default)s)",
        )
    parser.add_argument("--seed", type=int, default=0, help="seed of everything random")
    command = parser.prog.split()[-1]
    parser.add_argument(
        "--out", type=_folder, default=None,
        help=f"output folder (default: curvature-{command}; created if missing, and removed "
        "again when this run fails before writing into it)",
    )  # fmt: skip


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
        "--out", type=_folder, default=Path("curvature-demo"), help="output folder (%(default)s)"
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
    _common(train, train=True)
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
    "train": ("model", "data", "data_root", "download", "batch_size", "num_samples", "device", "seed",
              "optimizer", "lr", "momentum", "weight_decay", "epochs", "schedule",
              "spectrum_every", "max_overhead", "resume", "loss_fn", "tensorboard"),
    "spectrum": ("curvature", "num_iters", "num_probes", "top_k", "tol", "params", "blocks",
                 "memory_budget", "basis_dtype", "basis_device", "reorthogonalize", "seed"),
    "stats": ("num_probes", "per_sample", "seed"),
    "landscape": ("directions", "span", "num_points", "curvature", "seed"),
}  # fmt: skip


def _keywords(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """The task keywords of ``args``; each deprecated flag warns with one line on stderr, and
    an old flag given with its new one is an error naming both."""
    from .core.vocabulary import task_kwargs

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FutureWarning)
        kwargs = task_kwargs(args, names, where=args.command, given=getattr(args, "given", None))
    for warning in caught:
        if is_main_process():
            print(f"jupyter-curvature {warning.message}", file=sys.stderr)
    _check_flags({**vars(args), **kwargs})
    return kwargs


def _positive(value: Any) -> bool:
    return value >= 1


#: flag checks made before any computation: keyword -> (test, what the flag needs)
_RULES: dict[str, tuple[Any, str]] = {
    "batch_size": (_positive, "at least 1"),
    "num_samples": (_positive, "at least 1"),
    "num_iters": (_positive, "at least 1"),
    "num_probes": (_positive, "at least 1"),
    "stats_batch": (_positive, "at least 1"),
    "epochs": (_positive, "at least 1"),
    "top_k": (lambda v: v >= 0, "0 (no eigenpairs) or more"),
    "tol": (lambda v: 0 < v < 1, "between 0 and 1 (a residual relative to the largest |eigenvalue|)"),
    "span": (lambda v: 0 < v < float("inf"), "a positive number"),
    "num_points": (lambda v: v >= 2, "at least 2 (points per direction)"),
    "spectrum_every": (lambda v: v >= 0, "0 (off) or a number of steps"),
    "lr": (lambda v: v > 0, "a positive number"),
}  # fmt: skip


def _check_flags(values: dict[str, Any]) -> None:
    """Every numeric flag's range, checked before any data is read or product computed
    (the engine checks them too, but only when it reaches them)."""
    for key, (ok, needs) in _RULES.items():
        value = values.get(key)
        if value is not None and not ok(value):
            raise ValueError(f"{_flag(key)} must be {needs}, got {value}")


def _flag(keyword: str) -> str:
    return "--" + keyword.replace("_", "-")


def is_main_process() -> bool:
    from .distributed import is_main_process as main_process

    return main_process()


def _say(*values: object, **kwargs) -> None:
    """Print on the main process only (every rank computes under torchrun)."""
    if is_main_process():
        print(*values, **kwargs)


def _with_progress(task: Any, *args: Any, progress: bool | None = None, **kwargs: Any) -> Any:
    """``task(*args, progress=..., cancel=..., **kwargs)`` in a worker thread, with tqdm bars
    on stderr (main process only; ``progress=None``: when stderr is a terminal). Ctrl-C
    cancels: the task stops before its next product and its partial result (marked
    cancelled) is printed and saved."""
    from .core.progress import Worker, tqdm_callback

    show = progress if progress is not None else sys.stderr.isatty()
    bars = tqdm_callback(file=sys.stderr) if show and is_main_process() else None
    worker = Worker(lambda **ctl: task(*args, **ctl, **kwargs), on_event=bars)
    return worker.run()


def _interrupted(result: Any) -> bool:
    """Whether a task's result is partial because of Ctrl-C (each task marks it its way)."""
    if getattr(result, "status", None) == "interrupted" or getattr(result, "cancelled", False):
        return True
    parts = (getattr(result, "line", None), getattr(result, "surface", None))
    return any(getattr(part, "interrupted", False) for part in parts)


#: exit status of a run stopped by Ctrl-C (128 + SIGINT), after saving what finished
INTERRUPTED = 130


def _finish(result: Any, what: str) -> int:
    if not _interrupted(result):
        return 0
    if is_main_process():
        print(f"interrupted: the {what} finished so far is kept (marked as such)", file=sys.stderr)
    return INTERRUPTED


def run(args: argparse.Namespace) -> int:
    if args.command == "list":
        from . import data, models

        _say("models:  ", ", ".join(models.available()))
        _say("datasets:", ", ".join(data.available_datasets()))
        return 0
    out = _out(args)
    with _removed_when_failed(out):
        return _compute(args, out)


def _out(args: argparse.Namespace) -> Path:
    if args.command == "demo" and args.task == "text" and args.out == Path("curvature-demo"):
        return Path("curvature-text")
    return args.out if args.out is not None else Path(f"curvature-{args.command}")


@contextlib.contextmanager
def _removed_when_failed(out: Path) -> Iterator[None]:
    """Remove the folders this run created for ``out`` (``out``, its missing parents, and
    subfolders such as ``demo``'s ``train/``) when it fails, if they are still empty: a failed
    run leaves nothing behind, and nothing the user made goes."""
    missing = [p for p in (out, *out.parents) if not p.exists()]
    first_missing = missing[-1] if missing else None  # the highest folder this run will make
    before = _subfolders(out)  # one level: the tasks make no deeper folders
    try:
        yield
    except BaseException:
        if is_main_process():
            _remove_new_empty_folders(out, before, first_missing)
        raise


def _subfolders(folder: Path) -> set[Path]:
    return {p for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()


def _remove_new_empty_folders(out: Path, before: set[Path], first_missing: Path | None) -> None:
    for folder in _subfolders(out) - before:
        with contextlib.suppress(OSError):  # not empty: something was written there, and is kept
            folder.rmdir()
    if first_missing is None:
        return  # ``out`` existed before this run
    for folder in (out, *out.parents):  # ``out`` and the missing parents made for it
        if not folder.is_relative_to(first_missing):
            return
        try:
            folder.rmdir()
        except OSError:
            return


def _warn_replaced(out: Path, resume: str | None) -> None:
    """Say so when a new training run is about to replace an earlier run's checkpoint."""
    last = out / "checkpoint-last.pt"
    if resume is None and last.exists() and is_main_process():
        print(
            f"jupyter-curvature train: warning: --out {out} holds an earlier run's {last.name}; "
            f"this run replaces it (to continue that run give --resume {last}, to keep it "
            "another --out)",
            file=sys.stderr,
        )


def _remove_stale(out: Path, names: list[str]) -> None:
    """Remove an earlier run's outputs that this run did not produce, so that every file in
    ``out`` describes this run, and say which."""
    stale = [out / name for name in names if (out / name).exists()]
    if not stale or not is_main_process():
        return
    for path in stale:
        path.unlink()
    shown = ", ".join(p.name for p in stale)
    print(f"jupyter-curvature: removed {shown} of an earlier run (this run made none)",
          file=sys.stderr)  # fmt: skip


def _compute(args: argparse.Namespace, out: Path) -> int:
    from . import tasks

    if args.command == "demo":
        _check_flags(vars(args))
        if args.task == "text":
            tasks.text_report(out, quick=args.quick, seed=args.seed)
        else:
            tasks.report(out, epochs=args.epochs, quick=args.quick, seed=args.seed)
        return 0
    if args.command == "train":
        kwargs = _keywords(args, _KEYWORDS["train"])
        _warn_replaced(out, kwargs["resume"])
        result = tasks.train(out=out, progress=True, **kwargs)
        _say(result.trainer.history)
        return _finish(result, "training (checkpoints and history)")
    every = _keywords(args, (*_SETUP, *_KEYWORDS[args.command]))
    setup_kwargs = {k: every[k] for k in _SETUP if k in every}
    kwargs = {k: every[k] for k in _KEYWORDS[args.command] if k in every}
    if args.command == "spectrum":  # a basis setting the request cannot use fails first
        tasks.basis_options(**{k: kwargs[k] for k in _BASIS}, top_k=kwargs["top_k"],
                            blocks=kwargs["blocks"])  # fmt: skip
    if args.command == "landscape":
        from .tasks.landscape import _parse_directions

        _parse_directions(kwargs["directions"])
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
        else:
            _remove_stale(out, [f"{result.curvature}_blocks.{ext}" for ext in ("json", "png")])
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
    return _finish(result, "result")


def _given(argv: list[str] | None, command: str) -> set[str]:
    """The settings given on the command line (not left at their defaults), so that an old
    flag given with its new one is an error rather than a silent choice."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices[command]._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}


#: engine keywords whose CLI flag has another name (the rest: ``--`` + dashes for ``_``)
_FLAG_NAMES = {"k": "--top-k", "every": "--spectrum-every", "out": "--out"}
# stats' engine batch is --stats-batch (--batch-size is checked, by name, before any work)
_COMMAND_FLAG_NAMES = {"stats": {"batch_size": "--stats-batch"}}


def _in_flag_names(message: str, command: str) -> str:
    """``message`` with the Python keywords of the engine's errors named as the CLI's flags
    (``num_iters`` -> ``--num-iters``, ``k must`` -> ``--top-k must``): one mapping, here,
    so the engine's messages stay those of the Python API."""
    import re

    names = {k: _flag(k) for keys in (_SETUP, _BASIS, *_KEYWORDS.values()) for k in keys}
    names |= {"stats_batch": "--stats-batch"} | _FLAG_NAMES | _COMMAND_FLAG_NAMES.get(command, {})

    def flag(match: re.Match) -> str:
        return names[match.group(1)]

    every = "|".join(sorted(names, key=len, reverse=True))
    underscored = "|".join(sorted((k for k in names if "_" in k), key=len, reverse=True))

    def word(match: re.Match) -> str:
        text = match.group(0)
        if text.lstrip("'\"(").startswith(("/", "~", "./", "../")):
            return text  # a path: its folder names stay as they are
        text = re.sub(rf"(?<![\w\-.'\"])({every})=", lambda m: flag(m) + " ", text)
        return re.sub(rf"(?<![\w\-.])({underscored})\b(?!\()", flag, text)

    return re.sub(r"^(k|every)(?= must)", flag, re.sub(r"\S+", word, message))


def main(argv: list[str] | None = None) -> int:
    """Entry point; user mistakes print one line (``error: ...``) and exit with status 2."""
    import matplotlib

    matplotlib.use("Agg")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given = _given(argv, args.command)
    from .core.progress import Cancelled
    from .distributed import init_distributed

    context = init_distributed()  # a no-op outside torchrun; then only rank 0 writes
    try:
        if context.world_size > 1 and getattr(args, "device", None) == "auto":
            args.device = str(context.device)
        return run(args)
    except (ValueError, TypeError, OSError) as error:  # OSError: files, folders, a full disk
        message = _in_flag_names(str(error).splitlines()[0] if str(error) else repr(error),
                                 args.command)  # fmt: skip
        parser.exit(2, f"jupyter-curvature {args.command}: error: {message}\n")
    except KeyboardInterrupt:
        print("interrupted; results written so far are kept", file=sys.stderr)
        return INTERRUPTED
    except Cancelled as error:
        print(f"interrupted: {error}", file=sys.stderr)
        return INTERRUPTED
    finally:
        context.close()


if __name__ == "__main__":
    sys.exit(main())
