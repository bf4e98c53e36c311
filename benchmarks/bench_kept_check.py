"""Cost of validating kept gradient graphs: the exact value check against one kept product.

A ``HessianOperator(keep_graphs=True)`` compares the parameters and floating-point buffers with
a copy taken when its graphs were built before every product
(:class:`~jupyter_curvature.operators.graphs.ValueSnapshot`), because torch's version counters
miss ``p.data`` edits. Model: ResNet-20 (``create("resnet20")``, eval mode), one CIFAR-shaped
batch of 128 (random values cost the same as images), float32. Interleaved rounds; medians.

    OMP_NUM_THREADS=1 python benchmarks/bench_kept_check.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from jupyter_curvature.models import create
from jupyter_curvature.operators import HessianOperator
from jupyter_curvature.operators.graphs import ValueSnapshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create("resnet20").eval()
    data = (torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,)))
    H = HessianOperator(model, nn.CrossEntropyLoss(), data, keep_graphs=True)
    v = torch.randn(H.shape[0])
    H @ v  # builds and keeps the graph
    watched = [*H.params, *(b for b in model.buffers() if b.is_floating_point())]
    snapshot = ValueSnapshot(watched)
    fns = {"kept product": lambda: H @ v, "value check": lambda: snapshot.matches(watched)}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ratio = statistics.median(c / p for c, p in zip(times["value check"], times["kept product"]))
    print(f"{len(watched)} tensors, {sum(t.numel() for t in watched)} entries checked")
    for name, ts in times.items():
        print(f"{name:14s} median {statistics.median(ts) * 1e3:10.3f} ms")
    print(f"value check / kept product: {ratio:.2e} (median of per-round ratios)")


if __name__ == "__main__":
    main()
