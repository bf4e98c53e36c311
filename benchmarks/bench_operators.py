"""Cost of one full-data Hessian / GGN product as a ratio to one full-data gradient.

A small CNN (two conv blocks with BatchNorm, about 50k parameters) on CIFAR-shaped data
(3 x 32 x 32, several batches of 128; random values, which cost the same as real images).
Every method is timed in the same process and reported relative to the gradient, which is
the physical floor (Pearlmutter's bound: an HVP costs a small constant times a gradient).
Peak memory is measured per method in a fresh subprocess (ru_maxrss over the baseline).

    python benchmarks/bench_operators.py            # full run
    python benchmarks/bench_operators.py --quick    # fewer batches and repeats
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import markdown_table, median_time  # noqa: E402

from jupyter_curvature.models import SmallCNN  # noqa: E402
from jupyter_curvature.operators import GGNOperator, HessianOperator  # noqa: E402


def setup(num_batches: int, batch_size: int = 128):
    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, in_channels=3, width=32, image_size=32).eval()
    data = [
        (torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,)))
        for _ in range(num_batches)
    ]
    return model, nn.CrossEntropyLoss(), data


def methods(model, loss_fn, data):
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    v = torch.randn(n)
    block = torch.randn(n, 4)
    H = HessianOperator(model, loss_fn, data)
    G = GGNOperator(model, loss_fn, data)
    H_kept = HessianOperator(model, loss_fn, data, keep_graphs=True)
    H_kept @ v  # builds and keeps the per-batch gradient graphs; later products reuse them
    N = sum(len(y) for _, y in data)

    def gradient():
        grads = [torch.zeros_like(p) for p in params]
        for x, y in data:
            loss = loss_fn(model(x), y) * (len(y) / N)
            for g, d in zip(grads, torch.autograd.grad(loss, params)):
                g += d

    def autograd_functional_hvp():  # the slow peer path (applies double backward twice)
        vs = H.unflatten(v)
        for x, y in data:

            def f(*ps, x=x, y=y):
                out = torch.func.functional_call(model, dict(zip(H.param_names, ps)), (x,))
                return loss_fn(out, y)

            torch.autograd.functional.hvp(f, tuple(p.detach() for p in params), tuple(vs))

    return {
        "gradient (floor)": gradient,
        "Hessian @ v (ours, double backward)": lambda: H @ v,
        "GGN @ v (ours, jvp + vjp)": lambda: G @ v,
        "Hessian @ 4-block, per vector": lambda: H @ block,
        "Hessian @ v, graphs kept (keep_graphs=True)": lambda: H_kept @ v,
        "GGN @ 4-block, per vector": lambda: G @ block,
        "torch.autograd.functional.hvp": autograd_functional_hvp,
    }


PER_VECTOR = {"Hessian @ 4-block, per vector": 4, "GGN @ 4-block, per vector": 4}


def memory_of(name: str, num_batches: int) -> float:
    """Peak RSS added by one call of method ``name``, measured in a fresh interpreter."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_operators as b, torch;"
        "from _common import extra_peak_rss_mib;"
        "torch.set_num_threads(1);"
        f"m, l, d = b.setup({num_batches}); fns = b.methods(m, l, d);"
        f"print(extra_peak_rss_mib(fns[{name!r}]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    num_batches, repeats = (3, 3) if args.quick else (8, 7)
    torch.set_num_threads(1)
    model, loss_fn, data = setup(num_batches)
    fns = methods(model, loss_fn, data)
    n = sum(p.numel() for p in model.parameters())
    times = {
        name: median_time(fn, repeats=repeats) / PER_VECTOR.get(name, 1) for name, fn in fns.items()
    }
    floor = times["gradient (floor)"]
    rows, figures = [], {}
    for name, t in times.items():
        mem = memory_of(name, num_batches)
        figures[name] = {"seconds": t, "ratio_to_gradient": t / floor, "extra_peak_rss_mib": mem}
        rows.append([name, f"{t * 1e3:.1f}", f"{t / floor:.2f}x", f"{mem:.0f}"])
    print(
        f"Small CNN, {n:,} parameters, {num_batches} batches x 128 CIFAR-shaped images, "
        f"1 thread, median of {repeats}; torch {torch.__version__}\n"
    )
    print(markdown_table(["method", "ms", "vs gradient", "extra peak RSS (MiB)"], rows))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
