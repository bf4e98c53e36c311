"""Exact Hessians of common losses with respect to the network's outputs.

The generalised Gauss-Newton matrix (Schraudolph 2002; Martens 2020, section 8) of a loss
``L(f(x; w), y)`` is ``G = J^T H_L J`` with ``J = df/dw`` and ``H_L = d^2 L / df^2``. This
module gives ``H_L u`` in closed form for the losses whose ``H_L`` is known, honouring the
loss's own reduction (``mean`` divides by what torch divides by):

* ``CrossEntropyLoss`` on logits ``z``: per position ``H u = p * u - p (p^T u)``, ``p = softmax(z)``
  over the class dimension 1. Independent of the targets, so label smoothing does not change
  it; samples with ``ignore_index`` contribute nothing, class weights ``w`` scale a position
  by ``w_y`` (the mean divides by their sum over the counted labels, as torch's does).
* ``NLLLoss`` on log-probabilities ``l``: the loss is linear in ``l``, so its own Hessian is
  zero; we use the Hessian of the equivalent cross-entropy on ``l`` (``p = exp(l)``). The
  resulting GGN equals the Fisher and equals the cross-entropy GGN of the logits before
  ``log_softmax``, which is what a user of ``log_softmax + NLLLoss`` means.
* ``MSELoss``: ``H u = 2 u`` (divided by the number of elements for ``mean``).
* ``BCEWithLogitsLoss``: ``H u = w (p_w y + 1 - y) s (1 - s) u`` with ``s = sigmoid(z)``,
  elementwise weights ``w`` and ``pos_weight`` ``p_w``.
* :class:`~jupyter_curvature.core.losses.TokenCrossEntropy` on logits ``(B, L, V)``: per
  position whose prediction counts ``H u = p * u - p (p^T u)`` over the vocabulary (the last
  dimension), zero at the others (the last position under the causal shift, labels
  ``ignore_index``), divided by the number ``T`` of counted tokens for ``mean``.

The lookup is a registry from loss type to handler (:func:`register_output_hessian`), so a
loss of your own joins these without touching this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.losses import TokenCrossEntropy, class_index_weights, counted_labels

#: ``(outputs, targets, U) -> H_L U`` for a block ``U`` of shape ``(k, *outputs.shape)``
OutputHessian = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

#: the built-in losses (more can be registered: :func:`register_output_hessian`)
SUPPORTED_LOSSES = "CrossEntropyLoss, NLLLoss, MSELoss, BCEWithLogitsLoss, TokenCrossEntropy"


def loss_reduction(loss_fn: object) -> str:
    """The reduction of a criterion: ``"mean"`` (also for plain functions) or ``"sum"``."""
    reduction = getattr(loss_fn, "reduction", "mean")
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"loss_fn has reduction={reduction!r}; curvature needs a scalar loss: use "
            "reduction='mean' (the mean over all samples) or 'sum'"
        )
    return reduction


def _softmax_hessian(p: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    pu = p * U
    return pu - p * pu.sum(dim=2, keepdim=True)  # U is (k, B, C, ...): classes on dim 2


def _cross_entropy_hessian(
    p: torch.Tensor, targets: torch.Tensor, U: torch.Tensor, reduction: str, loss_fn: object
) -> torch.Tensor:
    """``H_L U`` of cross-entropy (and NLL) on ``p = softmax(z)`` over dimension 1.

    Over class indices each counted position ``i`` adds ``s_i (diag(p) - p p^T)`` with
    ``s_i = (1 - eps) w_{y_i} + (eps / C) sum_c w_c`` (class weights ``w``, 1 without
    ``weight=``; label smoothing ``eps``: every ``-log p_c`` has the same Hessian, so only the
    weight of the target distribution matters), and the mean divides by ``sum_i w_{y_i}``
    over the counted positions (torch's denominator, :func:`class_index_weights`).
    Ignored positions add nothing.
    """
    HU = _softmax_hessian(p, U)
    if targets.is_floating_point():  # class probabilities: every position counts
        if getattr(loss_fn, "weight", None) is not None:
            raise ValueError(
                f"{type(loss_fn).__name__} with class weights and class-probability targets is "
                "not supported by the GGN; use HessianOperator, or class-index targets"
            )
        count = p.numel() // p.shape[1]
        return HU / count if reduction == "mean" else HU
    counted = counted_labels(loss_fn, targets).to(p.dtype)
    weights = class_index_weights(loss_fn, targets)
    weights = counted if weights is None else weights.to(p.dtype)
    scale = weights
    smoothing = getattr(loss_fn, "label_smoothing", 0.0)
    class_weight = getattr(loss_fn, "weight", None)
    if smoothing and class_weight is not None:
        mean_class_weight = class_weight.to(p.dtype).sum() / p.shape[1]
        scale = (1 - smoothing) * weights + smoothing * mean_class_weight * counted
    HU = HU * scale.unsqueeze(1)  # (B, 1, ...) broadcasts over the class dimension
    return HU / weights.sum() if reduction == "mean" else HU


#: loss type (a module class, or a function such as ``F.cross_entropy``) -> handler
_HANDLERS: dict[Any, Callable[[Any, str], OutputHessian]] = {}


def register_output_hessian(loss_type: Any) -> Callable:
    """Register the output Hessian of a loss type (used by ``GGNOperator``), as a decorator.

    ``loss_type`` is a loss class or a loss function (matched by identity). Instances of the
    class match, and so do instances of a subclass that keeps the class's ``forward`` (one
    that only adds attributes, say; the closest registered class in the method resolution
    order wins). A subclass that overrides ``forward`` or ``__call__`` computes another loss,
    so it does not match: register its own output Hessian. The handler
    is called as ``handler(loss_fn, reduction)`` once, when the operator is built, and returns
    ``fn(outputs, targets, U) -> H_L U`` for a block ``U`` of shape ``(k, *outputs.shape)``,
    honouring ``reduction`` (``"mean"`` or ``"sum"``, see :func:`loss_reduction`). This is the
    extension point of BackPACK (Dangel, Kunstner & Hennig, ICLR 2020), which dispatches on the
    loss module's type the same way.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class HalfSquares(nn.Module):  # L = sum(z - y)^2 / 2: H_L = I
        ...     reduction = "sum"
        ...     def forward(self, z, y):
        ...         return ((z - y) ** 2).sum() / 2
        >>> @register_output_hessian(HalfSquares)
        ... def _half_squares(loss_fn, reduction):
        ...     return lambda outputs, targets, U: U
        >>> fn = output_hessian_for(HalfSquares())
        >>> fn(torch.zeros(1, 2), None, torch.ones(1, 1, 2)).tolist()
        [[[1.0, 1.0]]]
    """
    if not (isinstance(loss_type, type) or callable(loss_type)):
        raise TypeError(
            f"loss_type must be a loss class or a loss function, got {type(loss_type).__name__}"
        )

    def register(handler: Callable[[Any, str], OutputHessian]) -> Callable:
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        _HANDLERS[loss_type] = handler
        return handler

    return register


def _handler_for(loss_fn: object) -> Callable[[Any, str], OutputHessian] | None:
    try:
        if loss_fn in _HANDLERS and not isinstance(loss_fn, type):
            return _HANDLERS[loss_fn]  # a registered function
    except TypeError:  # unhashable
        pass
    own = type(loss_fn)
    for cls in own.__mro__:
        if cls in _HANDLERS:
            # A handler encodes the Hessian of ``cls``'s own computation: a subclass that
            # computes something else (a focal loss over CrossEntropyLoss, a forward that
            # flattens its inputs) would silently get a wrong GGN, so it must register its own.
            if _overrides_computation(own, cls):
                return None
            return _HANDLERS[cls]
    return None


#: the methods whose override changes what a loss module computes
_COMPUTING_METHODS = ("forward", "__call__")


def _overrides_computation(own: type, registered: type) -> bool:
    """Whether ``own`` (a subclass of ``registered``) redefines how the loss is computed."""
    if own is registered:
        return False
    return any(
        getattr(own, name, None) is not getattr(registered, name, None)
        for name in _COMPUTING_METHODS
    )


def _registered_base(own: type) -> type | None:
    """The registered class that ``own`` subclasses while overriding its computation, if any."""
    for cls in own.__mro__[1:]:
        if cls in _HANDLERS and _overrides_computation(own, cls):
            return cls
    return None


def supported_losses() -> list[str]:
    """The names of the losses with a registered output Hessian."""
    return [getattr(t, "__name__", repr(t)) for t in _HANDLERS]


def output_hessian_for(loss_fn: object) -> OutputHessian:
    """The closed-form ``H_L U`` product for ``loss_fn``, from the registry.

    Raises:
        ValueError: no output Hessian is registered for the loss's type; the message names
            the type, the supported losses and the remedies.
    """
    handler = _handler_for(loss_fn)
    if handler is None:
        name = type(loss_fn).__name__
        if not isinstance(loss_fn, nn.Module) and hasattr(loss_fn, "__name__"):
            name = f"{name} {loss_fn.__name__}"
        overridden = _registered_base(type(loss_fn))
        if overridden is not None:
            name = (
                f"{name} (a subclass of {overridden.__name__} that overrides forward, so "
                f"{overridden.__name__}'s output Hessian does not apply)"
            )
        raise ValueError(
            f"loss_fn: GGNOperator does not know the output-space Hessian of {name}; "
            f"supported: {', '.join(supported_losses())}. Use HessianOperator for any loss, "
            "pass output_hessian=fn with fn(outputs, targets, U) -> H_L U for a block U of "
            "shape (k, *outputs.shape), or register the loss type once: "
            "@jupyter_curvature.register_output_hessian(MyLoss) def handler(loss_fn, "
            "reduction): return fn"
        )
    return handler(loss_fn, loss_reduction(loss_fn))


@register_output_hessian(nn.CrossEntropyLoss)
@register_output_hessian(F.cross_entropy)
def _cross_entropy_output_hessian(loss_fn: object, reduction: str) -> OutputHessian:
    def cross_entropy(outputs, targets, U):
        p = torch.softmax(outputs, dim=1)
        return _cross_entropy_hessian(p, targets, U, reduction, loss_fn)

    return cross_entropy


@register_output_hessian(nn.NLLLoss)
@register_output_hessian(F.nll_loss)
def _nll_output_hessian(loss_fn: object, reduction: str) -> OutputHessian:
    def nll(outputs, targets, U):
        p = outputs.exp()
        total = p.sum(dim=1)
        if not torch.allclose(total, torch.ones_like(total), rtol=0, atol=1e-3):
            raise ValueError(
                "GGNOperator with NLLLoss needs log-probabilities as model outputs (end the "
                "model with log_softmax), but exp(outputs) does not sum to one over dim 1; "
                "or use CrossEntropyLoss on logits"
            )
        return _cross_entropy_hessian(p, targets, U, reduction, loss_fn)

    return nll


@register_output_hessian(nn.MSELoss)
@register_output_hessian(F.mse_loss)
def _mse_output_hessian(loss_fn: object, reduction: str) -> OutputHessian:
    def mse(outputs, targets, U):
        return 2 * U / outputs.numel() if reduction == "mean" else 2 * U

    return mse


@register_output_hessian(nn.BCEWithLogitsLoss)
@register_output_hessian(F.binary_cross_entropy_with_logits)
def _bce_with_logits_output_hessian(loss_fn: object, reduction: str) -> OutputHessian:
    weight = getattr(loss_fn, "weight", None)
    pos_weight = getattr(loss_fn, "pos_weight", None)

    def bce_with_logits(outputs, targets, U):
        s = torch.sigmoid(outputs)
        curvature = s * (1 - s)
        if pos_weight is not None:
            t = targets.to(outputs.dtype)
            curvature = curvature * (pos_weight * t + 1 - t)
        if weight is not None:
            curvature = curvature * weight
        HU = curvature * U
        return HU / outputs.numel() if reduction == "mean" else HU

    return bce_with_logits


@register_output_hessian(TokenCrossEntropy)
def _token_cross_entropy_output_hessian(
    loss_fn: TokenCrossEntropy, reduction: str
) -> OutputHessian:
    def token_cross_entropy(outputs, targets, U):
        keep = loss_fn.output_mask(outputs, targets).unsqueeze(-1)  # (B, L, 1): counted or not
        p = torch.softmax(outputs, dim=-1)
        pu = p * U
        HU = (pu - p * pu.sum(dim=-1, keepdim=True)) * keep
        return HU / keep.sum().clamp_min(1) if reduction == "mean" else HU

    return token_cross_entropy
