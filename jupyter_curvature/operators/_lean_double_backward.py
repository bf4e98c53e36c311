"""Leaner double backwards than torch's: eval-mode BatchNorm, convolutions, LayerNorm, GELU, SiLU.

A Hessian product through a kept gradient graph is one backward through that graph: the
derivative of each first backward. torch computes some of the commonest ones with more work
than they need:

* **Eval-mode BatchNorm** is the per-channel affine map ``y = (x - m) s w + b`` with
  ``s = (v + eps)^(-1/2)``, but torch differentiates its backward with the training-mode
  formula's code: about fourteen passes over the activation where four suffice. For the
  cotangents ``(G_x, G_w, G_b)`` of the backward's outputs ``(g s w, sum g (x - m) s, sum g)``
  (sums over all but the channel dimension)::

      d/dg = G_x s w + (x - m) s G_w + G_b     one fused batch_norm and one addcmul
      d/dx = g s G_w                            one multiplication
      d/dw = sum G_x g s                        the backward kernel's weight gradient

* **Convolutions** ``y = conv(x, W) + b``: torch forms the weight term of the double backward
  as a convolution of the transposed (non-contiguous) cotangent and output gradient: 3.2 ms
  per call on ResNet-20's first stage (32 images, one CPU thread) against 1.5 ms for a
  forward convolution of the same size. The first backward is bilinear,
  ``g_x = conv_x^T(g, W)``, ``g_W = conv_W^T(g, x)``, ``g_b = sum g``, so::

      d/dg = conv(G_x, W) + conv(x, G_W) + G_b  two forward convolutions
      d/dx = conv_x^T(g, G_W)                   the input gradient of conv(x, G_W)
      d/dW = conv_W^T(g, G_x)                   the weight gradient of conv(G_x, W)

  each by torch's forward or backward kernel (``aten::convolution_backward``).

* **LayerNorm** over rows of ``D`` values, ``x_hat = (x - mean) s``, ``y = x_hat w + b``:
  torch's double backward took 36 times the forward (5.9 ms against 0.16 ms on ViT-tiny's
  2080 x 192 activations, one CPU thread). Its backward is ``g_x = P(g w)``,
  ``g_w = sum g x_hat``, ``g_b = sum g`` (sums over the rows), with the symmetric projector
  ``P = s (I - 1 1^T / D - x_hat x_hat^T / D)``, which is also the derivative of ``x_hat``
  (``d x_hat = P dx``) and which torch's backward kernel applies in one fused pass when given
  no weight. Differentiating ``g_x = s (g w - mean(g w) - c x_hat)``, ``c = mean(g w x_hat)``,
  with ``ds = -s^2 mean(x_hat dx)``::

      d/dg = w P G_x + x_hat G_w + G_b
      d/dw = sum g P G_x
      d/dx = P(g G_w - s c G_x) - (s/D) (<G_x, g_x> x_hat + <G_x, x_hat> g_x)

  two calls of the kernel (``P G_x`` and ``P(...)``) and a handful of passes.

* **GELU and SiLU**: the backward ``g f'(x)`` is linear in ``g``, so ``d/dg = G f'(x)``
  (torch's backward kernel again) and ``d/dx = G g f''(x)``, with
  ``gelu''(x) = phi(x) (2 - x^2)`` for ``x Phi(x)``, ``(1 - t^2) (u' - x t u'^2 + 3 a k x^2)``
  for the tanh approximation ``0.5 x (1 + t)``, ``t = tanh(u)``, ``u = k (x + a x^3)``,
  ``u' = k (1 + 3 a x^2)``, and ``silu''(x) = s (1 - s) (2 + x (1 - 2 s))``,
  ``s = sigmoid(x)``. torch's double backward took 6.4x (exact GELU), 24x (tanh GELU) its
  backward kernel on ViT-tiny's 2080 x 768 MLP activations.

Each is a pair of ``autograd.Function``s: the first runs torch's forward and returns torch's
backward kernels through the second, whose backward is the formula above. Measured on
ResNet-20 (32 and 128 CIFAR-shaped images, one CPU thread) the kept-graph Hessian product
took 0.94x / 0.89x as long with the BatchNorm route and 0.84x / 0.76x with both
(``benchmarks/bench_lean_double_backward.py``, docs/spectral.md).

Only reverse mode is supplied (no ``jvp``), so only the Hessian's graphs take these routes
(``twice_differentiable(lean=True)``), and only calls the kernels cover exactly: BatchNorm in
eval mode with an affine map and running statistics; a convolution of batched input with
numeric padding; LayerNorm in float32 or float64; every tensor one dtype; no autocast.
Anything else goes to torch unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def _channels(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over ``like`` (``N, C, ...``)."""
    return t.view(1, -1, *([1] * (like.dim() - 2)))


