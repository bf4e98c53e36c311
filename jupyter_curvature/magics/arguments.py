"""The magics' options: the flag helpers and shared flag groups, the task keywords each magic
takes, and the one-line ``UsageError`` of a bad line.

A magic's options are IPython ``@argument`` decorators under ``@magic_arguments()``, which
builds the parser and the help that ``%curv_spectrum?`` shows. :func:`stack` holds such a
column of decorators as one value, so that a group shared by several magics (``--curvature``
with its deprecated ``--ggn``) is declared once and each magic's module declares its own.
The magics only parse their line; :func:`keywords` maps it to task keywords (deprecated
flags such as ``--ggn`` or ``--iters`` are renamed there and shown as a one-line note).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from .. import tasks
from ..core.sizes import size_argument
from ..core.vocabulary import task_kwargs
from ..tasks.spectrum import BASIS_DTYPES

__all__ = [
    "BASIS_KEYWORDS",
    "SPECTRUM_KEYWORDS",
    "SETUP_KEYWORDS",
    "STATS_KEYWORDS",
    "TRAIN_KEYWORDS",
    "basis_flags",
    "call",
    "check_out",
    "curvature_flags",
    "deprecated",
    "first_line",
    "keywords",
    "loss_flags",
    "parse_line",
    "non_negative",
    "positive",
    "samples_flags",
    "seed_flag",
    "seeded_model",
    "stack",
    "strip_comment",
    "usage_errors",
    "valid_options",
]


# --------------------------------------------------------------------------- declaring flags
def stack(*decorators: Any) -> Any:
    """One decorator applying ``decorators`` as if written one above the other, the first on
    top (a magic lists its options in the order they stand in the source)."""

    def apply(func: Any) -> Any:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def positive(kind: type) -> Any:
    """An argparse ``type``: ``kind(text)``, refused unless > 0 (argparse's error then reads
    ``invalid positive int value``)."""

    def check(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise ValueError(text)
        return value

    check.__name__ = f"positive {kind.__name__}"
    return check


def non_negative(kind: type) -> Any:
    """An argparse ``type``: ``kind(text)``, refused when < 0 (``--seed``, ``--momentum``)."""

    def check(text: str) -> Any:
        value = kind(text)
        if not value >= 0:  # NaN is refused too
            raise ValueError(text)
        return value

    check.__name__ = f"non-negative {kind.__name__}"
    return check


#: ``--seed``: the same flag in every magic (seeds are non-negative, as the engine's checks say)
seed_flag = argument(
    "--seed", type=non_negative(int), default=0,
    help="seed (>= 0) of the model's construction, the shuffling and the probes (0)",
)  # fmt: skip


def deprecated(old: str, new: str, **kwargs: Any) -> Any:
    """A deprecated flag: parsed under its old name (absent unless given), renamed with a
    one-line note by :func:`keywords`."""
    return argument(
        old, dest=old.lstrip("-").replace("-", "_"), default=argparse.SUPPRESS,
        help=f"deprecated: use {new}", **kwargs,
    )  # fmt: skip


#: ``--curvature hessian|ggn`` and its deprecated spelling ``--ggn`` (every magic alike)
curvature_flags = stack(
    argument(
        "--curvature",
        choices=["hessian", "ggn"],
        default="hessian",
        help="hessian (default) or ggn",
    ),
    deprecated("--ggn", "--curvature ggn", action="store_true"),
)

#: ``--loss-fn`` and its deprecated spelling ``--loss``
loss_flags = stack(
    argument("--loss-fn", default=None, help="loss variable or cross_entropy | mse | nll"),
    deprecated("--loss", "--loss-fn"),
)

#: ``--num-samples`` and its deprecated spelling ``--samples``
samples_flags = stack(
    argument(
        "--num-samples",
        type=positive(int),
        default=None,
        help="use only N samples of the data (the first N of a variable)",
    ),
    deprecated("--samples", "--num-samples", type=positive(int)),
)

#: how the Lanczos vectors are held (docs/scale.md): the CLI's spectrum flags
basis_flags = stack(
    argument(
        "--memory-budget", type=size_argument, default=None,
        help="memory for the Lanczos vectors of each run: bytes (8e9) or a size (8GB, "
        "512MiB); picks the most accurate basis that fits (default: the memory free now)",
    ),
    argument(
        "--basis-dtype", choices=BASIS_DTYPES, default=None,
        help="dtype of the Lanczos vectors (default: float64, or what --memory-budget allows)",
    ),
    argument(
        "--basis-device", default=None,
        help="where the Lanczos vectors live: cpu for a GPU model (default: the model's)",
    ),
    argument(
        "--reorthogonalize", choices=("full", "none"), default="full",
        help="full (default): a stored, reorthogonalised basis; none: the density only, "
        "no stored basis (needs --top-k 0, no --blocks)",
    ),
)  # fmt: skip

#: the task keywords each magic takes from its parsed flags
SETUP_KEYWORDS = ("model", "data", "loss_fn", "device", "seed", "num_samples", "batch_size")
TRAIN_KEYWORDS = ("model", "data", "test_data", "optimizer", "lr", "momentum", "weight_decay",
                  "epochs", "steps", "schedule", "batch_size", "loss_fn", "spectrum_every", "curvature",
                  "num_iters", "num_probes", "top_k", "spectrum_samples", "eval_every",
                  "device", "seed", "max_overhead", "checkpoint_dir", "checkpoint_every",
                  "tensorboard")  # fmt: skip
BASIS_KEYWORDS = ("memory_budget", "basis_dtype", "basis_device", "reorthogonalize")
SPECTRUM_KEYWORDS = (*SETUP_KEYWORDS, "curvature", "num_iters", "num_probes", "top_k", "tol",
                     "params", "blocks", "batchnorm", *BASIS_KEYWORDS)  # fmt: skip
STATS_KEYWORDS = (*SETUP_KEYWORDS, "curvature", "num_probes")


# --------------------------------------------------------------------------- reading a line
def valid_options(func: Any) -> list[str]:
    """The long options of the magic ``func``, sorted (named in an unrecognised-option error)."""
    return sorted(s for s in func.parser._option_string_actions if s.startswith("--"))


def strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment``, as a shell reads it.

    IPython hands a line magic its whole line, comment included. A ``#`` starts a comment
    only at the start of a word and outside quotes (``--params "re:a#b"`` and ``--params
    re:a#b`` keep theirs).
    """
    quote = None
    for i, char in enumerate(line):
        if quote is not None:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line


