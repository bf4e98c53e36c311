"""Atomic file writes: every file the package writes (checkpoints, results, figures, JSON)
goes through :func:`atomic_write`.

The bytes go to a fresh temporary file in the target's folder, created by
``tempfile.mkstemp`` (``O_CREAT | O_EXCL``, a random name: a symlink or file planted
there is never opened, let alone followed), flushed and ``fsync``-ed, then renamed over the
target with ``os.replace``; the folder is ``fsync``-ed last so that the rename itself
survives a power cut. At every moment the target therefore holds its previous content or
the new one, whole:

* the writer raises (or Ctrl-C): the temporary file is removed, the previous file is kept;
* the disk fills up or ``ulimit -f`` (``RLIMIT_FSIZE``) is hit: the same, and
  :class:`DiskFullError` names the path;
* the process is killed (SIGKILL, power cut): the previous file is kept and the temporary
  file stays behind; the next write of the same target removes it (and the temporary files
  of any other dead process), matching only our own name pattern in that folder and never
  following a symlink.

Temporary files are named ``.<target name>.<pid>.<random>.tmp``: the pid tells a dead
writer's leftovers from a live writer's file in progress.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

# errors that mean "no room": a full disk, a quota, a file size limit (ulimit -f)
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class DiskFullError(OSError):
    """The disk filled up (or a quota or file-size limit was hit) while writing a file; the
    previous file at that path is intact and no temporary file is left behind."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], what: str = "file") -> Path:
    """Write ``path`` all at once: ``write(f)`` fills a temporary binary file that then
    replaces ``path`` (see the module docstring for what survives a kill or a full disk).

    Args:
        path: the file to write; its folder is created if missing.
        write: writes the content into the open binary file it is given.
        what: what the file is, for the error message (``"checkpoint"``).

    Raises:
        DiskFullError: no room on the disk (``ENOSPC``, ``EDQUOT``) or the file is too large
            (``EFBIG``); the original ``OSError`` is its ``__cause__``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp's 0600 -> as open() would
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        cause = _no_room(exc)
        if cause is None:
            raise
        error = DiskFullError(
            f"disk full or file too large while writing {path}; "
            + (
                f"the previous {what} {path} is intact"
                if path.exists()
                else "nothing was left there"
            )
        )
        error.errno = cause.errno
        raise error from cause
    _fsync_folder(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of ``text`` encoded as UTF-8."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def atomic_savez(path: str | Path, **arrays: Any) -> Path:
    """:func:`atomic_write` of ``np.savez(path, **arrays)``; like numpy, it appends ``.npz``
    to a name without it and returns the path written."""
    import numpy as np

    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temporary files that dead processes left while writing ``path``.

    Only regular files in ``path``'s folder named like ours for this target
    (``.<name>.<pid>.<random>.tmp``) whose pid is no longer running; symlinks and anything
    else are left alone. Returns the removed paths; never raises (a read-only folder keeps
    its leftovers).
    """
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)\.[A-Za-z0-9_]+\.tmp")
    removed = []
    try:
        with os.scandir(path.parent) as entries:
            for entry in entries:
                match = pattern.fullmatch(entry.name)
                if match and entry.is_file(follow_symlinks=False) and not _alive(int(match[1])):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    except OSError:
        pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _no_room(exc: BaseException) -> OSError | None:
    """The "no room" OSError behind ``exc``, if any: ``torch.save`` reports it as the
    context of its own ``RuntimeError`` (``unexpected pos ...``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
