"""The lean double backwards (``operators._lean_double_backward``) against torch's own.

A kept-graph Hessian product on a network of the zoo, built three ways on one operator's data:
torch's double backwards everywhere ("torch"), the eval-mode BatchNorm route only ("bn"), the
BatchNorm and convolution routes (the default, "bn+conv"). Interleaved rounds of products,
one thread; each route's time over torch's in the same round (median), and the products'
relative difference (float32 rounding: the routes add in another order).

    python benchmarks/bench_lean_double_backward.py [--model resnet20] [--images 32]
        [--columns 1] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from jupyter_curvature.operators import HessianOperator
from jupyter_curvature.operators import _second_order as second_order
from jupyter_curvature.operators._lean_double_backward import LEAN_ROUTES

VARIANTS = {
    "torch": {},
    "bn": {F.batch_norm: LEAN_ROUTES[F.batch_norm]},
    "bn+conv": LEAN_ROUTES,
}


@contextmanager
def routes(table: dict):
    """Build graphs with only ``table``'s lean routes."""
    saved = second_order.LEAN_ROUTES
    second_order.LEAN_ROUTES = table
    try:
        yield
    finally:
        second_order.LEAN_ROUTES = saved


def main() -> None:
    from bench_scale import build_model, make_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--columns", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(args.model, "cpu")  # eval mode: BatchNorm on running statistics
    data = make_data(args.images, args.images, "cpu")
    loss_fn = torch.nn.CrossEntropyLoss()
    ops, products = {}, {}
    for name, table in VARIANTS.items():
        with routes(table):
            ops[name] = HessianOperator(model, loss_fn, data, keep_graphs=True)
            v = torch.randn(
                ops[name].shape[0], args.columns, generator=torch.Generator().manual_seed(1)
            )
            products[name] = ops[name] @ v  # builds and keeps the graph with these routes
    seconds = {name: [] for name in ops}
    for _ in range(args.rounds):
        for name, op in ops.items():
            start = time.perf_counter()
            op @ v
            seconds[name].append(time.perf_counter() - start)
    n = ops["torch"].shape[0]
    print(f"# {args.model}, n = {n:,}, {args.images} images, {args.columns} column(s), "
          f"{args.rounds} interleaved rounds, one thread, torch {torch.__version__}")  # fmt: skip
    print("| double backward | product s (median) | / torch's (median of rounds) | rel. diff |")
    print("|---|---|---|---|")
    reference = products["torch"]
    for name, times in seconds.items():
        ratio = statistics.median(t / s for t, s in zip(times, seconds["torch"]))
        diff = float((products[name] - reference).norm() / reference.norm())
        print(f"| {name} | {statistics.median(times):.3f} | {ratio:.3f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
