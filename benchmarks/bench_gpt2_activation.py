"""GPT-2's Hessian product with ``gelu_new`` against ``gelu_pytorch_tanh`` (the same function).

Hugging Face GPT-2's default activation ``gelu_new`` is the tanh GELU written in elementary
operations, whose double backward torch composes from theirs; ``gelu_pytorch_tanh`` is one
fused kernel, which the Hessian's lean routes differentiate twice in a few passes
(``operators._lean_double_backward``). Four kept-graph operators on one batch, the same
weights: each activation with torch's double backwards everywhere ("torch") and with the lean
routes (the default, "routes"). Interleaved rounds, one thread; time over the first's in the
same round (median), and each product's relative difference from the first's.

    python benchmarks/bench_gpt2_activation.py [--layers 4] [--width 256] [--tokens 256]
        [--sequences 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import jupyter_curvature as jc
from jupyter_curvature.operators import HessianOperator
from jupyter_curvature.operators import _second_order as second_order


def gpt2(activation: str, args) -> torch.nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)  # the same weights for both activations
    config = transformers.GPT2Config(
        n_layer=args.layers,
        n_embd=args.width,
        n_head=4,
        vocab_size=1000,
        n_positions=args.tokens,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        activation_function=activation,
        attn_implementation="eager",
    )
    return transformers.GPT2LMHeadModel(config).eval()


def operator(activation: str, lean: bool, batch: dict, args) -> HessianOperator:
    saved = second_order.LEAN_ROUTES
    second_order.LEAN_ROUTES = saved if lean else {}
    try:  # the routes are taken when the kept graph is built: on the first product
        op = HessianOperator(
            gpt2(activation, args), jc.TokenCrossEntropy(), [batch], keep_graphs=True
        )
        op.reference = op @ torch.randn(op.shape[0], 1, generator=torch.Generator().manual_seed(1))
    finally:
        second_order.LEAN_ROUTES = saved
    return op


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ids = torch.randint(
        0, 1000, (args.sequences, args.tokens), generator=torch.Generator().manual_seed(0)
    )
    batch = {"input_ids": ids, "labels": ids}
    ops = {
        (activation, lean): operator(activation, lean, batch, args)
        for activation in ("gelu_new", "gelu_pytorch_tanh")
        for lean in (False, True)
    }
    v = torch.randn(
        next(iter(ops.values())).shape[0], 1, generator=torch.Generator().manual_seed(1)
    )
    seconds = {key: [] for key in ops}
    for _ in range(args.rounds):
        for key, op in ops.items():
            start = time.perf_counter()
            op @ v
            seconds[key].append(time.perf_counter() - start)
    first = next(iter(ops))
    reference = ops[first].reference
    n = ops[first].shape[0]
    print(f"# GPT-2, {args.layers} layers x {args.width}, n = {n:,}, {args.sequences} x "
          f"{args.tokens} tokens, kept graphs, {args.rounds} interleaved rounds, one thread, "
          f"torch {torch.__version__}")  # fmt: skip
    print("| activation | double backwards | product s (median) | / first (median) | rel. diff |")
    print("|---|---|---|---|---|")
    for (activation, lean), times in seconds.items():
        ratio = statistics.median(t / s for t, s in zip(times, seconds[first]))
        diff = float((ops[activation, lean].reference - reference).norm() / reference.norm())
        routes = "routes" if lean else "torch"
        print(
            f"| {activation} | {routes} | {statistics.median(times):.3f} | {ratio:.3f} | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
