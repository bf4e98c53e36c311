"""Weight norms: L2 and L-infinity of all parameters, per group and per layer."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._common import NORM_TYPES
from .results import ParameterNorm, WeightNorms


class _Group:
    """Running L2 (sum of squares, in float64) and L-infinity of a set of tensors."""

    def __init__(self) -> None:
        self.sumsq = 0.0
        self.linf = 0.0
        self.count = 0

    def add(self, t: torch.Tensor) -> None:
        t = t.detach()
        if t.numel() == 0:
            return
        self.sumsq += (
            float(t.double().pow(2).sum())
            if t.device.type != "mps"
            else float(t.float().pow(2).sum())
        )
        # NaN must win: Python's max(0.0, nan) is 0.0, which would hide a NaN weight (the
        # sum of squares and torch's max propagate it already)
        peak = float(t.abs().max())
        self.linf = math.nan if math.isnan(peak) or math.isnan(self.linf) else max(self.linf, peak)
        self.count += t.numel()

    @property
    def l2(self) -> float | None:
        return self.sumsq**0.5 if self.count else None

    @property
    def inf(self) -> float | None:
        return self.linf if self.count else None


def weight_norms(model: nn.Module, *, trainable_only: bool = False) -> WeightNorms:
    """L2 and L-infinity norms of ``model``'s parameters, overall, per group and per layer.

    ``l2`` / ``linf`` cover every parameter concatenated (the original package's
    ``weight_norm_l2`` / ``weight_norm_linf``, which included biases and BatchNorm). The
    groups split them: ``weights`` (the parameters of ordinary layers other than biases),
    ``biases`` (parameters named ``bias`` of ordinary layers) and ``norm`` (the affine
    parameters of BatchNorm, LayerNorm, GroupNorm... layers). Each layer (a module that owns
    parameters directly) gets a row with its weight and bias norms; shared parameters are
    counted once, at their first owner.

    A NaN parameter makes every norm that covers it NaN (L2 and L-infinity alike), so a
    diverged weight is never reported as a finite norm; an infinite one makes them inf.

    Args:
        model: the network.
        trainable_only: leave out parameters with ``requires_grad=False``.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[3.0, -4.0]])), layer.bias.fill_(12.0)
        >>> n = weight_norms(layer)
        >>> n.l2, n.linf, n.weights_l2, n.biases_linf
        (13.0, 12.0, 5.0, 12.0)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    overall, weights, biases, norms = _Group(), _Group(), _Group(), _Group()
    rows: list[ParameterNorm] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        own = [
            (n, p)
            for n, p in module.named_parameters(recurse=False)
            if id(p) not in seen and (p.requires_grad or not trainable_only)
        ]
        if not own:
            continue
        is_norm = isinstance(module, NORM_TYPES)
        layer_w, layer_b = _Group(), _Group()
        for n, p in own:
            seen.add(id(p))
            overall.add(p)
            if n == "bias":
                layer_b.add(p)
                (norms if is_norm else biases).add(p)
            else:
                layer_w.add(p)
                (norms if is_norm else weights).add(p)
        rows.append(
            ParameterNorm(
                layer=name or "(model)",
                module=type(module).__name__,
                kind="norm" if is_norm else "weight",
                num_params=layer_w.count + layer_b.count,
                weight_l2=layer_w.l2,
                weight_linf=layer_w.inf,
                bias_l2=layer_b.l2,
                bias_linf=layer_b.inf,
            )
        )
    if overall.count == 0:
        raise ValueError(
            "model has no parameters"
            + (" that require gradients" if trainable_only else "")
            + ": there is nothing to take the norm of"
        )
    return WeightNorms(
        l2=overall.l2,  # type: ignore[arg-type]
        linf=overall.inf,  # type: ignore[arg-type]
        weights_l2=weights.l2,
        weights_linf=weights.inf,
        biases_l2=biases.l2,
        biases_linf=biases.inf,
        norm_l2=norms.l2,
        norm_linf=norms.inf,
        num_params=overall.count,
        layers=rows,
    )
