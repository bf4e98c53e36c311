"""Error of half-precision curvature products (bf16, fp16; float32 accumulation) against float64.

For each model (an MLP and the SmallCNN on the bundled digits, 512 images in batches of 64)
the weights and the images are rounded to the half dtype once, and the float64 reference is
taken at those *same rounded* values, so the error measured is the arithmetic of the product
alone (not the rounding of the weights). Reported, as multiples of the dtype's unit roundoff
``u`` (bf16 ``2^-8``, fp16 ``2^-11``, float32 ``2^-24``):

* ``product``: max over 8 random unit probes of ``||H_d v - H_64 v|| / ||H_64||_2``;
* ``128 batches``: the same over batches of 4, the batches' products summed in float32
  (the operator) or in the half dtype (what float32 accumulation avoids);
* ``top-5``: ``max_i |lambda_i(d) - lambda_i(64)| / |lambda_1|`` of certified top-5
  eigenpairs (Lanczos basis in float64, ``tol`` at the reachable value);
* the achieved relative residual of those pairs against the float64 operator.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_half_precision.py`` (about a minute on the
2-core CPU; no timings, only errors, so machine load does not matter).
"""

from __future__ import annotations

import torch
from torch import nn

import jupyter_curvature as jc
from jupyter_curvature.data.builtin import digits_dataset
from jupyter_curvature.models.small import MLP, SmallCNN

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
NUM, BATCH, PROBES = 512, 64, 8
SMALL = 4  # 128 batches: where the sum over batches could lose digits


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def problem(name: str, dtype: torch.dtype):
    torch.manual_seed(0)
    flat = name == "mlp"
    model = MLP(64, [32, 32], 10) if flat else SmallCNN()
    ds = digits_dataset("train", flatten=flat, limit=NUM)
    x, y = ds.tensors
    model = model.to(dtype)
    x = x.to(dtype)
    return model, x, y


def batches(x, y, dtype=None, size=BATCH):
    return [(x[i : i + size].to(dtype or x.dtype), y[i : i + size]) for i in range(0, len(y), size)]


def half_sum(model, x, y, V):
    """The products of each of the small batches summed in the model's dtype (no float32
    accumulation), against the float32 accumulation of the same batches."""
    total = None
    for xb, yb in batches(x, y, size=SMALL):
        part = jc.HessianOperator(model, nn.CrossEntropyLoss(), (xb, yb)) @ V.to(x.dtype)
        part = (part * (len(yb) / len(y))).to(x.dtype)
        total = part if total is None else total + part
    return total


def measure(name: str, dtype: torch.dtype) -> dict:
    model, x, y = problem(name, dtype)
    ref = problem(name, dtype)[0].double()  # the rounded weights, in float64
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    loss = nn.CrossEntropyLoss()
    H64 = jc.HessianOperator(ref, loss, batches(x, y, torch.float64))
    Hd = jc.HessianOperator(model, loss, batches(x, y))
    exact = jc.eigenpairs(H64, k=5, tol=1e-10, seed=0)
    norm = float(exact.eigenvalues.abs().max())
    V = torch.randn(H64.shape[0], PROBES, generator=torch.Generator().manual_seed(1))
    V = V / V.norm(dim=0)
    ref_prod = H64 @ V.double()
    err = ((Hd @ V.to(dtype)).double() - ref_prod).norm(dim=0).max() / norm
    out = {"n": H64.shape[0], "u": unit_roundoff(dtype), "product": float(err)}
    if dtype != torch.float32:
        sum_err = (half_sum(model, x, y, V).double() - ref_prod).norm(dim=0).max() / norm
        out["half_sum"] = float(sum_err)
        small = jc.HessianOperator(model, loss, batches(x, y, size=SMALL))
        f32_err = ((small @ V.to(dtype)).double() - ref_prod).norm(dim=0).max() / norm
        out["f32_sum"] = float(f32_err)
    tol = max(1e-7, jc.spectral.reachable_tol(dtype))
    pairs = jc.eigenpairs(Hd, k=5, tol=tol, seed=0)
    lam = torch.as_tensor(pairs.eigenvalues, dtype=torch.float64)
    out["top5"] = float((lam - exact.eigenvalues).abs().max() / norm)
    vecs = torch.as_tensor(pairs.eigenvectors, dtype=torch.float64)
    res = (H64 @ vecs - vecs * lam).norm(dim=0).max() / norm
    out["residual"] = float(res)
    out["tol"] = tol
    return out


def main() -> None:
    print(
        "| model (n) | dtype | product / u (error) | 128 batches: float32 sum / u | "
        "half sum / u | top-5 eig. error | residual vs float64 (tol) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in ("mlp", "cnn"):
        for dtype in DTYPES:
            r = measure(name, dtype)
            half = f"{r['half_sum'] / r['u']:.2f}" if "half_sum" in r else "-"
            f32 = f"{r['f32_sum'] / r['u']:.2f}" if "f32_sum" in r else "-"
            print(
                f"| {name} ({r['n']}) | {str(dtype)[6:]} | {r['product'] / r['u']:.2f} "
                f"({r['product']:.1e}) | {f32} | {half} | {r['top5']:.1e} | "
                f"{r['residual']:.1e} ({r['tol']:.0e}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
