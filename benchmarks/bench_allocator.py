"""glibc's allocator on the CPU: its default against freed memory kept in the process.

glibc maps every block above its mmap threshold (at most 32 MiB) afresh and unmaps it when it
is freed, and gives freed heap memory back above its trim threshold; the next block of that
size is faulted in again and zero-filled by the kernel. A Hessian product allocates and frees
the same activation-sized temporaries every time. With ``MALLOC_MMAP_MAX_=0`` (every block
from the heap) and a trim threshold no run reaches, set in the environment of the process
(Python, or ``jupyter lab`` for its kernels), freed blocks are reused instead.

Each workload runs in its own Python process, alternately with glibc's default and with
those two variables, ``--rounds`` times (interleaved: the machine may be shared); a process
times its calls after a warm-up and reports the median and its minor page faults per call:

* ``resnet20``, ``vit_tiny``: a kept-graph Hessian product (32 CIFAR-shaped images,
  ``bench_scale``'s models);
* ``attention``: the double backward of causal attention of GPT-2's shape at 1024 tokens
  (2 x 4 heads x 1024 x 64; the math kernel the Hessian's graphs take);
* ``top5``: a whole certified ``eigenpairs(k=5)`` run on ResNet-20 (32 images).

One thread. Time with the variables over time without, per round (median).

    python benchmarks/bench_allocator.py [--rounds 3] [--only resnet20,attention]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

KEEP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}
WORKLOADS = ("resnet20", "vit_tiny", "attention", "top5")


def workload(name: str):
    """A closure for one call of the workload, built (and warmed) outside the timing."""
    from bench_scale import build_model, make_data

    from jupyter_curvature.operators import HessianOperator
    from jupyter_curvature.operators._second_order import twice_differentiable
    from jupyter_curvature.spectral import eigenpairs

    if name == "attention":
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(2, 4, 1024, 64, generator=g).requires_grad_() for _ in range(3))
        with twice_differentiable():  # the math kernel, as in the Hessian's graphs
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        cotangent = torch.randn(out.shape, generator=g).requires_grad_()
        firsts = torch.autograd.grad(out, [q, k, v], cotangent, create_graph=True)
        seconds = [torch.randn(t.shape, generator=g) for t in firsts]
        return lambda: torch.autograd.grad(firsts, [cotangent, q, k, v], seconds, retain_graph=True)
    model = build_model("resnet20" if name == "top5" else name, "cpu")
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), make_data(32, 32, "cpu"))
    if name == "top5":
        return lambda: eigenpairs(op, k=5, seed=0)
    v = torch.randn(op.shape[0], 1, generator=torch.Generator().manual_seed(1))
    return lambda: op @ v


def child(name: str, calls: int) -> None:
    """Time ``calls`` calls after one warm-up; print a JSON line."""
    torch.set_num_threads(1)
    call = workload(name)
    call()
    times, faults = [], []
    for _ in range(calls):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"seconds": statistics.median(times), "faults": statistics.median(faults)}))


def run(name: str, keep: bool, calls: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in KEEP}
    if keep:
        env.update(KEEP)
    here = Path(__file__).parent
    command = [sys.executable, str(Path(__file__)), "--child", name, "--calls", str(calls)]
    out = subprocess.run(command, env=env, cwd=here, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(WORKLOADS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=5, help="timed calls per process")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.calls)
    names = args.only.split(",")
    rows = {(n, keep): [] for n in names for keep in (False, True)}
    for _ in range(args.rounds):
        for name in names:
            for keep in (False, True):
                rows[name, keep].append(run(name, keep, 2 if name == "top5" else args.calls))
    print(f"# glibc allocator, {args.rounds} interleaved rounds of one process each, one thread, "
          f"torch {torch.__version__}")  # fmt: skip
    print("| workload | default s | faults per call | kept s | faults per call | kept / default (median of rounds) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in names:
        plain, kept = rows[name, False], rows[name, True]
        ratio = statistics.median(k["seconds"] / p["seconds"] for k, p in zip(kept, plain))
        cells = [statistics.median(r[key] for r in rows_) for rows_ in (plain, kept) for key in ("seconds", "faults")]  # fmt: skip
        print(f"| {name} | {cells[0]:.3f} | {cells[1]:.0f} | {cells[2]:.3f} | {cells[3]:.0f} | {ratio:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
