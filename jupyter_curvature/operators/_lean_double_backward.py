"""Double backwards leaner than torch's for eval-mode BatchNorm and convolutions.

A Hessian product through a kept gradient graph is one backward through that graph: the
derivative of each first backward. torch computes two of the commonest ones with more work
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

Each is a pair of ``autograd.Function``s: the first runs torch's forward and returns torch's
backward kernels through the second, whose backward is the formula above. Measured on
ResNet-20 (32 and 128 CIFAR-shaped images, one CPU thread) the kept-graph Hessian product
took 0.94x / 0.89x as long with the BatchNorm route and 0.84x / 0.76x with both
(``benchmarks/bench_lean_double_backward.py``, docs/spectral.md).

Only reverse mode is supplied (no ``jvp``), so only the Hessian's graphs take these routes
(``twice_differentiable(lean=True)``), and only calls the kernels cover exactly: eval mode
with an affine map and running statistics; a convolution of batched input with numeric
padding; every tensor one dtype; no autocast. Anything else goes to torch unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
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


#: torch functions and their lean-double-backward versions (same signatures)
LEAN_ROUTES: dict[Callable[..., Any], Callable[..., Any]] = {
    F.batch_norm: batch_norm,
    **{plain: _convolution(d) for d, plain in _CONVOLUTIONS.items()},
}
