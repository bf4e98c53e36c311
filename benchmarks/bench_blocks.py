"""Benchmark: per-block spectra of a 12-layer tiny GPT vs one whole-model density.

Issue 17's bar: per-block spectra (``jc.block_spectra``, blocks ``"auto"``: ``wte``, ``wpe``,
each layer's attention, MLP and norms, ``ln_f``: 39 blocks) cost at most 1.3x one
whole-model SLQ density (``spectral_density`` of the full Hessian) with the same Lanczos steps
and probes. Model: Hugging Face ``GPT2LMHeadModel`` from a ``GPT2Config`` (12 layers, random
initialisation, nothing downloaded), causal-LM layout ``inputs = ids[:, :-1]``,
``targets = ids[:, 1:]``, ``outputs = lambda o: o.logits.flatten(0, 1)``.

Rounds are interleaved (whole, blocks, blocks, whole, ...) and the ratio is the median of the
per-round ratios. Then where the time goes, with kept graphs as both runs use them:

* ``t_H``: one product of the whole Hessian with ``p`` columns (one backward per column
  through the kept gradient graph of each batch);
* ``t_D``: one product of the block-diagonal operator with ``p`` columns (per column one
  backward per block, from that block's gradients to its parameters);
* ``t_j``: one column of block ``j`` alone; ``sum_j t_j / t_1`` (``t_1`` one column of ``H``)
  is the work a step of all blocks costs in whole-model backwards.

``blocks_vectorised`` is ``block_spectra(..., vectorize=True)``: per batch ONE vectorised
backward (``is_grads_batched``) for all ``b p`` block columns, ``b p`` full columns of
arithmetic in one traversal of the graph.

Usage: ``python benchmarks/bench_blocks.py [--steps 30] [--probes 4] [--rounds 3]
[--embd 32] [--seq 32] [--batch 4] [--device cpu] [--threads 2] [--warmup 1]
[--no-breakdown]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from torch import nn

warnings.filterwarnings("ignore")


def problem(args):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=12,
        n_embd=args.embd,
        n_head=2,
        vocab_size=64,
        n_positions=args.seq + 1,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config).to(args.device)
    ids = torch.randint(0, 64, (args.batch, args.seq + 1), device=args.device)
    data = (ids[:, :-1], ids[:, 1:].flatten())
    return model, nn.CrossEntropyLoss(), data


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--embd", type=int, default=32)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-breakdown", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from jupyter_curvature.operators import BlockDiagonalOperator, HessianOperator
    from jupyter_curvature.spectral import block_spectra, spectral_density

    model, loss_fn, data = problem(args)
    outputs = lambda o: o.logits.flatten(0, 1)  # noqa: E731
    opts = dict(outputs=outputs, check_deterministic=False)
    H = HessianOperator(model, loss_fn, data, **opts)
    n = H.shape[0]
    print(
        f"tiny GPT: 12 layers, n_embd {args.embd}, {n:,} parameters; batch {args.batch} x "
        f"{args.seq} tokens; {args.steps} steps x {args.probes} probes; device {args.device}, "
        f"{torch.get_num_threads()} threads"
    )

    def whole():
        return spectral_density(H, num_iters=args.steps, num_probes=args.probes)

    def blocks():
        return block_spectra(
            model, loss_fn, data, "auto", num_iters=args.steps, num_probes=args.probes, **opts
        )

    def blocks_vectorised():
        return block_spectra(
            model,
            loss_fn,
            data,
            "auto",
            num_iters=args.steps,
            num_probes=args.probes,
            vectorize=True,
            **opts,
        )

    runs = [whole, blocks, blocks_vectorised]
    for fn in runs[: args.warmup * 3]:
        fn()
    times: dict[str, list[float]] = {fn.__name__: [] for fn in runs}
    for r in range(args.rounds):
        for fn in runs if r % 2 == 0 else runs[::-1]:
            t, out = timed(fn)
            times[fn.__name__].append(t)
            if fn is blocks:
                result = out
        print("round", r, ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    b = len(result)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name in ("blocks", "blocks_vectorised"):
        ratios = [tb / tw for tb, tw in zip(times[name], times["whole"])]
        print(
            f"{name}: median {med[name]:.2f} s vs whole-model density {med['whole']:.2f} s: "
            f"ratio {statistics.median(ratios):.2f} (median of rounds; bar 1.3)"
        )
    print(
        f"blocks: {b}; block-diagonal products: {result.num_matvecs} columns; "
        f"whole: {args.steps * args.probes}"
    )

    if args.no_breakdown:
        print("\n" + result.table())
        return
    # where the time goes: one step's product, kept graphs as in both runs
    D = BlockDiagonalOperator(H, "auto")
    Hv = HessianOperator(model, loss_fn, data, vectorize=True, **opts)
    Dv = BlockDiagonalOperator(Hv, "auto")
    p = args.probes
    V = torch.randn(n, p, device=args.device)
    with H.kept_graphs(True):
        H @ V  # builds the graph
        t_H = statistics.median(timed(lambda: H @ V)[0] for _ in range(3))
        t_D = statistics.median(timed(lambda: D @ V)[0] for _ in range(3))
        with Hv.kept_graphs(True):
            Dv @ V
            t_Dv = statistics.median(timed(lambda: Dv @ V)[0] for _ in range(3))
        t_1 = statistics.median(timed(lambda: H @ V[:, :1])[0] for _ in range(3))
        per_block = []
        for j, idx in enumerate(D.indices):
            v = torch.zeros(n, 1, device=args.device)
            v[idx] = V[idx, :1]
            per_block.append((D.names[j], timed(lambda v=v: D @ v)[0]))
    summed = sum(t for _, t in per_block)
    print(
        f"one step, {p} columns: whole H {t_H * 1e3:.1f} ms, block-diagonal D {t_D * 1e3:.1f} ms "
        f"(x{t_D / t_H:.2f}); one column of H {t_1 * 1e3:.1f} ms; the {b} blocks' columns "
        f"one by one {summed * 1e3:.1f} ms = {summed / t_1:.1f} columns of H; D vectorised "
        f"(one backward for all {b} x {p} columns) {t_Dv * 1e3:.1f} ms (x{t_Dv / t_H:.2f})"
    )
    for name, t in per_block:
        print(f"  {name:<24} {t * 1e3:7.2f} ms  ({t / t_1:.2f} of a column of H)")
    print("\n" + result.table())


if __name__ == "__main__":
    main()
