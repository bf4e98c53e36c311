"""Second derivatives torch does not register, supplied while curvature graphs are built.

A Hessian product differentiates the gradient graph once more (double backward), and so does
the GGN's reverse-mode fallback. A few operations common in vision models have a first
derivative in torch but no derivative of it, so a plain double backward fails:

* ``F.hardsigmoid`` (MobileNetV3's squeeze-excitation gates): ``aten::hardsigmoid_backward``
  has no derivative. It is piecewise linear, so its second derivative is zero almost
  everywhere, like ReLU's.
* ``F.scaled_dot_product_attention`` on CPU runs a fused kernel
  (``aten::_scaled_dot_product_flash_attention_for_cpu``) whose backward has no derivative
  (timm's ViT, DeiT and Swin call it directly; ``nn.MultiheadAttention`` inside
  ``F.multi_head_attention_forward``, out of a function mode's sight).

Inside :func:`twice_differentiable` a thread-local :class:`torch.overrides.TorchFunctionMode`
routes these calls to the same functions written with operations whose derivatives of every
order torch knows:

* ``hardsigmoid(x) = hardtanh(x + 3, 0, 6) / 6``: the kernel's own arithmetic
  (``min(max(x + 3, 0), 6) / 6``, so the same values in float32 and float64) and the same
  first derivative (1/6 strictly inside (-3, 3), 0 outside). ``inplace=True`` writes the result
  into the input, as the kernel does.
* ``scaled_dot_product_attention`` -> ``aten::_scaled_dot_product_attention_math``, torch's
  reference implementation ``softmax(q k^T * scale + mask) v`` in elementary operations.
* ``normalize(x)`` (Swin V2's cosine attention) -> the same division with ``eps`` taken
  directly for rows of norm ``<= eps``: autograd's second derivative of ``norm`` at a zero row
  (a padded window's token) is NaN, although ``normalize`` is linear there.
* ``multi_head_attention_forward(..., need_weights=False)`` runs with ``need_weights=True``,
  which computes the attention with ``bmm`` and ``softmax`` instead of the fused kernel; the
  weights are dropped, so the caller gets what it asked for.

With ``lean=True`` (the Hessian's graphs only: the ``torch.func`` operators need a jvp these do
not have) eval-mode ``batch_norm``, ``conv1d/2d/3d``, ``layer_norm``, ``gelu`` and ``silu``
are routed too, for speed rather than for a missing derivative: :mod:`._lean_double_backward`
gives them the double backward their structure allows (ResNet-20's kept-graph product
0.76-0.84x as long on the CPU, ViT-tiny's 0.88-0.89x).

The mode is entered only while an operator builds a graph it differentiates twice, and only
for a model whose first batch called one of these operations; the model itself (modules,
parameters, buffers) is never modified. ``F.hardswish`` needs nothing: torch
registers the derivative of ``hardswish_backward``.

A custom ``torch.autograd.Function`` whose backward is decorated with ``once_differentiable``
cannot be differentiated twice either; :func:`check_twice_differentiable` finds it (and any
other operation whose double backward fails) when the operator is built and raises a
``ValueError`` naming the module and the remedy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from ._lean_double_backward import LEAN_ROUTES


def _hardsigmoid(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    out = F.hardtanh(x + 3.0, 0.0, 6.0) / 6.0  # x itself is not saved: copy_ below is safe
    return x.copy_(out) if inplace else out


def _attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` by its reference implementation (same signature).

    A boolean ``attn_mask`` (True: attend) is turned into the additive mask (0 or ``-inf``)
    first, as ``F.scaled_dot_product_attention`` does before it dispatches: the math kernel
    called directly would add the booleans as 0 and 1 (Hugging Face passes boolean masks).
    """
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill(
            attn_mask.logical_not(), float("-inf")
        )
    return torch.ops.aten._scaled_dot_product_attention_math(
        query,
        key,
        value,
        attn_mask,
        dropout_p,
        is_causal,
        scale=scale,
        enable_gqa=enable_gqa,
    )[0]