def parse_line(func: Any, line: str, name: str) -> Any:
    """The parsed options of ``%name line`` (a trailing ``# comment`` dropped); a bad line is
    a one-line ``UsageError``."""
    try:
        args = func.parser.parse_argstring(strip_comment(line))
        args.given = _given(func.parser, strip_comment(line))
    except UsageError as exc:
        msg = str(exc)
        if "unrecognized arguments" in msg or "ambiguous option" in msg:
            msg += f"; valid options: {' '.join(valid_options(func))}"
        raise UsageError(f"%{name}: {msg}") from None
    # IPython splits magic lines without removing quotes: --params "classifier*" means
    # the pattern classifier*, as it would in a shell
    for key, value in vars(args).items():
        quoted = isinstance(value, str) and len(value) >= 2 and value[0] in "'\""
        if quoted and value[-1] == value[0]:
            setattr(args, key, value[1:-1])
    return args


def _given(parser: argparse.ArgumentParser, line: str) -> set[str]:
    """The settings given on the line (not left at their defaults), so that an old flag given
    with its new one is an error rather than a silent choice: argparse sets a default only on
    an attribute the namespace lacks, so a namespace filled with a marker keeps the marker
    exactly where nothing was given."""
    from IPython.utils.process import arg_split

    unset = object()
    probe = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != "help"})
    parser.parse_args(arg_split(line), namespace=probe)
    return {key for key, value in vars(probe).items() if value is not unset}


def keywords(args: Any, name: str, names: tuple[str, ...]) -> dict[str, Any]:
    """The task keywords of the parsed ``args``; a deprecated flag prints a one-line note."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FutureWarning)
        try:
            kwargs = task_kwargs(args, names, where=f"%{name}", given=getattr(args, "given", None))
        except TypeError as exc:
            raise UsageError(str(exc)) from None
    for warning in caught:
        print(f"note: {warning.message}")
    return kwargs


def check_out(magic: str, *names: str | None) -> None:
    """Refuse an ``--out`` name that is not a Python variable name."""
    for name in names:
        if name is not None and not name.isidentifier():
            raise UsageError(f"%{magic}: --out {name!r} is not a valid Python variable name")


@contextmanager
def usage_errors(name: str) -> Iterator[None]:
    """The one place where an error of the user's input becomes a one-line ``UsageError``.

    The tasks raise :class:`~jupyter_curvature.tasks.InputError`; the engine checks its
    arguments with ``ValueError``/``TypeError`` (a layer that matches nothing, a seed below
    0, a loss the GGN cannot take). Both are the user's to fix, so each magic shows its first
    line without a traceback; anything else (a bug) keeps its traceback.
    """
    try:
        yield
    except UsageError:
        raise
    except (ValueError, TypeError) as exc:
        raise UsageError(f"%{name}: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def seeded_model(spec: str, namespace: dict[str, Any], seed: int, name: str) -> Any:
    """The model of ``--model``; a registry model is built after ``torch.manual_seed(seed)``
    (the rule of :func:`~jupyter_curvature.tasks.resolve_setup`), so that ``--seed`` gives
    its initial weights; a variable is used as it is."""
    import torch

    if tasks.lookup(spec, namespace) is tasks.MISSING:
        torch.manual_seed(seed)
    return call(name, tasks.resolve_model, spec, namespace)


def call(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a resolver/API call; user-input errors become one-line UsageErrors."""
    with usage_errors(name):
        return fn(*args, **kwargs)
