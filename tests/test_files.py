"""Atomic file writes: a planted symlink, a kill, a raising writer and a full disk each leave
the previous file intact and no temporary file behind; every saver of the package goes
through the one writer."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import torch
from torch import nn

matplotlib.use("Agg")

from jupyter_curvature.core.files import (  # noqa: E402
    DiskFullError,
    atomic_write,
    atomic_write_text,
    remove_stale_temps,
)
from jupyter_curvature.stats import evaluate  # noqa: E402
from jupyter_curvature.tasks.outputs import save_figure, save_json  # noqa: E402
from jupyter_curvature.training import History, atomic_save, load_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]  # the child processes import this checkout


def run_child(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, text=True, **kwargs)


def dead_pid() -> int:
    """The pid of a child process that has exited and been reaped."""
    child = run_child("pass")
    child.wait()
    return child.pid


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_symlink_planted_at_a_temporary_name_is_never_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "run" / "checkpoint-last.pt"
    target.parent.mkdir()
    # the name the old writer used, and one of our own pattern (a dead pid) for the cleanup
    old_name = target.parent / f".{target.name}.tmp-{os.getpid()}"
    ours = target.parent / f".{target.name}.{dead_pid()}.abcdefgh.tmp"
    for link in (old_name, ours):
        link.symlink_to(victim)

    atomic_save({"w": torch.arange(4.0)}, target)

    assert victim.read_text() == "precious"
    assert target.is_file() and not target.is_symlink()
    assert torch.equal(load_checkpoint(target)["w"], torch.arange(4.0))
    assert old_name.is_symlink() and ours.is_symlink()  # left alone, not followed
    assert listing(target.parent) == sorted([target.name, old_name.name, ours.name])


def test_the_new_file_gets_the_permissions_open_would_give(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    assert (tmp_path / "atomic.txt").stat().st_mode == plain.stat().st_mode


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
def test_a_writer_that_raises_midway_keeps_the_previous_file(tmp_path, interruption):
    path = tmp_path / "result.json"
    atomic_write_text(path, "previous")

    def torn(f):
        f.write(b"half of the new")
        raise interruption("stopped midway")

    with pytest.raises(interruption, match="stopped midway"):
        atomic_write(path, torn)
    assert path.read_text() == "previous"
    assert listing(tmp_path) == ["result.json"]


def test_temporary_files_of_a_killed_writer_are_removed_on_the_next_save_and_on_resume(
    tmp_path,
):
    path = tmp_path / "checkpoint-last.pt"
    atomic_save({"step": 1}, path)
    # a writer killed midway (SIGKILL): told to stop only once it is inside the write
    child = run_child(
        "import sys\n"
        "from jupyter_curvature.core.files import atomic_write\n"
        "def write(f):\n"
        "    f.write(b'partial'); f.flush(); print('writing', flush=True); sys.stdin.read()\n"
        f"atomic_write({str(path)!r}, write)\n",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdout.readline().strip() == "writing"
    child.kill()
    child.wait()
    (left,) = set(listing(tmp_path)) - {path.name}
    assert left.startswith(f".{path.name}.{child.pid}.") and left.endswith(".tmp")
    assert load_checkpoint(path) == {"step": 1}  # the previous checkpoint is whole
    assert left not in listing(tmp_path)  # ... and reading it for a resume cleaned up

    # the same leftover, now cleaned by the next save; a live writer's file, other
    # targets' files and names not of our pattern stay
    live = f".{path.name}.{os.getpid()}.abcdefgh.tmp"
    others = [f".other.pt.{child.pid}.abcdefgh.tmp", f".{path.name}.tmp-{child.pid}"]
    for name in [left, live, *others]:
        (tmp_path / name).write_bytes(b"partial")
    atomic_save({"step": 2}, path)
    assert listing(tmp_path) == sorted([path.name, live, *others])
    assert load_checkpoint(path) == {"step": 2}
    assert remove_stale_temps(path) == []


def test_a_real_file_size_limit_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path):
    """``ulimit -f`` (RLIMIT_FSIZE) in a child: torch.save's own error is a RuntimeError
    ("unexpected pos ...") that hides the OSError; ours names the path."""
    path = tmp_path / "checkpoint-last.pt"
    code = f"""
import json, resource, signal, torch
from jupyter_curvature.training import atomic_save
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
atomic_save({{"w": torch.ones(10)}}, {str(path)!r})
try:
    atomic_save({{"w": torch.zeros(1 << 16)}}, {str(path)!r})  # 256 KiB
except OSError as exc:
    print(json.dumps([type(exc).__name__, str(exc), exc.errno, exc.__cause__.errno]))
"""
    child = run_child(code, stdout=subprocess.PIPE)
    out, _ = child.communicate()
    assert child.returncode == 0
    name, message, code_, cause = json.loads(out)
    assert name == "DiskFullError" and code_ == cause == errno.EFBIG
    assert message == (
        f"disk full or file too large while writing {path}; "
        f"the previous checkpoint {path} is intact"
    )
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(10))
    assert listing(tmp_path) == [path.name]


def test_a_full_disk_without_a_previous_file_says_nothing_was_left(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", no_room)
    with pytest.raises(DiskFullError, match="nothing was left there") as info:
        atomic_write_text(tmp_path / "new.json", "{}")
    assert isinstance(info.value.__cause__, OSError) and info.value.errno == errno.ENOSPC
    assert listing(tmp_path) == []


def no_room(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---- every file the package writes goes through the one writer ---------------------------------


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    return model, nn.CrossEntropyLoss(), [(x, y)]


def _density_and_pairs():
    from jupyter_curvature import HessianOperator, eigenpairs, spectral_density

    op = HessianOperator(*_tiny())
    return spectral_density(op, num_iters=3, num_probes=1, seed=0), eigenpairs(op, k=1, seed=0)


def _landscape_and_directions():
    from jupyter_curvature.landscape import landscape_1d, random_directions

    model, loss, data = _tiny()
    dirs = random_directions(model, 1, seed=0)
    return landscape_1d(model, loss, data, dirs, num_points=3), dirs


def _figure():
    import matplotlib.pyplot as plt

    return plt.subplots()[0]


SAVERS = {
    "checkpoint": ("c.pt", lambda p: atomic_save({"w": torch.ones(2)}, p)),
    "density npz": ("d.npz", lambda p: _density_and_pairs()[0].save(p)),
    "density json": ("d.json", lambda p: _density_and_pairs()[0].save(p)),
    "eigenpairs": ("e.npz", lambda p: _density_and_pairs()[1].save(p)),
    "landscape": ("l.npz", lambda p: _landscape_and_directions()[0].save(p)),
    "directions": ("r.npz", lambda p: _landscape_and_directions()[1].save(p)),
    "stats record": ("s.json", lambda p: evaluate(*_tiny()).save(p)),
    "trainer history": ("h.json", lambda p: History().save(p)),
    "task json": ("j.json", lambda p: save_json(p, {"a": 1})),
    "task figure": ("f.png", lambda p: save_figure(_figure(), p)),
}  # fmt: skip


@pytest.mark.parametrize("saver", list(SAVERS))
def test_every_saver_keeps_the_previous_file_when_the_disk_is_full(tmp_path, monkeypatch, saver):
    name, save = SAVERS[saver]
    path = tmp_path / name
    path.write_bytes(b"previous")
    monkeypatch.setattr(os, "fsync", no_room)
    with pytest.raises(DiskFullError, match=f"the previous .* {path} is intact"):
        save(path)
    assert path.read_bytes() == b"previous"
    assert listing(tmp_path) == [name]
