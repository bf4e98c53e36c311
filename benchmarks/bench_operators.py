"""Cost of one full-data Hessian / GGN product as a ratio to one full-data gradient.

A small CNN (two conv blocks with BatchNorm and max-pooling, about 60k parameters) on
CIFAR-shaped data (3 x 32 x 32, several batches of 128; random values, which cost the same as
real images). Every method is timed in the same process, in interleaved rounds (each round
runs every method once, so a slow spell of the shared machine hits all of them), and reported
as the median over rounds of its time divided by the gradient's time in the same round. The
gradient is the physical floor: Pearlmutter's bound puts a Hessian-vector product at a small
constant times a gradient. Peak memory is measured per method in a fresh subprocess on CPU
(ru_maxrss over the baseline) and with ``torch.cuda.max_memory_allocated`` on CUDA.

    python benchmarks/bench_operators.py                  # full run, CPU, one thread
    python benchmarks/bench_operators.py --quick          # fewer batches and rounds
    python benchmarks/bench_operators.py --device cuda    # on a GPU (TF32 off)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad, jvp

sys.path.insert(0, str(Path(__file__).parent))
from _common import markdown_table  # noqa: E402

from jupyter_curvature.models import SmallCNN  # noqa: E402
from jupyter_curvature.operators import GGNOperator, HessianOperator  # noqa: E402

FLOOR = "gradient (floor)"
#: methods timed on a block of 4 vectors and reported per vector
PER_VECTOR = {
    "Hessian @ 4-block, per vector": 4,
    "Hessian @ 4-block vectorised (is_grads_batched), per vector": 4,
    "GGN @ 4-block, per vector": 4,
}


def setup(num_batches: int, batch_size: int = 128, device: str = "cpu"):
    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, in_channels=3, width=32, image_size=32).eval().to(device)
    data = [
        (
            torch.randn(batch_size, 3, 32, 32, device=device),
            torch.randint(0, 10, (batch_size,), device=device),
        )
        for _ in range(num_batches)
    ]
    return model, nn.CrossEntropyLoss(), data


def methods(model, loss_fn, data):
    """Every method as a zero-argument callable computing one full-data product (or gradient)."""
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    v = torch.randn(n, device=device)
    block = torch.randn(n, 4, device=device)
    H = HessianOperator(model, loss_fn, data)
    G = GGNOperator(model, loss_fn, data)
    H_vectorized = HessianOperator(model, loss_fn, data, vectorize=True)
    H_kept = HessianOperator(model, loss_fn, data, keep_graphs=True)
    H_kept @ v  # builds and keeps the per-batch gradient graphs; later products reuse them
    N = sum(len(y) for _, y in data)
    names, vs = H.param_names, H.unflatten(v)
    primals = tuple(p.detach() for p in params)

    def gradient():
        grads = [torch.zeros_like(p) for p in params]
        for x, y in data:
            loss = loss_fn(model(x), y) * (len(y) / N)
            for g, d in zip(grads, torch.autograd.grad(loss, params)):
                g += d

    def batch_loss(x, y):
        def loss(*ps):
            return loss_fn(functional_call(model, dict(zip(names, ps)), (x,)), y)

        return loss

    def forward_over_reverse():  # torch.func.jvp of grad: the other exact single-vector method
        total = [torch.zeros_like(p) for p in params]
        for x, y in data:
            gradient_fn = grad(batch_loss(x, y), argnums=tuple(range(len(primals))))
            _, hv = jvp(gradient_fn, primals, tuple(vs))
            for t, h in zip(total, hv):
                t += h * (len(y) / N)

    def autograd_functional_hvp():  # the slow peer path (applies double backward twice)
        for x, y in data:
            torch.autograd.functional.hvp(batch_loss(x, y), primals, tuple(vs))

    def ggn_torch_func():  # the block path on one vector: vjp + vmapped jvp (recomputes the primal)
        G._accumulate(v[:, None], G._batch_ggn_functional)

    return {
        FLOOR: gradient,
        "Hessian @ v (double backward, the default)": lambda: H @ v,
        "Hessian @ v (forward-over-reverse, torch.func)": forward_over_reverse,
        "Hessian @ 4-block, per vector": lambda: H @ block,
        "Hessian @ 4-block vectorised (is_grads_batched), per vector": lambda: H_vectorized @ block,
        "Hessian @ v, graphs kept (keep_graphs=True)": lambda: H_kept @ v,
        "GGN @ v (dual numbers + one backward, the default)": lambda: G @ v,
        "GGN @ v (torch.func vjp + jvp)": ggn_torch_func,
        "GGN @ 4-block, per vector": lambda: G @ block,
        "torch.autograd.functional.hvp": autograd_functional_hvp,
    }


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_ratios(fns: dict, rounds: int, device: str) -> tuple[dict, dict]:
    """Per method: median over rounds of (time / gradient time in that round), and median time."""
    for fn in fns.values():  # warm-up: allocator, kernels, kept graphs
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / PER_VECTOR.get(name, 1))
    ratios = {
        name: statistics.median(t / f for t, f in zip(ts, times[FLOOR]))
        for name, ts in times.items()
    }
    return ratios, {name: statistics.median(ts) for name, ts in times.items()}


def memory_of(name: str, num_batches: int, device: str) -> float:
    """Peak memory (MiB) added by one call of method ``name``."""
    if device.startswith("cuda"):
        model, loss_fn, data = setup(num_batches, device=device)
        fn = methods(model, loss_fn, data)[name]
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
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
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    num_batches, rounds = (3, 3) if args.quick else (8, 5)
    if args.device == "cpu":
        torch.set_num_threads(1)
    else:  # curvature in true float32: TF32 would change the products at the 1e-3 level
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model, loss_fn, data = setup(num_batches, device=args.device)
    fns = methods(model, loss_fn, data)
    n = sum(p.numel() for p in model.parameters())
    ratios, times = interleaved_ratios(fns, rounds, args.device)
    rows, figures = [], {}
    for name in fns:
        mem = memory_of(name, num_batches, args.device)
        figures[name] = {
            "seconds": times[name],
            "ratio_to_gradient": ratios[name],
            "extra_peak_memory_mib": mem,
        }
        rows.append([name, f"{times[name] * 1e3:.1f}", f"{ratios[name]:.2f}x", f"{mem:.0f}"])
    where = "1 thread" if args.device == "cpu" else torch.cuda.get_device_name(args.device)
    print(
        f"Small CNN, {n:,} parameters, {num_batches} batches x 128 CIFAR-shaped images, "
        f"{args.device} ({where}), median of {rounds} interleaved rounds; torch {torch.__version__}\n"
    )
    print(markdown_table(["method", "ms", "vs gradient", "extra peak memory (MiB)"], rows))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
