"""A sharded Lanczos basis (``shard_basis=True``) against the replicated one: 2 gloo CPU processes.

Run: ``python benchmarks/bench_sharded_basis.py`` (``--quick`` for a short run;
``--device cuda``: both processes on GPU 0, gloo reducing CUDA tensors, and also a sharded
basis held in CPU memory).

Both runs are in the same two processes (one thread each), on the same data-parallel Hessian
(a tanh MLP on the built-in digits, each rank half of ``--samples`` digits), alternately,
every repeat starting at a barrier; the time is the slowest rank's, the median of the
repeats. Printed:

* the Lanczos vectors held per rank, measured (``lanczos(keep_basis=True).basis``) and by the
  memory model (``spectral.memory.density_bytes``) for both modes;
* the time of a ``spectral_density`` run of each mode and their ratio: what the all-gather
  of every product's input and the all-reduces of the inner products cost;
* the largest difference of the Ritz values between the modes (rounding).

The machine's cores are shared with other jobs: the times are noisy, the ratio less so.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.utils.data import Subset

import jupyter_curvature as jc
import jupyter_curvature.distributed as jd
from jupyter_curvature.data.builtin import digits_dataset
from jupyter_curvature.models.small import MLP
from jupyter_curvature.spectral.memory import density_bytes


def _job(hidden: int, samples: int, steps: int, probes: int, repeats: int, device: str) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = Subset(digits_dataset("train", flatten=True, dtype=torch.float64), range(samples))
    model = MLP(64, (hidden, hidden), 10).double().to(device)
    H = jc.HessianOperator(model, nn.CrossEntropyLoss(), jd.shard_loader(data, 64))
    n, W = H.shape[0], jd.get_world_size()
    kw = dict(num_iters=steps, num_probes=probes, seed=0, keep_graphs=False)

    basis = {
        "full": jc.spectral.lanczos(H, steps, probes, keep_basis=True).basis,
        "sharded": jc.spectral.lanczos(jd.ShardedBasis(H), steps, probes, keep_basis=True).basis,
    }
    times: dict[str, list[float]] = {"full": [], "sharded": []}
    ritz = {}
    for _ in range(repeats):
        for mode in ("full", "sharded"):  # interleaved rounds
            jd.barrier()
            t0 = time.perf_counter()
            result = jd.spectral_density(H, shard_basis=mode == "sharded", **kw)
            elapsed = torch.tensor([time.perf_counter() - t0])
            torch.distributed.all_reduce(elapsed, op=torch.distributed.ReduceOp.MAX)
            times[mode].append(float(elapsed))
            ritz[mode] = result.ritz_values
    host = {}
    if device != "cpu":  # the basis in (pinned) CPU memory, the products on the GPU
        held = jd.spectral_density(H, shard_basis=True, basis_device="cpu", **kw).ritz_values
        host["host_ritz_diff"] = float((held.cpu() - ritz["full"].cpu()).abs().max())
    return {
        **host,
        "n": n,
        "W": W,
        "basis_bytes": {m: b.numel() * b.element_size() for m, b in basis.items()},
        "model_bytes": {
            "full": density_bytes(n, steps, probes, torch.float64, op_dtype=torch.float64),
            "sharded": density_bytes(
                n, steps, probes, torch.float64, op_dtype=torch.float64, world_size=W
            ),
        },
        "times": times,
        "ritz_diff": float((ritz["full"] - ritz["sharded"]).abs().max() / ritz["full"].abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--probes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.steps, args.repeats = 128, 20, 3
    job_args = (args.hidden, args.samples, args.steps, args.probes, args.repeats, args.device)
    out = jd.launch(_job, 2, job_args, timeout=600, join_timeout=3600)[0]
    mb = 1e6
    print(f"n = {out['n']}, W = {out['W']}, {args.steps} steps x {args.probes} probes, float64")
    for mode in ("full", "sharded"):
        t = statistics.median(out["times"][mode])
        print(
            f"{mode:8s} basis per rank {out['basis_bytes'][mode] / mb:8.1f} MB measured, "
            f"model (basis + working + gathered) {out['model_bytes'][mode] / mb:8.1f} MB; "
            f"density {t:.3f} s (median of {args.repeats})"
        )
    ratio = statistics.median(out["times"]["sharded"]) / statistics.median(out["times"]["full"])
    print(f"time sharded / full: {ratio:.2f}; Ritz values differ by {out['ritz_diff']:.1e} rel.")
    if "host_ritz_diff" in out:
        print(f"sharded basis in CPU memory: Ritz values differ by {out['host_ritz_diff']:.1e}")


if __name__ == "__main__":
    main()