def _normalize(input, p=2.0, dim=1, eps=1e-12, out=None) -> torch.Tensor:
    """``F.normalize`` with derivatives of every order at a zero row (same values, bitwise).

    ``F.normalize`` divides by ``norm(x).clamp_min(eps)``: near ``x = 0`` that is the linear
    map ``x / eps``, but autograd still differentiates ``norm`` at 0, whose second derivative
    is ``0/0 = NaN`` (and the clamp's zero mask times NaN stays NaN). Swin V2's cosine attention
    normalises the zero tokens of padded windows, so its Hessian came out NaN. Rows with
    ``norm <= eps`` take ``eps`` directly; the others the same ``norm`` kernel as torch.
    """
    if out is not None:
        return F.normalize(input, p, dim, eps, out)
    with torch.no_grad():
        kept = input.norm(p, dim, keepdim=True) > eps
    safe = torch.where(kept, input, torch.ones_like(input))
    denom = torch.where(
        kept, safe.norm(p, dim, keepdim=True), torch.full_like(kept, eps, dtype=input.dtype)
    )
    return input / denom.expand_as(input)


def _multi_head_attention(*args, **kwargs):
    kwargs["need_weights"] = True  # the explicit bmm/softmax path instead of the fused kernel
    return F.multi_head_attention_forward(*args, **kwargs)[0], None


_ROUTES: dict[Callable[..., Any], Callable[..., Any]] = {
    F.hardsigmoid: _hardsigmoid,
    F.scaled_dot_product_attention: _attention,
    F.normalize: _normalize,
}


class _TwiceDifferentiable(TorchFunctionMode):
    """Routes the calls above; ``routed`` counts the calls it changed."""

    def __init__(self, lean: bool = False) -> None:
        super().__init__()
        self.routed = 0
        self.routes = {**_ROUTES, **LEAN_ROUTES} if lean else _ROUTES

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward and not kwargs.get("need_weights", True):
            self.routed += 1
            return _multi_head_attention(*args, **kwargs)
        route = self.routes.get(func)
        if route is None:
            return func(*args, **kwargs)
        self.routed += 1
        return route(*args, **kwargs)


@contextmanager
def twice_differentiable(
    enabled: bool = True, *, lean: bool = False
) -> Iterator[_TwiceDifferentiable | None]:
    """Within the block, the operations above build graphs that can be differentiated twice.

    The mode sees every torch call of the forward (about 5-10% of a small MLP's Hessian
    product), so operators enter it only for models that need it: those whose first batch
    routed a call through it (``mode.routed > 0``, see ``HessianOperator``). With
    ``enabled=False`` the block does nothing and yields ``None``. ``lean`` also routes
    :data:`._lean_double_backward.LEAN_ROUTES` (reverse mode only: no jvp).
    """
    if not enabled:
        yield None
        return
    with _TwiceDifferentiable(lean) as mode:
        yield mode


_ONCE_DIFFERENTIABLE = once_differentiable(lambda ctx, *grads: grads).__code__
_MISSING_DERIVATIVE = re.compile(r"derivative for aten::(\w+?)(?:_backward)? is not implemented")


def _once_differentiable(node: Any) -> bool:
    """``node`` is the backward of a custom Function whose backward is ``once_differentiable``."""
    backward = getattr(getattr(node, "_forward_cls", None), "backward", None)
    return getattr(backward, "__code__", None) is _ONCE_DIFFERENTIABLE


def _camel(op: str) -> str:
    """``_scaled_dot_product_attention_math`` -> ``ScaledDotProductAttentionMath``."""
    return "".join(part.capitalize() for part in op.split("_"))


class _ModuleCalls:
    """Forward hooks recording each module call's input and output graph nodes, innermost first."""

    def __init__(self, model: nn.Module) -> None:
        self.calls: list[tuple[str, list[Any], list[Any]]] = []
        self.handles = [
            module.register_forward_hook(self._hook(name or type(model).__name__))
            for name, module in model.named_modules()
        ]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.calls.append((name, _nodes(inputs), _nodes(output)))

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def owner(self, is_culprit: Callable[[Any], bool]) -> str | None:
        """The innermost module whose output depends on a culprit node and whose inputs do not."""
        reaches = _Reach(is_culprit)
        for name, inputs, outputs in self.calls:
            if any(map(reaches, outputs)) and not any(map(reaches, inputs)):
                return name
        return None


