"""The lean double backwards (``operators._lean_double_backward``) against torch's own.

A Hessian product (kept graph, or with ``--fresh`` built in each product) on a network of
``bench_scale`` (ResNet-20, ResNet-18, timm's ViT-tiny, torchvision's EfficientNet-B0), built
several ways on one operator's data: torch's double backwards everywhere ("torch"), some of the
route families ("bn": eval-mode BatchNorm, "conv": convolutions, "ln": LayerNorm, "gelu":
GELU, "silu": SiLU; "+" joins them) and all of them (the default, "all"). Interleaved rounds
of products, one thread; each variant's time over torch's in the same round (median), and the
products' relative difference (float32 rounding: the routes add in another order).

With ``--ops``, one double backward per operation instead, torch's against the route's on
ViT-tiny's activation sizes at 32 images (LayerNorm on 2080 x 192, the activations on
2080 x 768): the time of ``autograd.grad`` of the first backward's outputs, interleaved.

    python benchmarks/bench_lean_double_backward.py [--model resnet20] [--images 32]
        [--variants bn,bn+conv] [--columns 1] [--fresh] [--rounds 7]
    python benchmarks/bench_lean_double_backward.py --ops [--rounds 7]
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

FAMILIES = {
    "bn": [F.batch_norm],
    "conv": [F.conv1d, F.conv2d, F.conv3d],
    "ln": [F.layer_norm],
    "gelu": [F.gelu],
    "silu": [F.silu],
}
#: the variants measured by default besides "torch" and "all": each family the model uses
DEFAULT_VARIANTS = {
    "resnet20": "bn,bn+conv",
    "resnet18": "bn,bn+conv",
    "vit_tiny": "ln,gelu",
    "efficientnet_b0": "bn+conv,silu",
}


def variant_routes(name: str) -> dict:
    """The lean routes of a variant: "torch" none, "all" every one, else "+"-joined families."""
    if name == "torch":
        return {}
    if name == "all":
        return LEAN_ROUTES
    return {f: LEAN_ROUTES[f] for family in name.split("+") for f in FAMILIES[family]}


@contextmanager
def routes(table: dict):
    """Build graphs with only ``table``'s lean routes."""
    saved = second_order.LEAN_ROUTES
    second_order.LEAN_ROUTES = table
    try:
        yield
    finally:
        second_order.LEAN_ROUTES = saved


#: --ops: (name, torch function, keyword arguments, activation shape)
OPERATIONS = [
    ("layer_norm", F.layer_norm, {"normalized_shape": (192,)}, (2080, 192)),
    ("gelu", F.gelu, {}, (2080, 768)),
    ("gelu tanh", F.gelu, {"approximate": "tanh"}, (2080, 768)),
    ("silu", F.silu, {}, (2080, 768)),
]


def double_backward_call(function, kwargs: dict, shape: tuple[int, ...]):
    """A closure timing one double backward of ``function`` (its first backward's outputs
    differentiated with respect to the output gradient, the input and any weight)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).requires_grad_()
    affine = {}
    if "normalized_shape" in kwargs:  # LayerNorm: a weight and a bias too
        affine = {
            k: torch.rand(shape[-1], generator=g).add_(0.5).requires_grad_()
            for k in ("weight", "bias")
        }
    y = function(x, **kwargs, **affine)
    grad = torch.randn(shape, generator=g).requires_grad_()
    firsts = torch.autograd.grad(y, [x, *affine.values()], grad, create_graph=True)
    cotangents = [torch.randn(t.shape, generator=g) for t in firsts]
    targets = [grad, x, *affine.values()][:3]  # the bias's gradient does not depend on it
    return lambda: torch.autograd.grad(firsts, targets, cotangents, retain_graph=True)


def operations(rounds: int) -> None:
    """``--ops``: per-call double backwards, torch's against the routes'."""
    calls = {
        (name, variant): double_backward_call(
            LEAN_ROUTES[f] if variant == "route" else f, kw, shape
        )
        for name, f, kw, shape in OPERATIONS
        for variant in ("torch", "route")
    }
    seconds = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            call()  # warm: the first call of each round touches fresh memory for both alike
            start = time.perf_counter()
            call()
            seconds[key].append(time.perf_counter() - start)
    print(
        f"# one double backward per call, {rounds} interleaved rounds, one thread, torch {torch.__version__}"
    )
    print(
        "| operation | shape | torch's ms (median) | route's ms (median) | route / torch (median) |"
    )
    print("|---|---|---|---|---|")
    for name, _, _, shape in OPERATIONS:
        ours, torchs = seconds[name, "route"], seconds[name, "torch"]
        ratio = statistics.median(a / b for a, b in zip(ours, torchs))
        print(f"| {name} | {shape[0]} x {shape[1]} | {1e3 * statistics.median(torchs):.2f} | "
              f"{1e3 * statistics.median(ours):.2f} | {ratio:.3f} |")  # fmt: skip


def main() -> None:
    from bench_scale import build_model, make_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--variants", default=None, help="comma-separated, e.g. ln,gelu")
    parser.add_argument("--columns", type=int, default=1)
    parser.add_argument(
        "--fresh", action="store_true", help="fresh products (forward, gradient, double backward)"
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ops", action="store_true", help="per-operation double backwards")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.ops:
        return operations(args.rounds)
    torch.manual_seed(0)
    model = build_model(args.model, "cpu")  # eval mode: BatchNorm on running statistics
    data = make_data(args.images, args.images, "cpu")
    loss_fn = torch.nn.CrossEntropyLoss()
    chosen = args.variants or DEFAULT_VARIANTS.get(args.model, "")
    names = ["torch", *[v for v in chosen.split(",") if v], "all"]
    ops, products = {}, {}
    for name in names:
        with routes(variant_routes(name)):
            ops[name] = HessianOperator(model, loss_fn, data, keep_graphs=not args.fresh)
            v = torch.randn(
                ops[name].shape[0], args.columns, generator=torch.Generator().manual_seed(1)
            )
            products[name] = ops[name] @ v  # a kept graph: built now, with these routes
    seconds = {name: [] for name in ops}
    for _ in range(args.rounds):
        for name, op in ops.items():
            with routes(variant_routes(name)):  # a fresh graph: built in each product
                start = time.perf_counter()
                op @ v
                seconds[name].append(time.perf_counter() - start)
    n = ops["torch"].shape[0]
    graph = "fresh" if args.fresh else "kept-graph"
    print(f"# {args.model}, n = {n:,}, {args.images} images, {graph} products of {args.columns} "
          f"column(s), {args.rounds} interleaved rounds, one thread, torch {torch.__version__}")  # fmt: skip
    print("| double backward | product s (median) | / torch's (median of rounds) | rel. diff |")
    print("|---|---|---|---|")
    reference = products["torch"]
    for name, times in seconds.items():
        ratio = statistics.median(t / s for t, s in zip(times, seconds["torch"]))
        diff = float((products[name] - reference).norm() / reference.norm())
        print(f"| {name} | {statistics.median(times):.3f} | {ratio:.3f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
