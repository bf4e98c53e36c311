"""Where the tasks write: folders, JSON (through :func:`jupyter_curvature.core.records.write_json`,
the one NaN policy) and figures, on the writing rank only under ``torchrun``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..core.files import atomic_write
from ..core.records import write_json

__all__ = ["figure_of", "is_writer", "output_folder", "save_figure", "save_json"]


def is_writer() -> bool:
    """Whether this process writes files: always, except on ranks > 0 of a process group."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def output_folder(out: str | os.PathLike) -> Path:
    """``out`` as a folder, created now (on the writing rank) so that a bad ``out`` fails
    before any computation.

    Raises:
        NotADirectoryError: ``out`` is an existing file, or lies under one.
        PermissionError: ``out`` cannot be made here (no permission, a read-only or
            special file system).
    """
    out = Path(out)
    if is_writer():
        try:
            out.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise NotADirectoryError(
                f"out={out} is not a folder and cannot be made one ({exc.strerror}); "
                "pass a folder path (it is created if missing)"
            ) from exc
        except OSError as exc:  # EACCES, EPERM, EROFS ...: the message names out and a way out
            raise PermissionError(
                f"out={out} cannot be created ({exc.strerror}); pass a folder you can write to"
            ) from exc
    return out


def save_json(path: Path, value: Any) -> None:
    """``value`` as JSON (NaN and infinities as ``null``) on the writing rank."""
    if is_writer():
        write_json(path, value)


def figure_of(plotted: Any) -> Any:
    """The Figure behind whatever a ``plot()`` returned (a figure, an axes or an array of axes)."""
    import numpy as np

    if hasattr(plotted, "savefig"):
        return plotted
    if isinstance(plotted, np.ndarray):
        plotted = plotted.flat[0]
    if isinstance(plotted, (tuple, list)):
        plotted = plotted[0]
    return plotted.figure if hasattr(plotted, "figure") else plotted.get_figure()


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` (PNG, ...: the suffix) atomically on the writing rank, then close it."""
    fig = figure_of(fig)
    if is_writer():
        fmt = path.suffix.lstrip(".")
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=120, bbox_inches="tight"))
    import matplotlib.pyplot as plt

    plt.close(fig)
