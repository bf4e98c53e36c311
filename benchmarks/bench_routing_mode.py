"""Cost of the second-order routing mode (``operators._second_order.twice_differentiable``).

The mode sees every torch call of a Hessian product's forward; a model that calls none of
the rerouted operations (hardsigmoid, fused attention, normalize) does not need it, so
``HessianOperator`` enters it only when the first batch routed a call. This measures what
that saves: the same operator, the mode forced on and off, interleaved rounds of products
on a tanh MLP 64-256-128-10 (256 samples, one thread); the median ratio on / off.

    python benchmarks/bench_routing_mode.py [--rounds 15] [--products 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import jupyter_curvature as jc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--products", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 128), nn.Tanh(), nn.Linear(128, 10)
    )
    x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
    H = jc.HessianOperator(model, nn.CrossEntropyLoss(), (x, y))
    assert H._reroute is False  # the operator itself leaves the mode off for this model
    v = torch.randn(H.shape[0])
    ratios = []
    for _ in range(args.rounds):
        seconds = {}
        for on in (False, True):
            H._reroute = on
            start = time.perf_counter()
            for _ in range(args.products):
                H @ v
            seconds[on] = time.perf_counter() - start
        ratios.append(seconds[True] / seconds[False])
    print(
        f"mode on / off: median {statistics.median(ratios):.3f} over {args.rounds} interleaved "
        f"rounds of {args.products} products (spread {min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
