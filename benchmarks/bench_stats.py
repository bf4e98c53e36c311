"""Benchmark: per-sample gradient statistics against one full-data gradient and a Python loop.

The bar (issue 4): the per-sample gradient variance of a small CNN over 1024 samples costs at
most 3x one gradient of the mean loss over the same 1024 samples (one forward and backward).
A Python loop over samples is the naive alternative. In the same run, on the same data:

* ``gradient``: one forward + backward of the mean loss over all samples (the physical limit);
* ``per-sample stats``: ``gradient_statistics(..., per_sample=True)`` (vmap(grad) in chunks,
  streaming moments);
* ``raw vmap(grad)``: ``torch.func.vmap(torch.func.grad(...))`` alone, to show the cost of the
  statistics around it;
* ``mini-batch stats (B=128)``: ``gradient_statistics(..., batch_size=128)``;
* ``Python loop``: a gradient per sample, summed (timed on a subset and scaled; ``--loop-samples``).

Times are medians of ``--repeats`` runs, reported as ratios to the gradient. The machine may
be shared and noisy: compare ratios, not absolute times.

Usage::

    python benchmarks/bench_stats.py            # 1024 samples, 15 repeats
    python benchmarks/bench_stats.py --quick    # 256 samples, 3 repeats
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from jupyter_curvature.data import digits_dataset
from jupyter_curvature.models import SmallCNN
from jupyter_curvature.stats import gradient_statistics


def interleaved_medians(fns: list, repeats: int) -> list[float]:
    """Median time of each function, timed round-robin so that load changes hit all alike."""
    for fn in fns:
        fn()  # warm-up (allocations, dispatch caches)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--loop-samples", type=int, default=256)
    parser.add_argument("--width", type=int, default=8, help="SmallCNN width")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="256 samples, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.repeats, args.loop_samples = 256, 3, 64
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    x, y = digits_dataset("train", limit=args.samples).tensors
    model = SmallCNN(width=args.width).eval()  # float32, BatchNorm on running statistics
    loss_fn = nn.CrossEntropyLoss()
    params = list(model.parameters())
    num_params = sum(p.numel() for p in params)

    def full_gradient():
        torch.autograd.grad(loss_fn(model(x), y), params)

    def per_sample_stats():
        gradient_statistics(model, loss_fn, (x, y), per_sample=True)

    named = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def sample_loss(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    per_sample_grad = vmap(grad(sample_loss), in_dims=(None, 0, 0))

    def raw_vmap():
        per_sample_grad(named, x, y)

    def minibatch_stats():
        gradient_statistics(model, loss_fn, (x, y), batch_size=min(128, args.samples // 2))

    m = min(args.loop_samples, args.samples)

    def loop():
        total = [torch.zeros_like(p) for p in params]
        for i in range(m):
            g = torch.autograd.grad(loss_fn(model(x[i : i + 1]), y[i : i + 1]), params)
            for t, gi in zip(total, g, strict=True):
                t += gi * gi

    mb = min(128, args.samples // 2)
    names = [
        "gradient (one forward + backward, all samples)",
        "per-sample stats: gradient_statistics(per_sample=True)",
        "raw torch.func vmap(grad), no statistics",
        f"mini-batch stats, batch_size={mb}",
    ]
    seconds = interleaved_medians(
        [full_gradient, per_sample_stats, raw_vmap, minibatch_stats], args.repeats
    )
    seconds.append(interleaved_medians([loop], max(1, args.repeats // 3))[0] * args.samples / m)
    names.append(f"Python loop over samples (timed on {m}, scaled)")
    rows = list(zip(names, seconds, strict=True))
    base = seconds[0]
    print(
        f"SmallCNN(width={args.width}), {num_params} parameters, {args.samples} digits samples, "
        f"float32, CPU, {args.threads} thread(s), torch {torch.__version__}, "
        f"median of {args.repeats} repeats\n"
    )
    print("| computation | time (ms) | ratio to one gradient |")
    print("|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e3:.1f} | {seconds / base:.2f}x |")
    ratio = rows[1][1] / base
    print(
        f"\nbar: per-sample statistics <= 3x one gradient: {'met' if ratio <= 3 else 'NOT met'} ({ratio:.2f}x)"
    )


if __name__ == "__main__":
    main()
