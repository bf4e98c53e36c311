"""Memory of the spectral routines: leaks, the accuracy of each basis mode, large models.

Three modes:

* (default) memory kept across repeated calls in one process (a leak shows as steady
  growth). After ``--warmup`` calls, runs ``--calls`` more of each routine on one
  ``HessianOperator`` and reports, after ``gc.collect()``, the growth of the live tensors
  (count and bytes of their distinct storages, found through the garbage collector, so
  independent of the allocator) and of the resident memory (which also counts allocator
  caching, hence noisier). Products alone are the control. Model: the spectral benchmark's
  tanh MLP on the built-in digits (``--quick``: hidden layer of 32 on 300 digits).
* ``--accuracy``: the cost of each basis mode against the float64 basis on the same MLP
  (float64 products, so only the basis differs): Ritz values, weights, moments and the
  smoothed density of a float32 basis and of ``reorthogonalize="none"``, and the ghost copies
  of the top eigenvalue that the latter makes.
* ``--params P``: a ``--steps``-step density of a random-init tanh MLP of about ``P``
  parameters (4 hidden layers of width ``sqrt(P / 4)``, batch ``--batch`` of random inputs;
  nothing downloaded) on ``--device``, with the basis chosen by ``memory_budget`` (default:
  what is free after the model, see ``docs/scale.md``); reports the chosen mode, the time
  and the peak memory against the memory model.

Usage::

    python benchmarks/bench_memory.py [--calls 150] [--quick]
    python benchmarks/bench_memory.py --accuracy
    OMP_NUM_THREADS=2 python benchmarks/bench_memory.py --params 100e6 --steps 20 --device cpu
    python benchmarks/bench_memory.py --params 1e9 --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import gc
import math
import time
import warnings

import numpy as np
import torch
from _common import current_rss_mib, peak_rss_mib
from bench_spectral import problem
from torch import nn

from jupyter_curvature.operators import HessianOperator
from jupyter_curvature.spectral import eigenpairs, spectral_density
from jupyter_curvature.spectral.memory import (
    available_host_bytes,
    choose_basis,
    density_bytes,
    eigenpairs_bytes,
    format_bytes,
)

warnings.filterwarnings("ignore")


def live_tensors() -> tuple[int, int]:
    """``(count, bytes)`` of the tensors the garbage collector can reach (distinct storages)."""
    gc.collect()
    tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return len(tensors), sum(storages.values())


def growth(fn, calls: int, warmup: int) -> tuple[int, float, float]:
    """Live tensors, their MiB and the resident MiB added by ``calls`` calls of ``fn``."""
    for _ in range(warmup):
        fn()
    count0, bytes0 = live_tensors()
    rss0 = current_rss_mib()
    for _ in range(calls):
        fn()
    count1, bytes1 = live_tensors()
    return count1 - count0, (bytes1 - bytes0) / 2**20, current_rss_mib() - rss0


def accuracy(num_iters: int = 80, num_probes: int = 4) -> None:
    """Each basis mode against the float64 basis (the spectral benchmark's MLP, float64)."""
    model, loss_fn, x, y = problem("cpu", torch.float64, hidden=(32,), limit=300)
    H = HessianOperator(model, loss_fn, (x, y))
    eps = torch.finfo(torch.float32).eps
    runs = {
        "float64 basis": {},
        "float32 basis": {"basis_dtype": torch.float32},
        'reorthogonalize="none"': {"reorthogonalize": "none"},
        '"none", float32': {"reorthogonalize": "none", "basis_dtype": torch.float32},
    }
    out = {}
    for name, kw in runs.items():
        t0 = time.perf_counter()
        out[name] = spectral_density(H, num_iters=num_iters, num_probes=num_probes, seed=0, **kw)
        out[name].wall = time.perf_counter() - t0
    ref = out["float64 basis"]
    top = eigenpairs(H, k=1, tol=1e-12).eigenvalues[0].item()
    scale = ref.scale
    grid = np.linspace(ref.stats.smallest - 0.05 * scale, ref.stats.largest + 0.05 * scale, 800)
    curve = ref.density(grid).density
    print(
        f"n = {H.shape[0]}, {num_iters} steps x {num_probes} probes, float64 products; "
        f"errors against the float64 basis, in units of ||A|| = {scale:.4g}:"
    )
    print(
        f"{'mode':24s} {'max |d theta|':>14s} {'max |d moment_j|, j<2m':>23s} "
        f"{'density L1':>11s} {'copies of top':>14s} {'s':>6s}"
    )
    for name, d in out.items():
        same_steps = d.ritz_values.shape == ref.ritz_values.shape
        dtheta = (
            (d.ritz_values - ref.ritz_values).abs().max().item() / scale if same_steps else math.nan
        )
        dmom = max(
            (
                (d.weights * (d.ritz_values / scale) ** j).sum(1)
                - (ref.weights * (ref.ritz_values / scale) ** j).sum(1)
            )
            .abs()
            .max()
            .item()
            for j in range(2 * num_iters)
        )
        l1 = np.abs(d.density(grid, sigma=ref.default_sigma()).density - curve).sum() * (
            grid[1] - grid[0]
        )
        copies = (d.ritz_values - top).abs().le(1e-6 * abs(top)).sum(1).tolist()
        print(
            f"{name:24s} {dtheta:9.2e} ({dtheta / eps:5.1f} eps32) {dmom:9.2e} ({dmom / eps:5.2f} eps32) "
            f"{l1:11.2e} {str(copies):>14s} {d.wall:6.2f}"
        )
    print(
        "(eps32 = 1.19e-7; Ritz values and density of the 'none' rows differ by design: ghost copies"
    )
    print(
        " of converged values split their weight; the moments j < 2m are those of the float64 basis)"
    )


class WideMLP(nn.Sequential):
    """``in -> w -> w -> w -> w -> classes`` with tanh: about ``3 w^2`` parameters."""

    def __init__(self, params: float, inputs: int = 256, classes: int = 10, device=None):
        w = int(math.sqrt(params / 3))
        sizes = [inputs, w, w, w, w]
        layers: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b, device=device), nn.Tanh()]
        super().__init__(*layers, nn.Linear(w, classes, device=device))