def _autocast(x: torch.Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _one_dtype(*tensors: torch.Tensor | None) -> bool:
    present = [t for t in tensors if t is not None]
    return len({t.dtype for t in present}) == 1 and not _autocast(present[0])


# ------------------------------------------------------------------------ eval-mode BatchNorm
class _EvalBatchNorm(torch.autograd.Function):
    """Eval-mode ``batch_norm`` whose backward is :class:`_EvalBatchNormGrad`."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps):
        ctx.save_for_backward(x, weight, mean, var)
        ctx.eps = eps
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, var = ctx.saved_tensors
        g_x, g_w, g_b = _EvalBatchNormGrad.apply(grad, x, weight, mean, var, ctx.eps)
        return g_x, g_w, g_b, None, None, None


class _EvalBatchNormGrad(torch.autograd.Function):
    """torch's eval-mode backward kernel, differentiated by the eval-mode formula."""

    @staticmethod
    def forward(ctx, grad, x, weight, mean, var, eps):
        ctx.save_for_backward(grad, x, weight, mean, var)
        ctx.eps = eps
        mask = [True, True, True]
        return torch.ops.aten.native_batch_norm_backward(
            grad, x, weight, mean, var, None, None, False, eps, mask
        )

    @staticmethod
    def backward(ctx, grad_x, grad_w, grad_b):
        grad, x, weight, mean, var = ctx.saved_tensors
        eps = ctx.eps
        invstd = (var + eps).rsqrt()
        # (x - m) s G_w + G_b is itself an eval-mode batch_norm: one fused pass
        d_grad = F.batch_norm(x, mean, var, grad_w, grad_b, False, 0.0, eps)
        d_grad.addcmul_(grad_x, _channels(weight * invstd, x))
        d_x = grad * _channels(grad_w * invstd, x)
        # sum G_x g s over all but the channels is the backward kernel's weight gradient of
        # an eval-mode batch_norm of g with mean 0: one fused pass, no product tensor
        d_w = torch.ops.aten.native_batch_norm_backward(
            grad_x, grad, None, torch.zeros_like(mean), var, None, None, False, eps,
            [False, True, False],
        )[1]  # fmt: skip
        return d_grad, d_x, d_w, None, None, None


def batch_norm(
    input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
) -> torch.Tensor:
    """``F.batch_norm`` (same signature); eval mode with an affine map of one dtype through
    :class:`_EvalBatchNorm`, anything else unchanged."""
    tensors = (input, running_mean, running_var, weight, bias)
    if training or any(t is None for t in tensors) or not _one_dtype(*tensors):
        return F.batch_norm(input, *tensors[1:], training, momentum, eps)
    return _EvalBatchNorm.apply(input, weight, bias, running_mean, running_var, eps)


# ------------------------------------------------------------------------------ convolutions
_CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _kernel_gradient(grad, x, weight, geometry, mask):
    """``aten::convolution_backward``: ``(g_x, g_W, g_b)`` where ``mask`` asks (else None)."""
    stride, padding, dilation, groups = geometry
    bias_sizes = [weight.shape[0]] if mask[2] else None
    zeros = [0] * (weight.dim() - 2)  # output_padding: not transposed
    return torch.ops.aten.convolution_backward(
        grad, x, weight, bias_sizes, stride, padding, dilation, False, zeros, groups, list(mask)
    )


class _Convolution(torch.autograd.Function):
    """``conv1d/2d/3d`` whose backward is :class:`_ConvolutionGrad`."""

    @staticmethod
    def forward(ctx, x, weight, bias, geometry):
        ctx.save_for_backward(x, weight)
        ctx.geometry = geometry
        return _CONVOLUTIONS[weight.dim() - 2](x, weight, bias, *geometry)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        mask = tuple(ctx.needs_input_grad[:3])
        return (*_ConvolutionGrad.apply(grad, x, weight, ctx.geometry, mask), None)


class _ConvolutionGrad(torch.autograd.Function):
    """torch's backward kernel of a convolution, differentiated by its bilinearity."""

    @staticmethod
    def forward(ctx, grad, x, weight, geometry, mask):
        ctx.save_for_backward(grad, x, weight)
        ctx.geometry = geometry
        ctx.set_materialize_grads(False)  # an absent cotangent skips its convolutions
        return _kernel_gradient(grad, x, weight, geometry, mask)

    @staticmethod
    def backward(ctx, grad_x, grad_w, grad_b):
        grad, x, weight = ctx.saved_tensors
        geometry = ctx.geometry
        conv = _CONVOLUTIONS[weight.dim() - 2]
        d_grad = d_x = d_w = None
        if ctx.needs_input_grad[0]:
            if grad_x is not None:
                d_grad = conv(grad_x, weight, None, *geometry)
            if grad_w is not None:
                through_w = conv(x, grad_w, grad_b, *geometry)
                d_grad = through_w if d_grad is None else d_grad.add_(through_w)
            elif grad_b is not None:
                bias = _channels(grad_b, grad)
                d_grad = bias.expand_as(grad) if d_grad is None else d_grad.add_(bias)
        if ctx.needs_input_grad[1] and grad_w is not None:
            d_x = _kernel_gradient(grad, x, grad_w, geometry, (True, False, False))[0]
        if ctx.needs_input_grad[2] and grad_x is not None:
            d_w = _kernel_gradient(grad, grad_x, weight, geometry, (False, True, False))[1]
        return d_grad, d_x, d_w, None, None


def _as_tuple(value: Any, d: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * d


def _convolution(d: int) -> Callable[..., torch.Tensor]:
    plain = _CONVOLUTIONS[d]

    def convolution(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        """``F.conv{d}d`` (same signature); batched input with numeric padding, one dtype,
        through :class:`_Convolution`, anything else unchanged."""
        if isinstance(padding, str) or input.dim() != d + 2 or not _one_dtype(input, weight, bias):
            return plain(input, weight, bias, stride, padding, dilation, groups)
        geometry = (_as_tuple(stride, d), _as_tuple(padding, d), _as_tuple(dilation, d), groups)
        return _Convolution.apply(input, weight, bias, geometry)

    return convolution


# ---------------------------------------------------------------------------------- LayerNorm
class _Rows:
    """The rows a LayerNorm normalises (its last ``len(shape)`` dimensions): ``x_hat`` and the
    projector ``P``, applied by torch's backward kernel without a weight in one fused pass."""

    def __init__(self, x, shape, mean, rstd):
        self.x, self.shape, self.mean, self.rstd = x, shape, mean, rstd
        self.size = math.prod(shape)  # D
        self.x_hat = (x - mean) * rstd

    def project(self, t: torch.Tensor) -> torch.Tensor:
        """``P t``, row by row."""
        return torch.ops.aten.native_layer_norm_backward(
            t, self.x, self.shape, self.mean, self.rstd, None, None, [True, False, False]
        )[0]

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``<a, b>`` of each row, kept for broadcasting."""
        return (a * b).sum(tuple(range(-len(self.shape), 0)), keepdim=True)

    def outer_sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum over the rows (``t`` itself when the input is one row)."""
        outer = tuple(range(t.dim() - len(self.shape)))
        return t.sum(outer) if outer else t


class _LayerNorm(torch.autograd.Function):
    """``layer_norm`` whose backward is :class:`_LayerNormGrad`."""

    @staticmethod
    def forward(ctx, x, weight, bias, shape, eps):
        y, mean, rstd = torch.ops.aten.native_layer_norm(x, shape, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.shape = shape
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        mask = tuple(ctx.needs_input_grad[:3])
        g_x, g_w, g_b = _LayerNormGrad.apply(grad, x, weight, bias, mean, rstd, ctx.shape, mask)
        return g_x, g_w, g_b, None, None


class _LayerNormGrad(torch.autograd.Function):
    """torch's LayerNorm backward kernel, differentiated through the projector ``P``."""

    @staticmethod
    def forward(ctx, grad, x, weight, bias, mean, rstd, shape, mask):
        g_x, g_w, g_b = torch.ops.aten.native_layer_norm_backward(
            grad, x, shape, mean, rstd, weight, bias, list(mask)
        )
        ctx.save_for_backward(grad, x, weight, mean, rstd, g_x)
        ctx.shape = shape
        ctx.set_materialize_grads(False)  # an absent cotangent skips its terms
        return g_x, g_w, g_b

    @staticmethod
    def backward(ctx, grad_x, grad_w, grad_b):
        grad, x, weight, mean, rstd, g_x = ctx.saved_tensors
        _refuse_a_third_derivative(grad, x, weight)
        rows = _Rows(x, ctx.shape, mean, rstd)
        projected = None if grad_x is None else rows.project(grad_x)  # P G_x
        need_grad, need_x, need_w = ctx.needs_input_grad[:3]
        d_grad = _d_grad(rows, weight, projected, grad_w, grad_b) if need_grad else None
        d_x = _d_input(rows, grad, weight, g_x, grad_x, grad_w) if need_x else None
        d_w = None if not need_w or projected is None else rows.outer_sum(grad * projected)
        return d_grad, d_x, d_w, None, None, None, None, None


def _refuse_a_third_derivative(*saved: torch.Tensor | None) -> None:
    """The formulas take the saved mean and rstd as constants: right for the second
    derivative, wrong for a derivative of it, so building a graph of it is refused."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in saved):
        raise RuntimeError(
            "a third derivative through LayerNorm's lean double backward is not supported; "
            "build the graph outside twice_differentiable(lean=True)"
        )


def _d_grad(rows, weight, projected, grad_w, grad_b) -> torch.Tensor | None:
    """``d/dg = w P G_x + x_hat G_w + G_b`` (the terms whose cotangent is present)."""
    terms = []
    if projected is not None:
        terms.append(projected if weight is None else projected * weight)
    if grad_w is not None:
        terms.append(rows.x_hat * grad_w)
    if grad_b is not None:
        terms.append(grad_b.expand_as(rows.x))
    return sum(terms[1:], terms[0]) if terms else None


def _d_input(rows, grad, weight, g_x, grad_x, grad_w) -> torch.Tensor | None:
    """``d/dx = P(g G_w - s c G_x) - (s/D) (<G_x, g_x> x_hat + <G_x, x_hat> g_x)`` with
    ``c = mean(g w x_hat)`` per row (module docstring); ``G_b`` does not depend on ``x``."""
    through = None if grad_w is None else grad * grad_w
    if grad_x is None:
        return None if through is None else rows.project(through)
    g_hat = grad if weight is None else grad * weight
    scale = rows.rstd * rows.dot(g_hat, rows.x_hat) / rows.size  # s c
    through = -scale * grad_x if through is None else through.addcmul_(scale, grad_x, value=-1)
    d_x = rows.project(through)
    d_x.addcmul_(rows.rstd * rows.dot(grad_x, g_x), rows.x_hat, value=-1 / rows.size)
    return d_x.addcmul_(rows.rstd * rows.dot(grad_x, rows.x_hat), g_x, value=-1 / rows.size)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5) -> torch.Tensor:
    """``F.layer_norm`` (same signature); float32 or float64 of one dtype through
    :class:`_LayerNorm`, anything else unchanged."""
    dtypes_ok = input.dtype in (torch.float32, torch.float64) and _one_dtype(input, weight, bias)
    if not dtypes_ok:
        return F.layer_norm(input, normalized_shape, weight, bias, eps)
    shape = _as_tuple(normalized_shape, 1)
    return _LayerNorm.apply(input, weight, bias, shape, eps)


# ----------------------------------------------------------------------- GELU and SiLU
_SQRT_2_PI = math.sqrt(2.0 / math.pi)  # tanh approximation's k
_TANH_CUBIC = 0.044715  # and its a
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_second_derivative(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """``gelu''(x)``: ``phi(x) (2 - x^2)`` for ``x Phi(x)``; for the tanh approximation
    ``0.5 x (1 + t)``, ``t = tanh(u)``, ``u = k (x + a x^3)``:
    ``(1 - t^2) (u' - x t u'^2 + 3 a k x^2)`` with ``u' = k (1 + 3 a x^2)``.

    In place wherever it can be: on the CPU a fresh activation-sized tensor costs its page
    faults, about as much as a pass over it."""
    x2 = x.square()
    if approximate == "none":
        phi = x2.mul(-0.5).exp_().mul_(_INV_SQRT_2PI)
        return phi.mul_(x2.neg_().add_(2.0))
    k, a = _SQRT_2_PI, _TANH_CUBIC
    t = x2.mul(k * a).add_(k).mul_(x).tanh_()  # tanh(u)
    du = x2.mul(3.0 * a * k).add_(k)  # u'
    inner = du.square().mul_(t).mul_(x).neg_().add_(du).add_(x2.mul_(3.0 * a * k))
    return inner.mul_(t.square_().neg_().add_(1.0))


def silu_second_derivative(x: torch.Tensor, _: Any = None) -> torch.Tensor:
    """``silu''(x) = s (1 - s) (2 + x (1 - 2 s))`` for ``silu(x) = x s``, ``s = sigmoid(x)``
    (in place, as above)."""
    s = torch.sigmoid(x)
    second = s.mul(-2.0).add_(1.0).mul_(x).add_(2.0).mul_(s)
    return second.mul_(s.neg_().add_(1.0))


@dataclass(frozen=True)
class _Pointwise:
    """An elementwise ``y = f(x; option)``: torch's forward and backward kernels and ``f''``."""

    forward: Callable[[torch.Tensor, Any], torch.Tensor]  # (x, option) -> f(x)
    backward: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]  # (g, x, .) -> g f'(x)
    second: Callable[[torch.Tensor, Any], torch.Tensor]  # (x, option) -> f''(x)


_GELU = _Pointwise(
    lambda x, approximate: F.gelu(x, approximate=approximate),
    lambda g, x, approximate: torch.ops.aten.gelu_backward(g, x, approximate=approximate),
    gelu_second_derivative,
)
_SILU = _Pointwise(
    lambda x, _: F.silu(x),
    lambda g, x, _: torch.ops.aten.silu_backward(g, x),
    silu_second_derivative,
)


class _Activation(torch.autograd.Function):
    """An elementwise activation whose backward is :class:`_ActivationGrad`."""

    @staticmethod
    def forward(ctx, x, f, option):
        ctx.save_for_backward(x)
        ctx.f, ctx.option = f, option
        return f.forward(x, option)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _ActivationGrad.apply(grad, x, ctx.f, ctx.option), None, None


class _ActivationGrad(torch.autograd.Function):
    """torch's backward kernel ``g f'(x)``: linear in ``g``, so ``d/dg = G f'(x)`` (the same
    kernel) and ``d/dx = G g f''(x)``."""

    @staticmethod
    def forward(ctx, grad, x, f, option):
        ctx.save_for_backward(grad, x)
        ctx.f, ctx.option = f, option
        return f.backward(grad, x, option)

    @staticmethod
    def backward(ctx, grad_out):
        grad, x = ctx.saved_tensors
        f, option = ctx.f, ctx.option
        d_grad = f.backward(grad_out, x, option) if ctx.needs_input_grad[0] else None
        d_x = None
        if ctx.needs_input_grad[1]:
            # out of place first: grad_out may be batched (is_grads_batched), x is not
            d_x = torch.mul(grad_out, f.second(x, option)).mul_(grad)
        return d_grad, d_x, None, None


def gelu(input, approximate="none") -> torch.Tensor:
    """``F.gelu`` (same signature); through :class:`_Activation` outside autocast."""
    if _autocast(input):
        return F.gelu(input, approximate=approximate)
    return _Activation.apply(input, _GELU, approximate)


def silu(input, inplace=False) -> torch.Tensor:
    """``F.silu`` (same signature); through :class:`_Activation` outside autocast. In place,
    the result is written into ``input`` as the kernel does, computed from a copy (the
    double backward needs the input as it was)."""
    if _autocast(input):
        return F.silu(input, inplace=inplace)
    if inplace:
        return input.copy_(_Activation.apply(input.clone(), _SILU, None))
    return _Activation.apply(input, _SILU, None)


#: torch functions and their lean-double-backward versions (same signatures)
LEAN_ROUTES: dict[Callable[..., Any], Callable[..., Any]] = {
    F.batch_norm: batch_norm,
    **{plain: _convolution(d) for d, plain in _CONVOLUTIONS.items()},
    F.layer_norm: layer_norm,
    F.gelu: gelu,
    F.silu: silu,
}
