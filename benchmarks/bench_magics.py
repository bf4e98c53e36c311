"""The magics cost what the engine costs: the README's magic lines against the engine called directly.

On the README's trained demo model (``tasks.train("small_cnn", "digits", optimizer="kfac",
lr=0.05, epochs=5)``, the model of ``%%curv_train ... --out run``), in one process:

* ``%curv_spectrum --model run.model --data digits --num-iters 80 --num-probes 4 --top-k 5``
  through IPython's ``InteractiveShell.run_line_magic`` (text output, ``widgets="off"``; and
  with the panel built, ``widgets="on"``: with no kernel the widget comm is ipywidgets'
  dummy one), against the engine calls it stands for, made directly on the same data
  (``HessianOperator`` on the digits' training batches of 128, ``spectral_density(op, 80, 4)``
  and ``eigenpairs(op, k=5)``);
* ``%curv_stats --model run.model --data digits`` against ``stats.evaluate``,
  ``gradient_statistics``, ``curvature_statistics`` (8 probes), ``weight_norms`` and
  ``layer_curvature``.

The calls take turns within each round (magic, engine, magic with panels; the order rotates),
so each ratio compares runs made under the same machine load; reported: median wall and CPU
seconds (``time.process_time``: less sensitive to other processes on a shared machine) and the
medians of the per-round ratios, and the magic's own seconds: its wall time less the time
inside the task call it makes (``tasks.spectrum`` / ``tasks.statistics``, timed in the same
call), i.e. parsing, panels and printing. Target: the magic adds at most 5%.

    python benchmarks/bench_magics.py              # 5 rounds
    python benchmarks/bench_magics.py --rounds 3
    python benchmarks/bench_magics.py --profile    # cProfile of one magic call of each
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table  # noqa: E402

SPECTRUM = "--model run.model --data digits --num-iters 80 --num-probes 4 --top-k 5"
STATS = "--model run.model --data digits"


def demo_model():
    from jupyter_curvature import tasks

    return tasks.train("small_cnn", "digits", optimizer="kfac", lr=0.05, epochs=5)


def shell_with(run):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.user_ns["run"] = run
    shell.run_line_magic("load_ext", "jupyter_curvature")
    return shell


def engine_spectrum(model, data):
    from jupyter_curvature import HessianOperator
    from jupyter_curvature.spectral import eigenpairs, spectral_density

    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), data)
    density = spectral_density(op, num_iters=80, num_probes=4, seed=0)
    eig = eigenpairs(op, k=5, which="LA", tol=1e-3, seed=0, warn=False)
    return density, eig


def engine_stats(model, data):
    from jupyter_curvature import stats

    loss_fn = torch.nn.CrossEntropyLoss()
    return (
        stats.evaluate(model, loss_fn, data, topk=(1,)),
        stats.gradient_statistics(model, loss_fn, data, batch_size=128),
        stats.curvature_statistics(
            model, loss_fn, data, curvature="hessian", num_probes=8, batch_size=128, seed=0
        ),  # fmt: skip
        stats.weight_norms(model),
        stats.layer_curvature(model, loss_fn, data, None, curvature="hessian", seed=0),
    )


def magic(shell, name: str, line: str, widgets: str) -> None:
    shell.run_line_magic("config", f'CurvMagics.widgets = "{widgets}"')
    with contextlib.redirect_stdout(io.StringIO()):
        shell.run_line_magic(name, line)


def timed(fn) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()`` (after a full garbage collection, not timed, so that
    no call pays for the garbage of the one before)."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


class TaskClock:
    """Wraps the magics' task calls to time them inside the magic's own call."""

    def __init__(self):
        from jupyter_curvature import tasks
        from jupyter_curvature.magics import spectrum, stats

        self.seconds = 0.0
        self.tasks = tasks
        for name in ("spectrum", "statistics"):
            setattr(self, name, self.wrap(getattr(self.tasks, name)))
        for module in (spectrum, stats):  # each magic's module reads tasks.<name> at call time
            module.tasks = self

    def wrap(self, fn):
        def timed_task(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed_task

    def __getattr__(self, name):
        return getattr(self.tasks, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="profile one magic call of each")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from jupyter_curvature import tasks

    run = demo_model()
    shell = shell_with(run)
    data = tasks.resolve_data("digits")
    model = run.model
    if args.profile:
        for name, line in (("curv_spectrum", SPECTRUM), ("curv_stats", STATS)):
            prof = cProfile.Profile()
            prof.runcall(magic, shell, name, line, "on")
            print(f"### %{name} (widgets on)")
            pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        return
    calls = {
        "spectrum": {
            "engine": lambda: engine_spectrum(model, data),
            "magic (text)": lambda: magic(shell, "curv_spectrum", SPECTRUM, "off"),
            "magic (panel)": lambda: magic(shell, "curv_spectrum", SPECTRUM, "on"),
        },
        "stats": {
            "engine": lambda: engine_stats(model, data),
            "magic (text)": lambda: magic(shell, "curv_stats", STATS, "off"),
            "magic (panel)": lambda: magic(shell, "curv_stats", STATS, "on"),
        },
    }
    # warm-up: the full engine calls once (the first kept graphs of this size fault their
    # memory in, which counts as CPU time), then imports and widget classes on small settings
    engine_spectrum(model, data)
    engine_stats(model, data)
    for widgets in ("off", "on"):
        magic(shell, "curv_spectrum", "--model run.model --data digits --num-iters 4 "
              "--num-probes 1 --top-k 1", widgets)  # fmt: skip
        magic(shell, "curv_stats", "--model run.model --data digits --include norms,evaluation",
              widgets)  # fmt: skip
    clock = TaskClock()
    times = {g: {k: [] for k in group} for g, group in calls.items()}
    own = {g: {k: [] for k in group} for g, group in calls.items()}
    for r in range(args.rounds):
        for g, group in calls.items():
            names = list(group)
            for k in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
                clock.seconds = 0.0
                wall, cpu = timed(group[k])
                times[g][k].append((wall, cpu))
                own[g][k].append(wall - clock.seconds if k != "engine" else 0.0)
    rows = []
    for g, group in times.items():
        base = group["engine"]
        for k, ts in group.items():
            wall = [t[0] / b[0] for t, b in zip(ts, base)]
            cpu = [t[1] / b[1] for t, b in zip(ts, base)]
            share = [o / t[0] for o, t in zip(own[g][k], ts)]
            rows.append([
                g, k, f"{statistics.median(t[0] for t in ts):.2f}",
                f"{statistics.median(t[1] for t in ts):.2f}", f"{statistics.median(wall):.3f}",
                f"{statistics.median(cpu):.3f}",
                f"{statistics.median(own[g][k]):.3f} ({statistics.median(share):.2%})",
            ])  # fmt: skip
    print(f"torch {torch.__version__}, 1 thread, {args.rounds} rounds (interleaved)\n")
    print(markdown_table(
        ["line", "call", "wall s", "CPU s", "wall ratio", "CPU ratio",
         "the magic's own s (share)"],
        rows,
    ))  # fmt: skip


if __name__ == "__main__":
    main()
