"""Cost of the live training dashboard: training time with and without it, as ratios.

Runs the same training (``tasks.train``, built-in digits, SGD) several times:

* ``no callback``: the bare loop (the baseline);
* ``gradient steps only``: the physical limit, a hand-written ``zero_grad/forward/backward/step``
  loop over the same batches (what any training costs);
* ``tqdm``: the terminal fallback;
* ``dashboard (0.25 s)``: ``TrainingDashboard`` with the default throttle;
* ``dashboard (unthrottled)``: every step pushed (what the throttle saves).

The dashboard is measured without curvature checks (``spectrum_every=0``) so that only its own
cost shows; widget state is serialised (``get_state``, binary buffers) as in a kernel, but with
no kernel the comm is ipywidgets' ``DummyComm`` and the bytes are not sent. Reported: median
wall time over ``--repeats`` runs, the ratio to the bare loop, pushes per run and the longest
gap between two pushes (the dashboard must refresh at least once a second), and the share of
the run spent inside the callback itself (timed around each hook: robust to machine noise,
unlike the ratio of two noisy totals).

    python benchmarks/bench_dashboard.py            # 600 steps, 5 repeats
    python benchmarks/bench_dashboard.py --quick    # 150 steps, 3 repeats
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import torch


def make(model_name: str, seed: int = 0):
    from jupyter_curvature import tasks

    torch.manual_seed(seed)
    model = tasks.resolve_model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, opt


def loader(batch_size: int):
    from jupyter_curvature import tasks

    return tasks.resolve_data("digits", batch_size=batch_size, shuffle=True, seed=0)


def bare_gradient_loop(model_name: str, steps: int, batch_size: int) -> float:
    model, opt = make(model_name)
    data = loader(batch_size)
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    done = 0
    while done < steps:
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return time.perf_counter() - t0


class PushClock:
    """Wraps a dashboard's push to record when each one happened."""

    def __init__(self, dash) -> None:
        self.times: list[float] = []
        original = dash._push

        def timed() -> None:
            original()
            self.times.append(time.perf_counter())

        dash._push = timed

    def max_gap(self, start: float) -> float:
        stamps = [start, *self.times]
        return max((b - a for a, b in zip(stamps, stamps[1:])), default=float("nan"))


class Timed:
    """Delegates every hook to ``inner`` and adds up the seconds spent in it (noise-robust)."""

    from jupyter_curvature.training import HOOKS

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seconds = 0.0
        for name in self.HOOKS:
            if callable(getattr(inner, name, None)):
                setattr(self, name, self._wrap(getattr(inner, name)))

    def _wrap(self, fn):
        def hook(*args):
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.seconds += time.perf_counter() - t0

        return hook


def run_variant(
    kind: str, model_name: str, steps: int, batch_size: int
) -> tuple[float, int, float]:
    from jupyter_curvature import tasks
    from jupyter_curvature.widgets import TrainingDashboard

    if kind == "gradient steps only":
        return bare_gradient_loop(model_name, steps, batch_size), 0, float("nan"), 0.0
    model, opt = make(model_name)
    data = loader(batch_size)
    callbacks, dash, clock = [], None, None
    if kind.startswith("dashboard"):
        dash = TrainingDashboard(interval=0.0 if "unthrottled" in kind else 0.25)
        clock = PushClock(dash)
        callbacks = [Timed(dash)]
    elif kind == "tqdm":
        from jupyter_curvature.training import ProgressBar

        callbacks = [Timed(ProgressBar(file=io.StringIO()))]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        tasks.train(model, data, optimizer=opt, steps=steps, callbacks=callbacks, eval_every=10**9)
    seconds = time.perf_counter() - t0
    pushes, gap = 0, float("nan")
    if dash is not None:
        pushes, gap = dash.pushes, clock.max_gap(t0)
        dash.close()
    in_callbacks = sum(c.seconds for c in callbacks)
    return seconds, pushes, gap, in_callbacks / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="150 steps, 3 repeats")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--model", default="mlp")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    steps = args.steps or (150 if args.quick else 600)
    repeats = args.repeats or (3 if args.quick else 5)
    torch.set_num_threads(1)
    kinds = [
        "no callback",
        "gradient steps only",
        "tqdm",
        "dashboard (0.25 s)",
        "dashboard (unthrottled)",
    ]
    run_variant("dashboard (0.25 s)", args.model, 5, args.batch_size)  # warm-up: imports, caches
    times: dict[str, list[float]] = {k: [] for k in kinds}
    pushes: dict[str, list[int]] = {k: [] for k in kinds}
    gaps: dict[str, list[float]] = {k: [] for k in kinds}
    shares: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(repeats):  # interleaved, so machine noise hits every variant alike
        for k in kinds:
            s, n, g, f = run_variant(k, args.model, steps, args.batch_size)
            shares[k].append(f)
            times[k].append(s)
            pushes[k].append(n)
            gaps[k].append(g)
    base = statistics.median(times["no callback"])
    print(
        f"Dashboard overhead: {args.model} on digits, batch {args.batch_size}, {steps} steps, "
        f"median of {repeats} (1 thread, shared noisy machine)\n"
    )
    print(
        "| variant | median s | ms/step | ratio to bare loop | time inside the callback | pushes "
        "| longest gap between pushes (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k in kinds:
        med = statistics.median(times[k])
        n = statistics.median(pushes[k]) if pushes[k] else 0
        g = max(gaps[k])
        gap = f"{g:.2f}" if g == g else "-"
        share = (
            f"{100 * statistics.median(shares[k]):.2f}%"
            if shares[k] and max(shares[k]) > 0
            else "-"
        )
        print(
            f"| {k} | {med:.3f} | {1e3 * med / steps:.2f} | {med / base:.3f} | {share} | {n:.0f} | {gap} |"
        )


if __name__ == "__main__":
    main()