def large(params: float, steps: int, device: str, probes: int, batch: int, budget: float | None,
          reorthogonalize: str) -> None:  # fmt: skip
    """A ``steps``-step density of a random-init MLP of about ``params`` parameters."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        model = WideMLP(params, device=device)
    n = sum(p.numel() for p in model.parameters())
    x = torch.randn(batch, 256, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    H = HessianOperator(model, nn.CrossEntropyLoss(), (x, y))
    built = time.perf_counter() - t0
    weights = 4 * n
    # what a Hessian product holds beside the weights: the gradient (kept graph, create_graph)
    # and the double backward's vector and result, each n floats, plus activations
    # (batch x widths, negligible here): about 4 n floats
    graph = 4 * 4 * n
    if device == "cuda":
        torch.cuda.synchronize()
        free = torch.cuda.mem_get_info()[0]
        torch.cuda.reset_peak_memory_stats()
    else:
        free = available_host_bytes() or 0
    if budget is None:
        budget = 0.9 * (free - graph)  # the weights are already allocated
    print(
        f"model: {n / 1e6:.1f}M parameters (width {model[0].out_features}), batch {batch}, "
        f"{device}, built in {built:.1f} s; weights {format_bytes(weights)}, product "
        f"estimate {format_bytes(graph)}, free {format_bytes(free)}, memory_budget "
        f"{format_bytes(budget)}"
    )
    for dt in (torch.float64, torch.float32):
        for how in ("full", "none"):
            print(
                f"  model: {str(dt)[6:]:8s} {how:5s} basis {format_bytes(density_bytes(n, steps, probes, dt, how, torch.float32))}"
            )
    print(
        f"  model: certified top-5 (max_basis 20, verify='product', float32): "
        f"{format_bytes(eigenpairs_bytes(n, 5, 20, 'product', torch.float32))}"
    )
    mode = choose_basis(
        lambda dt, how: density_bytes(n, steps, probes, dt, how, torch.float32),
        torch.device(device),
        budget,
        None,
        None,
        reorthogonalize,
        working=4 * n * probes,
    )  # the choice spectral_density makes below, shown
    print(f"chosen: {mode.describe()}")
    rss0 = current_rss_mib()
    t0 = time.perf_counter()
    d = spectral_density(H, num_iters=steps, num_probes=probes, seed=0, memory_budget=budget,
                         reorthogonalize=reorthogonalize)  # fmt: skip
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    print(
        f"density: {d.num_steps} steps x {probes} probes in {wall:.1f} s "
        f"({d.product_seconds:.1f} s in products); Ritz values in "
        f"[{d.stats.smallest:.4g}, {d.stats.largest:.4g}], trace ~ {d.stats.trace:.4g}"
    )
    if device == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 1e9:.2f} GB")
    print(
        f"peak RSS {peak_rss_mib() / 1024:.2f} GiB (RSS before the density {rss0 / 1024:.2f} GiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--accuracy", action="store_true", help="each basis mode against float64")
    parser.add_argument("--params", type=float, help="a density of a model this large")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--probes", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--memory-budget", type=float, help="bytes (default: what is free)")
    parser.add_argument("--reorthogonalize", default="full", choices=["full", "none"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.accuracy:
        return accuracy()
    if args.params:
        return large(args.params, args.steps, args.device, args.probes, args.batch,
                     args.memory_budget, args.reorthogonalize)  # fmt: skip
    hidden, limit = ((32,), 300) if args.quick else ((256, 128), None)
    model, loss_fn, x, y = problem("cpu", torch.float32, hidden=hidden, limit=limit)
    H = HessianOperator(model, loss_fn, (x, y))
    v = torch.ones(H.shape[0])
    routines = {
        "eigenpairs(k=3)": lambda: eigenpairs(H, k=3, seed=0),
        "spectral_density(30 steps)": lambda: spectral_density(H, num_iters=30, seed=0),
        "H @ v (control)": lambda: H @ v,
    }
    print(f"n = {H.shape[0]}, {args.calls} calls each after {args.warmup}; growth after gc:")
    print(f"{'':28s} {'tensors':>8s} {'tensor MiB':>11s} {'RSS MiB':>8s}")
    for name, fn in routines.items():
        count, mib, rss = growth(fn, args.calls, args.warmup)
        print(f"{name:28s} {count:8d} {mib:11.2f} {rss:8.1f}")


if __name__ == "__main__":
    main()
