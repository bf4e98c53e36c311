"""The one vocabulary of settings (``docs/vocabulary.md``) and its deprecated aliases.

Every layer maps old spellings to the table's names here, once: the engine's functions and
the Python tasks take the old keywords through :func:`accepts_aliases`; the CLI and the
magics parse old flags into a namespace under their old names and :func:`task_kwargs`
renames them. Each old name warns with a ``FutureWarning`` that names the new one (shown on
stderr by the CLI, as a one-line note by the magics).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Collection, Mapping
from typing import Any

__all__ = ["ALIASES", "accepts_aliases", "flag", "rename", "task_kwargs"]


def _ggn(value: Any) -> str:
    return "ggn" if value else "hessian"


#: deprecated name -> (new name, conversion of the value or None)
ALIASES: dict[str, tuple[str, Callable[[Any], Any] | None]] = {
    "ggn": ("curvature", _ggn),
    "iters": ("num_iters", None),
    "spectrum_iters": ("num_iters", None),
    "probes": ("num_probes", None),
    "spectrum_probes": ("num_probes", None),
    "top": ("top_k", None),
    "bn": ("batchnorm", None),
    "subsample": ("num_samples", None),
    "subset": ("num_samples", None),
    "samples": ("num_samples", None),
    "spectrum_samples": ("num_samples", None),
    "distance": ("span", None),
    "range": ("span", None),
    "points": ("num_points", None),
    "loss": ("loss_fn", None),
    "test": ("test_data", None),
    "root": ("data_root", None),
    "out_dir": ("out", None),
}


def flag(name: str) -> str:
    """The CLI/magic flag of a Python keyword: ``num_iters`` -> ``--num-iters``."""
    return "--" + name.replace("_", "-")


def rename(
    kwargs: Mapping[str, Any],
    *,
    where: str = "",
    flags: bool = False,
    allowed: set[str] | None = None,
    stacklevel: int = 3,
    aliases: Mapping[str, tuple[str, Callable[[Any], Any] | None]] = ALIASES,
) -> dict[str, Any]:
    """``kwargs`` with every deprecated name replaced by its new one (each warns once).

    Args:
        kwargs: keywords (or a parsed namespace's ``vars``) that may hold old names.
        where: the task or command, for the message (``"spectrum"``).
        flags: write the names as flags (``--iters``) in the message.
        allowed: if given, an old name whose new one is not in it is an error.
        stacklevel: of the warning.
        aliases: the table (default :data:`ALIASES`; a function's own table adds its
            particular renames, see :func:`accepts_aliases`).

    Raises:
        TypeError: an unknown keyword, or an old and a new name given together.
    """
    out = {k: v for k, v in kwargs.items() if k not in aliases}
    for old, value in kwargs.items():
        if old not in aliases:
            continue
        new, convert = aliases[old]
        if allowed is not None and new not in allowed:
            raise TypeError(f"{where}() got an unexpected keyword argument {old!r}")
        shown_old, shown_new = (flag(old), flag(new)) if flags else (f"{old}=", f"{new}=")
        if new in kwargs:
            raise TypeError(f"{where}: give {shown_new} only ({shown_old} is its old name)")
        converted = convert(value) if convert is not None else value
        hint = f"{shown_new} {converted}" if flags else f"{new}={converted!r}"
        warnings.warn(
            f"{where + ': ' if where else ''}{shown_old} is deprecated; use {hint}",
            FutureWarning,
            stacklevel=stacklevel,
        )
        out[new] = converted
    return out


def task_kwargs(
    namespace: Any,
    names: list[str] | tuple[str, ...],
    *,
    where: str = "",
    given: Collection[str] | None = None,
) -> dict[str, Any]:
    """The task keywords of a parsed argument namespace (the CLI's and the magics').

    Deprecated flags are parsed into attributes under their old names (absent when not
    given); they are renamed here, with a warning, and win over the new flag's default. A
    task's own keyword is never an old name there (``spectrum_samples`` is training's setting,
    though the other tasks once spelled ``num_samples`` so). ``given``: the settings given
    explicitly (the namespace cannot tell them from defaults); an old flag given with its
    new one then raises ``TypeError`` naming both.
    """
    values = vars(namespace)
    old = {k: v for k, v in values.items() if k in ALIASES and k not in names}
    new_given = {ALIASES[k][0] for k in old} & set(given or ()) & set(names)
    renamed = rename({**old, **{k: values[k] for k in new_given}}, where=where, flags=True,
                     stacklevel=3)  # fmt: skip
    out = {k: values[k] for k in names if k in values}
    out.update({k: v for k, v in renamed.items() if k in names})
    return out


def accepts_aliases(fn: Callable | None = None, /, **renames: str) -> Any:
    """Let ``fn`` take the deprecated keywords of its settings (each warns, then is renamed).

    ``@accepts_aliases`` uses :data:`ALIASES` for the keywords ``fn`` does not take itself;
    ``@accepts_aliases(subsample="spectrum_samples")`` adds renames particular to ``fn``
    (an old name that means another setting there than in the table). On a class's
    ``__init__`` the messages name the class.
    """
    table = {**ALIASES, **{old: (new, None) for old, new in renames.items()}}

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn).parameters
        params = set(signature)
        own = {old: rule for old, rule in table.items() if old not in params}  # fn's own win
        where = fn.__qualname__.removesuffix(".__init__")
        # A function that forwards ``**kwargs`` takes settings it does not name itself
        # (``get_loader`` passes ``num_samples`` on to ``get_dataset``): any new name goes.
        forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())
        allowed = None if forwards else params

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if any(k in own for k in kwargs):
                kwargs = rename(kwargs, where=where, allowed=allowed, stacklevel=3, aliases=own)
            return fn(*args, **kwargs)

        return wrapper

    return decorate if fn is None else decorate(fn)
