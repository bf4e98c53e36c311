"""Landscape benchmark: a 21 x 21 grid against its physical limit, batching, progressiveness.

The limit for evaluating grid points one at a time is one plain forward pass over the data
per point: ``441 x`` (``model.eval()``, ``torch.no_grad()``, the same batches already on the
device, no loss, no accuracy). We report, as ratios measured in the same run (these
machines are shared and noisy, so absolute times mean little):

- ``grid / limit``: a full ``landscape_2d`` call (copying the model, reading the data,
  tuning the strategy, loss and accuracy at every point) over 441 forward passes;
  the issue's bar is 1.1;
- ``batched / one at a time``: the grid with ``batch_points=B`` (torch.func.vmap over
  points) over the grid with ``batch_points=1``; below 1 means batching pays off;
- ``coarse / total``: when the coarse 5 x 5 picture was complete, as a fraction of the
  whole grid's time; the bar is 0.10.

Each figure is the median of ``--repeats`` runs, the configurations interleaved so that
load changes hit them alike; the forward-pass limit is re-measured next to every run.

    python benchmarks/bench_landscape.py                      # small CNN on the digits, CPU
    python benchmarks/bench_landscape.py --model mlp          # an MLP, where batching pays on CPU
    python benchmarks/bench_landscape.py --device cuda        # on a GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jupyter_curvature.data import digits_loader  # noqa: E402
from jupyter_curvature.landscape import landscape_2d, random_directions  # noqa: E402
from jupyter_curvature.models import MLP, SmallCNN  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_seconds(model, batches, device, passes: int) -> float:
    """Median seconds of one plain full-data forward pass."""
    times = []
    with torch.no_grad():
        for _ in range(passes):
            _sync(device)
            t0 = time.perf_counter()
            for x, _y in batches:
                model(x)
            _sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def grid_run(model, loss_fn, loader, dirs, n, batch_points, bn):
    coarse = {}
    t0 = time.perf_counter()

    def callback(progress):
        if progress.level_complete and "t" not in coarse:
            coarse["t"] = time.perf_counter() - t0  # from the call, set-up included

    result = landscape_2d(
        model,
        loss_fn,
        loader,
        dirs,
        num_points=n,
        span=1.0,
        bn=bn,
        batch_points=batch_points,
        callback=callback,
    )
    total = time.perf_counter() - t0
    assert result.complete
    return {
        "seconds": total,
        "coarse_seconds": coarse.get("t", float("nan")),
        "compute_seconds": result.meta["seconds"],
        "strategy": result.meta["strategy"],
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["cnn", "mlp"], default="cnn")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--points", type=int, default=21, help="grid points per axis")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--batched", type=int, default=32, help="points per vmap pass to compare")
    ap.add_argument("--bn", default="eval", choices=["eval", "recalibrate"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--quick", action="store_true", help="11 x 11 grid, one repeat (a smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.points, args.repeats = 11, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False

    torch.manual_seed(0)
    flat = args.model == "mlp"
    model = (MLP(hidden=(64, 64)) if flat else SmallCNN()).to(device).eval()
    loader = digits_loader("train", batch_size=args.batch_size, flatten=flat)
    batches = [(x.to(device), y.to(device)) for x, y in loader]
    loss_fn = torch.nn.CrossEntropyLoss()
    dirs = random_directions(model, 2, seed=0)
    n = args.points
    num = n * n

    forward_seconds(model, batches, device, 5)  # warm-up
    configs = {"auto": "auto", "one_at_a_time": 1, "batched": args.batched}
    runs = {k: [] for k in configs}
    limits = {k: [] for k in configs}
    for _ in range(args.repeats):
        for name, bp in configs.items():
            before = forward_seconds(model, batches, device, 15)
            runs[name].append(grid_run(model, loss_fn, loader, dirs, n, bp, args.bn))
            after = forward_seconds(model, batches, device, 15)
            limits[name].append(num * (before + after) / 2)

    def med(name, key):
        return statistics.median(r[key] for r in runs[name])

    def ratio(name):
        return statistics.median(r["seconds"] / lim for r, lim in zip(runs[name], limits[name]))

    report = {
        "model": args.model,
        "num_params": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "grid": f"{n}x{n}",
        "bn": args.bn,
        "train_samples": sum(len(y) for _, y in batches),
        "batch_size": args.batch_size,
        "forward_pass_seconds": statistics.median(x / num for v in limits.values() for x in v),
        "limit_seconds": statistics.median(x for v in limits.values() for x in v),
        "auto_seconds": med("auto", "seconds"),
        "auto_strategy": [r["strategy"] for r in runs["auto"]],
        "auto_over_limit": ratio("auto"),
        "one_at_a_time_over_limit": ratio("one_at_a_time"),
        "batched_over_limit": ratio("batched"),
        "batched_points": args.batched,
        "batched_over_one_at_a_time": statistics.median(
            b["seconds"] / o["seconds"] for b, o in zip(runs["batched"], runs["one_at_a_time"])
        ),
        "coarse_5x5_fraction_auto": statistics.median(
            r["coarse_seconds"] / r["seconds"] for r in runs["auto"]
        ),
        "coarse_5x5_fraction_one_at_a_time": statistics.median(
            r["coarse_seconds"] / r["seconds"] for r in runs["one_at_a_time"]
        ),
        "repeats": args.repeats,
        "torch": torch.__version__,
    }
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


def markdown(r: dict) -> str:
    """The figures as a Markdown table."""
    g = r["grid"]
    rows = [
        (
            "setting",
            f"{r['model']} ({r['num_params']} parameters), {r['train_samples']} samples "
            f"in batches of {r['batch_size']}, BatchNorm {r['bn']}, {r['device']} "
            f"({r['device_name']}, {r['threads']} threads), torch {r['torch']}, "
            f"median of {r['repeats']}",
        ),
        ("one plain full-data forward pass", f"{1000 * r['forward_pass_seconds']:.1f} ms"),
        (
            f"{g} grid, auto strategy / {g.split('x')[0]}² forward passes (bar 1.1)",
            f"{r['auto_over_limit']:.2f} ({', '.join(sorted(set(r['auto_strategy'])))})",
        ),
        (f"{g} grid, one point at a time / forward passes", f"{r['one_at_a_time_over_limit']:.2f}"),
        (
            f"{g} grid, batched x{r['batched_points']} / forward passes",
            f"{r['batched_over_limit']:.2f}",
        ),
        (
            f"batched x{r['batched_points']} / one at a time (below 1: batching pays)",
            f"{r['batched_over_one_at_a_time']:.2f}",
        ),
        (
            "coarse 5x5 picture ready, fraction of the total (bar 0.10)",
            f"{r['coarse_5x5_fraction_auto']:.3f} (auto), "
            f"{r['coarse_5x5_fraction_one_at_a_time']:.3f} (one at a time)",
        ),
    ]
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