def _nodes(tree: Any) -> list[Any]:
    return [t.grad_fn for t in tree_leaves(tree) if isinstance(t, torch.Tensor) and t.grad_fn]


class _Reach:
    """``reach(node)``: a culprit node lies in the backward graph from ``node`` (memoised)."""

    def __init__(self, is_culprit: Callable[[Any], bool]) -> None:
        self.is_culprit = is_culprit
        self.memo: dict[Any, bool] = {}

    def __call__(self, root: Any) -> bool:
        stack = [(root, False)]
        while stack:  # iterative post-order: graphs are deeper than Python's recursion limit
            node, expanded = stack.pop()
            if node is None or node in self.memo:
                continue
            children = [child for child, _ in node.next_functions]
            if expanded:
                self.memo[node] = self.is_culprit(node) or any(
                    self.memo.get(c, False) for c in children
                )
            else:
                stack.append((node, True))
                stack.extend((c, False) for c in children if c is not None)
        return self.memo[root]


def _needs_jvp(node: Any) -> bool:
    """A ``once_differentiable`` custom Function without ``jvp``: no ``J v`` by any mode."""
    return _once_differentiable(node) and node._forward_cls.jvp is torch.autograd.Function.jvp


@contextmanager
def recorded_calls(model: nn.Module) -> Iterator[_ModuleCalls]:
    """Within the block, forwards of ``model`` record which module made which graph node."""
    calls = _ModuleCalls(model)
    try:
        yield calls
    finally:
        calls.remove()


def check_twice_differentiable(
    loss: torch.Tensor, params: list[torch.Tensor], calls: _ModuleCalls, hessian: bool = True
) -> None:
    """ValueError naming the module whose operation the operator cannot differentiate.

    ``loss`` is the first batch's loss with its graph, built under :func:`recorded_calls`. A
    custom ``autograd.Function`` whose backward is ``once_differentiable`` is looked for in
    the graph: a double backward through it fails, or silently drops the terms that pass
    through it when the incoming gradient does not depend on the parameters. The GGN needs a
    double backward only when the Function also has no ``jvp`` (its reverse-mode fallback).
    With ``hessian=True`` one Hessian product with a vector of ones is then tried, which
    names any operation whose backward torch cannot differentiate.
    """
    is_culprit = _once_differentiable if hessian else _needs_jvp
    found = _Reach(is_culprit)
    if loss.grad_fn is not None and found(loss.grad_fn):
        node = next(n for n, hit in found.memo.items() if hit and is_culprit(n))
        op = f"custom autograd.Function {node._forward_cls.__name__} (once_differentiable)"
        _raise(calls.owner(is_culprit), op, hessian)
    if hessian:
        _try_hessian_product(loss, params, calls)


def _try_hessian_product(loss, params, calls: _ModuleCalls) -> None:
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    live = [g for g in grads if g is not None and g.requires_grad]
    if not live:
        return
    try:
        ones = [torch.ones_like(g) for g in live]  # the loss's graph stays for its gradient
        torch.autograd.grad(live, params, ones, retain_graph=True, allow_unused=True)
    except RuntimeError as exc:
        missing = _MISSING_DERIVATIVE.search(str(exc))
        if missing is None:
            raise
        prefix = _camel(missing.group(1)) + "Backward"
        owner = calls.owner(lambda node: node.name().startswith(prefix))
        _raise(owner, f"aten::{missing.group(1)}", True, exc)


def _raise(owner: str | None, op: str, hessian: bool, cause: BaseException | None = None):
    where = f"module {owner!r}" if owner else "the model"
    if hessian:
        what = "Hessian products (a double backward) are impossible"
        remedy = (
            "use GGNOperator, which needs first derivatives only (for a custom Function: "
            "forward mode, so give it a jvp staticmethod), or write that backward with "
            "differentiable torch operations (no @once_differentiable)"
        )
    else:
        what = "J v has neither forward mode (no jvp) nor the double-backward fallback"
        remedy = (
            "give the Function a jvp staticmethod, or write its backward with differentiable "
            "torch operations (no @once_differentiable)"
        )
    raise ValueError(
        f"{where} uses {op}, whose backward torch cannot differentiate, so {what}; {remedy}"
    ) from cause
