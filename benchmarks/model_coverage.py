"""Which classifiers of torchvision (and of timm's common families) every curvature quantity works on.

For each model (random init, no download: ``weights=None`` / ``pretrained=False``; 3 classes;
the smallest input size it accepts; a batch of 2; float32; eval mode) the sweep runs: a plain
torch double backward (the Hessian product without this package, to show what it rescues),
Hessian, GGN and empirical-Fisher products, the certified top eigenvalue
(``eigenpairs(k=1, tol=1e-2, max_iters=24, max_basis=8)``, up to 30 M parameters) and one K-FAC step. Each cell is ``ok`` with
seconds or the error. Results go to a JSON file after every model (so a long run can be
stopped and resumed) and the table in docs/models.md is regenerated from it.

    python benchmarks/model_coverage.py --quick          # one model per family (minutes)
    python benchmarks/model_coverage.py                  # every torchvision classifier + timm
    python benchmarks/model_coverage.py --table-only     # redraw docs/models.md from the JSON
    python benchmarks/model_coverage.py --device cuda --max-params 1e9 --only vgg11 ... \
        --results gpu.json                               # on a GPU; merge with --merge gpu.json

timm is optional: its families are skipped (and said so) when it is not installed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jupyter_curvature as jc  # noqa: E402
from jupyter_curvature.optim import KFAC  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "model_coverage.json"
DOC = ROOT / "docs" / "models.md"
START, END = "<!-- coverage table: start -->", "<!-- coverage table: end -->"
SIZES = (32, 64, 96, 128, 160, 224, 299)
CLASSES, BATCH = 3, 2
EIGEN_MAX_PARAMS = 30e6  # on the CPU: a float64 basis of 8 vectors is 2 GB
EIGEN_BYTES_PER_PARAM = 8 * 8 * 3  # float64, 8 vectors, GPyTorch's temporaries (about 2x more)
QUANTITIES = (
    "torch double backward",
    "Hessian",
    "GGN",
    "empirical Fisher",
    "top eigenvalue",
    "K-FAC step",
)

QUICK_TORCHVISION = [  # one per family, small ones first
    "mobilenet_v3_small",
    "shufflenet_v2_x0_5",
    "squeezenet1_0",
    "mnasnet0_5",
    "mobilenet_v2",
    "regnet_x_400mf",
    "efficientnet_b0",
    "resnet18",
    "googlenet",
    "densenet121",
    "swin_t",
    "maxvit_t",
    "convnext_tiny",
    "efficientnet_v2_s",
    "resnext50_32x4d",
    "inception_v3",
    "swin_v2_t",
    "vit_b_16",
    "wide_resnet50_2",
    "alexnet",
    "vgg11",
]
TIMM = [
    "resnet18", "convnext_atto", "efficientnet_b0", "mobilenetv3_small_050",
    "vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224",
]  # fmt: skip


def torchvision_model(name: str, size: int) -> nn.Module:
    kwargs = {"weights": None, "num_classes": CLASSES}
    if name.startswith("vit_"):
        kwargs["image_size"] = size
    if name == "maxvit_t":
        kwargs["input_size"] = (size, size)
    if name in ("googlenet", "inception_v3"):
        kwargs["init_weights"] = True  # aux heads stay: in eval mode (products) they are off
    return torchvision.models.get_model(name, **kwargs)


def timm_model(name: str, size: int) -> nn.Module:
    import timm

    kwargs = {"pretrained": False, "num_classes": CLASSES}
    if "vit" in name or "deit" in name or "swin" in name:
        kwargs["img_size"] = size
    if "swin" in name:
        kwargs["window_size"] = max(1, size // 32)
    return timm.create_model(name, **kwargs)


def smallest_input(build, name: str):
    """The model at the smallest of :data:`SIZES` whose forward runs, and that size."""
    for size in SIZES:
        try:
            torch.manual_seed(0)
            model = build(name, size)
            with torch.no_grad():
                model.eval()(torch.randn(BATCH, 3, size, size))
            return model, size
        except Exception:  # noqa: BLE001 (any failure means: try a larger input)
            continue
    raise ValueError(f"no input size in {SIZES} works")


def _error(exc: BaseException) -> str:
    return (
        f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        if str(exc)
        else type(exc).__name__
    )


def timed(fn) -> dict:
    """``fn()``'s seconds, or its error; the first RuntimeWarning it raised, if any."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            value = fn()
    except Exception as exc:  # noqa: BLE001 (the sweep records every failure)
        return {"ok": False, "error": _error(exc), "trace": traceback.format_exc(limit=-3)}
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()  # the clock stops when the GPU's work is done
    out = {"ok": True, "seconds": round(time.perf_counter() - start, 3)}
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    if runtime:
        out["warning"] = str(runtime[0].message).split(";")[0][:160]
    if value is not None:
        out["value"] = float(value)
        if not math.isfinite(out["value"]):  # a product norm of NaN is a failure, not a figure
            return {"ok": False, "error": f"not finite: the result's norm is {out['value']}"}
    return out


def plain_double_backward(model, x, y):
    """``H v`` by torch alone: gradient with ``create_graph=True``, then its backward."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = nn.functional.cross_entropy(model.eval()(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    dot = sum((g * torch.ones_like(g)).sum() for g in grads)
    return torch.autograd.grad(dot, params, allow_unused=True)[0].norm()


def kfac_step(model, x, y):
    opt = KFAC(model, lr=1e-3, factor_interval=1, inverse_interval=1)
    out = model.train()(x)
    out = getattr(out, "logits", out)  # GoogLeNet/Inception return their aux heads in training
    opt.fisher_backward(out)
    nn.functional.cross_entropy(out, y).backward()
    opt.step()
    opt.zero_grad()
    opt.remove_hooks()


def eigen_max_params(device: torch.device) -> float:
    """The largest model whose Lanczos basis the sweep holds: 30 M on the CPU, else GPU memory."""
    if device.type != "cuda":
        return EIGEN_MAX_PARAMS
    torch.cuda.empty_cache()  # blocks cached for the last model do not count as used
    free, _ = torch.cuda.mem_get_info(device)
    return free / 2 / EIGEN_BYTES_PER_PARAM  # half the free memory: the model and its graph


def measure(model: nn.Module, size: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    x, y = torch.randn(BATCH, 3, size, size), torch.arange(BATCH) % CLASSES
    model, x, y = model.to(device), x.to(device), y.to(device)
    loss, data = nn.CrossEntropyLoss(), (x, y)
    row = {"parameters": sum(p.numel() for p in model.parameters()), "input": size}
    if device.type == "cuda":
        row["device"] = torch.cuda.get_device_name(device)
    row["torch double backward"] = timed(lambda: plain_double_backward(model, x, y))
    ops = {
        "Hessian": jc.HessianOperator,
        "GGN": jc.GGNOperator,
        "empirical Fisher": jc.EmpiricalFisherOperator,
    }
    hessian = None
    for label, cls in ops.items():

        def product(cls=cls):
            op = cls(model, loss, data, check_deterministic=False)
            return (op @ torch.ones(op.shape[0], device=device)).norm()

        row[label] = timed(product)
    if row["parameters"] > eigen_max_params(device):
        row["top eigenvalue"] = {"ok": False, "error": "not run: Lanczos basis memory"}
    elif row["Hessian"]["ok"]:
        hessian = jc.HessianOperator(model, loss, data, check_deterministic=False)
        row["top eigenvalue"] = timed(
            lambda: jc.eigenpairs(
                hessian, k=1, tol=1e-2, max_iters=24, max_basis=8, warn=False
            ).eigenvalues[0]
        )
    else:
        row["top eigenvalue"] = {"ok": False, "error": "needs the Hessian"}
    row["K-FAC step"] = timed(lambda: kfac_step(model, x, y))  # last: it changes the weights
    return row


def cell(result: dict, device: str | None = None) -> str:
    if result.get("ok"):
        note = f" (warns: {result['warning']})" if "warning" in result else ""
        where = f" on {device.removeprefix('NVIDIA ')}" if device else ""
        return f"ok {result['seconds']:.2f} s{where}{note}".replace("|", "/")
    error = result["error"].replace("|", "/")
    return error if error.startswith("not run") else "fails: " + error


def table(results: dict) -> str:
    header = ["model", "input", "parameters", *QUANTITIES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in sorted(results):
        row = results[key]
        if "skipped" in row:
            cells = [key, "", "", f"not run: {row['skipped']}"] + [""] * (len(QUANTITIES) - 1)
        else:
            cells = [key, str(row["input"]), f"{row['parameters'] / 1e6:.2f} M"]
            cells += [cell(row[q], row.get("device")) for q in QUANTITIES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_doc(results: dict) -> None:
    text = DOC.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{table(results)}\n{END}{tail}")


def models(quick: bool, only: list[str] | None):
    names = (
        QUICK_TORCHVISION if quick else torchvision.models.list_models(module=torchvision.models)
    )
    chosen = [(f"torchvision/{n}", torchvision_model, n) for n in names]
    try:
        import timm  # noqa: F401

        chosen += [(f"timm/{n}", timm_model, n) for n in TIMM]
    except ImportError:
        print("timm is not installed: its families are skipped", file=sys.stderr)
    if not only:
        return chosen
    order = {name: i for i, name in enumerate(only)}  # --only's order: small models first
    picked = [c for c in chosen if c[0] in order or c[2] in order]
    return sorted(picked, key=lambda c: order.get(c[0], order.get(c[2])))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one model per family")
    parser.add_argument("--only", nargs="*", help="these models (names or family/name)")
    parser.add_argument("--max-params", type=float, default=30e6, help="skip larger models")
    parser.add_argument("--rerun", action="store_true", help="measure models already in the JSON")
    parser.add_argument("--table-only", action="store_true", help="redraw docs/models.md")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON file to update")
    parser.add_argument("--merge", type=Path, help="copy this JSON's rows into the results")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # the CPU rows' seconds are one thread's
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    if args.merge:
        results.update(json.loads(args.merge.read_text()))
        args.results.write_text(json.dumps(results, indent=1, sort_keys=True))
    if not args.table_only and not args.merge:
        for key, build, name in models(args.quick, args.only):
            if key in results and not args.rerun:
                continue
            try:
                model, size = smallest_input(build, name)
                count = sum(p.numel() for p in model.parameters())
                if count > args.max_params:
                    row = {"skipped": f"{count / 1e6:.0f} M parameters > --max-params"}
                else:
                    row = measure(model, size, device)
            except Exception as exc:  # noqa: BLE001
                row = {"skipped": _error(exc)}
            results[key] = row
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(results, indent=1, sort_keys=True))
            if args.results == RESULTS:
                write_doc(results)
            print(key, {q: row[q].get("ok") for q in QUANTITIES if q in row}, flush=True)
    if args.results == RESULTS:
        write_doc(results)


if __name__ == "__main__":
    main()
