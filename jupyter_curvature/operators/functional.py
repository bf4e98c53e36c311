"""The GGN and the gradient covariance ("empirical Fisher"): products through ``torch.func``.

Both are curvatures ``J^T M J`` of the empirical risk of
:class:`~jupyter_curvature.operators.risk.EmpiricalRiskOperator`, with ``J`` a Jacobian with
respect to the chosen parameters and ``M`` known in closed form. :class:`GGNOperator` takes the
Jacobian of the network outputs and ``M = H_L``, the Hessian of the loss in the outputs
(Schraudolph 2002; :mod:`~jupyter_curvature.operators.loss_hessians`).
:class:`EmpiricalFisherOperator` takes the per-sample gradients, ``F = (1/N) sum_n g_n g_n^T``
(Kunstner et al. 2019), or for a loss over tokens the Jacobian of the per-token losses and
``M = I``. Their base calls the model with :func:`torch.func.functional_call`, the parameters
as inputs, so that ``J V`` runs in forward mode and ``J^T U`` in reverse mode, both vectorised
over the ``k`` columns of a block (the fallbacks for models that ``torch.func`` cannot
transform are in the class docstrings).
"""

from __future__ import annotations

import functools
import re
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from ..core import inputs as _inputs
from ..core.batches import Batch, check_per_sample_split, map_tensors
from ..core.losses import check_equal_sample_weights, has_terms
from ._second_order import check_twice_differentiable, recorded_calls, twice_differentiable
from .loss_hessians import OutputHessian, output_hessian_for
from .risk import EmpiricalRiskOperator, check_loss_fn

# forward-mode AD keeps its nesting level in process-wide globals (``_current_level`` of
# torch.autograd.forward_ad, ``JVP_NESTING`` of torch.func.jvp): two threads inside it at once
# fail with "Nested forward mode AD is not supported", whatever models they differentiate
_FORWARD_AD = threading.Lock()

#: torch.func's refusals of a model that plain autograd can still differentiate
_FUNCTORCH_REFUSAL = re.compile(r"setup_context|functorch|vmap|torch\.func", re.IGNORECASE)


@functools.cache  # once per process: catch_warnings swaps the global filters
def _load_forward_ad() -> None:
    """Import torch's forward-AD decompositions now, without their warning in a notebook cell.

    The first ``fwAD.make_dual`` imports ``torch._decomp.decompositions_for_jvp``, which
    compiles them with ``torch.jit.script``, deprecated with a FutureWarning: torch's warning,
    not the user's. Only that message is silenced, only during this import, done once.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
        )
        from torch._decomp import decompositions_for_jvp  # noqa: F401


class _FunctionalOperator(EmpiricalRiskOperator):
    """An operator that calls the model functionally, with the chosen parameters as inputs."""

    def _function(self, batch: Batch):
        names, model = self.param_names, self.model

        def forward(*params: torch.Tensor):
            def call(*args: Any, **kwargs: Any) -> Any:
                return functional_call(model, dict(zip(names, params)), args, kwargs, strict=False)

            return self._forward(batch, call)

        return forward

    def _detached_params(self) -> tuple[torch.Tensor, ...]:
        return tuple(p.detach() for p in self.params)

    def _jacobian_sandwich(
        self,
        fn: Callable[..., torch.Tensor],
        block: torch.Tensor,
        middle: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``J^T M(J V)`` as an ``(n, k)`` block, ``J`` the Jacobian of ``fn(*params)`` at the
        parameters and ``M(values, JV)`` the middle factor applied to all ``k`` columns:
        ``torch.func.vjp`` once, the ``jvp`` and the pullback vmapped over the columns."""
        primals = self._detached_params()
        values, pullback = vjp(fn, *primals)
        tangents = [t.movedim(-1, 0) for t in self.unflatten(block)]  # (k, *p.shape)

        def push_forward(*tangent):
            return jvp(fn, primals, tangent)[1]

        with _FORWARD_AD:
            JV = vmap(push_forward)(*tangents)  # (k, *values.shape)
        columns = vmap(pullback)(middle(values.detach(), JV))  # per param (k, *p.shape)
        return torch.cat([c.reshape(c.shape[0], -1) for c in columns], dim=1).T

    _functorch_works = True  # False once torch.func or forward mode refused the model

    def _sandwich(
        self,
        fn: Callable[..., torch.Tensor],
        block: torch.Tensor,
        middle: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``J^T M(J V)`` by :meth:`_jacobian_sandwich`, or by :meth:`_reverse_sandwich` for a
        model that ``torch.func`` or forward mode refuses (a custom ``autograd.Function``
        without ``setup_context`` or without ``jvp``): the same product, reverse mode only."""
        if self._functorch_works:
            try:
                return self._forward_mode(lambda: self._jacobian_sandwich(fn, block, middle))
            except NotImplementedError:  # no forward-mode formula (a Function without jvp)
                pass
            except RuntimeError as exc:  # torch.func's own refusal, raised before any result
                if not _FUNCTORCH_REFUSAL.search(str(exc)):
                    raise
            self._functorch_works = False
        return self._reverse_sandwich(fn, block, middle)

    def _reverse_sandwich(
        self,
        fn: Callable[..., torch.Tensor],
        block: torch.Tensor,
        middle: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``J^T M(J V)`` with reverse mode only, for models with an operation that has no jvp.

        ``J v`` is the derivative of ``u -> (J^T u) . v`` (the double-backward trick), so only
        backward formulas are needed: one forward, then per column two backwards for ``J v``
        and one for ``J^T M(J v)``.
        """
        primals = [p.detach().requires_grad_() for p in self.params]
        with twice_differentiable():  # J v differentiates the backward graph
            values = fn(*primals)
        dummy = torch.zeros_like(values, requires_grad=True)
        pulled = torch.autograd.grad(values, primals, dummy, create_graph=True, allow_unused=True)
        live = [i for i, g in enumerate(pulled) if g is not None and g.requires_grad]
        columns = self.unflatten(block)
        JV = []
        for j in range(block.shape[1]):
            if not live:
                JV.append(torch.zeros_like(values))
                continue
            (Jv,) = torch.autograd.grad(
                [pulled[i] for i in live],
                dummy,
                grad_outputs=[columns[i][..., j] for i in live],
                retain_graph=True,
            )
            JV.append(Jv)
        MJV = middle(values.detach(), torch.stack(JV))
        return self._pull_back(values, primals, list(MJV), block)

    def _pull_back(self, outputs, primals, cotangents, block) -> torch.Tensor:
        """``[J^T u_j]_j`` as an ``(n, k)`` block, one backward per cotangent ``u_j``."""
        k = len(cotangents)
        result = torch.zeros_like(block)
        for j, u in enumerate(cotangents):
            grads = torch.autograd.grad(  # zeros for parameters the outputs do not use
                outputs, primals, grad_outputs=u, retain_graph=j < k - 1, materialize_grads=True
            )
            result[:, j] = self.flatten(grads)
        return result

    _forward_reroute = False  # True once a fused kernel without a jvp was met (CPU attention)

    def _forward_mode(self, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()``, a product that uses forward mode; a kernel without a forward-mode
        formula that :func:`twice_differentiable` reroutes (fused attention: its math form
        has one) makes this and every later call run under the reroute."""
        try:
            with twice_differentiable(self._forward_reroute):
                return compute()
        except NotImplementedError:
            if self._forward_reroute:
                raise
            self._forward_reroute = True
            with twice_differentiable():
                return compute()


class GGNOperator(_FunctionalOperator):
    """The generalised Gauss-Newton matrix ``G = J^T H_L J`` (Schraudolph 2002).

    ``J`` is the Jacobian of the network outputs with respect to the chosen parameters and
    ``H_L`` the exact Hessian of the loss with respect to the outputs
    (:mod:`~jupyter_curvature.operators.loss_hessians`). Per batch: one forward that keeps the
    graph for ``J^T`` (``torch.func.vjp``), then for the block ``J V`` by forward mode
    (``torch.func.jvp``, vectorised over the columns), ``H_L (J V)`` in closed form, and
    ``J^T (H_L J V)``. ``G`` is positive semi-definite for convex losses and equals the Fisher
    for softmax cross-entropy and Gaussian MSE (Martens 2020).

    A single vector takes a cheaper path: one forward with dual numbers
    (``torch.autograd.forward_ad``) gives the outputs *and* ``J v`` while recording the reverse
    graph of the outputs, so ``J^T`` needs no second forward (in units of a layer's forward:
    primal 1 + tangent 2 + backward 2 = 5, against 6 for ``vjp`` + ``jvp``, which recomputes the
    primal). Models with an operation that has no forward-mode formula (a custom
    ``autograd.Function`` without ``jvp``) or that ``torch.func`` refuses (a Function without
    ``setup_context``) fall back to reverse mode only (the double-backward trick for ``J v``),
    for single vectors and blocks alike, which gives the same product at a higher cost.

    Args:
        output_hessian: ``fn(outputs, targets, U) -> H_L U`` for losses not built in.
        (others as :class:`EmpiricalRiskOperator`)
    """

    def __init__(
        self,
        model,
        loss_fn,
        data,
        params=None,
        *,
        output_hessian: OutputHessian | None = None,
        **kwargs,
    ):
        check_loss_fn(loss_fn)
        self._output_hessian = output_hessian or output_hessian_for(loss_fn)
        _load_forward_ad()  # before the first dual number: its warning is torch's
        super().__init__(model, loss_fn, data, params, **kwargs)

    _needs_tensor_outputs = True  # J and H_L are taken of one output tensor

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        return self._accumulate(block, self._batch_ggn)

    _forward_mode_works = True  # False once an operation without a forward-mode formula is met

    def _check_batch(self, batch: Batch) -> None:
        """The shared checks, then: no custom Function that neither mode can differentiate."""
        with recorded_calls(self.model) as calls:
            self._loss_and_gradient(
                batch, lambda loss: check_twice_differentiable(loss, self.params, calls, False)
            )

    def _batch_ggn(self, batch: Batch, block: torch.Tensor) -> torch.Tensor:
        if block.shape[1] > 1 or not self._forward_mode_works:
            return self._batch_ggn_functional(batch, block)
        try:
            return self._forward_mode(lambda: self._batch_ggn_dual(batch, block))
        except NotImplementedError:  # e.g. a custom autograd.Function without jvp
            self._forward_mode_works = self._functorch_works = False  # jvp would fail alike
            return self._batch_ggn_functional(batch, block)

    def _batch_ggn_dual(self, batch: Batch, block: torch.Tensor) -> torch.Tensor:
        """``G v`` for one vector: a dual-number forward (outputs and ``J v``), one backward."""
        primals = [p.detach().requires_grad_() for p in self.params]
        tangents = [t[..., 0] for t in self.unflatten(block)]
        with _FORWARD_AD, fwAD.dual_level():
            duals = [fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
            outputs, Jv = fwAD.unpack_dual(self._function(batch)(*duals))
        if Jv is None:  # the outputs do not depend on the chosen parameters
            Jv = torch.zeros_like(outputs)
        self._loss(outputs.detach(), batch)  # names a batch with NaN/inf loss
        HJv = self._output_hessian(outputs.detach(), batch.targets, Jv.unsqueeze(0))[0]
        return self._pull_back(outputs, primals, [HJv], block)

    def _batch_ggn_functional(self, batch: Batch, block: torch.Tensor) -> torch.Tensor:
        """``G V`` for a block: ``torch.func.vjp`` once, ``jvp`` and the pullback vmapped over
        columns; reverse mode only for a model that torch.func or forward mode refuses."""

        def output_hessian(outputs: torch.Tensor, JV: torch.Tensor) -> torch.Tensor:
            self._loss(outputs, batch)  # names a batch with NaN/inf loss
            return self._output_hessian(outputs, batch.targets, JV)

        return self._sandwich(self._function(batch), block, output_hessian)


def _one(x: Any) -> Any:
    """One sample (inside vmap: without its batch dimension) as a batch of one."""
    return map_tensors(lambda t: t.unsqueeze(0), x)


class EmpiricalFisherOperator(_FunctionalOperator):
    """The gradient covariance ("empirical Fisher") ``F = (1/N) sum_n g_n g_n^T``.

    ``g_n`` is the gradient of the loss on sample ``n`` alone (``loss_fn`` on a batch of one;
    for ``reduction="sum"`` the ``1/N`` is dropped). This is *not* the Fisher: it uses the true
    labels instead of the model's (Kunstner et al. 2019). Per-sample gradients come from
    ``torch.func.vmap(grad)``, so the cost per batch is one vectorised gradient; memory is
    ``B x n`` per batch. A model that torch.func cannot transform (a custom
    ``autograd.Function`` without ``setup_context``, a ``.item()`` in the forward) gets them
    from a loop of plain ``torch.autograd.grad`` calls, one per sample: the same numbers,
    ``B`` backward passes per batch. The inputs split per sample are the batch-sized tensors
    not marked :func:`~jupyter_curvature.core.batches.shared` (``Batch.per_sample_dims``); a
    forgotten mark is named at construction
    (:func:`~jupyter_curvature.core.batches.check_per_sample_split`).

    A loss over tokens (:class:`~jupyter_curvature.core.losses.TokenCrossEntropy`: ``terms``
    and ``num_terms``) has one observation per counted token: ``F = (1/T) sum_t g_t g_t^T``
    over the ``T`` counted tokens of all batches, computed per batch as ``J_l^T (J_l V)``
    with ``J_l`` the Jacobian of the per-token losses (forward and reverse mode, as the GGN).
    """

    _vmap_works = True  # False once torch.func refused the model (then a per-sample loop)

    def __init__(self, model, loss_fn, data, params=None, **kwargs):
        super().__init__(model, loss_fn, data, params, **kwargs)
        if self.batchnorm == "train" and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
        ):
            raise ValueError(
                "EmpiricalFisherOperator needs per-sample gradients, which BatchNorm with batch "
                "statistics does not have; use batchnorm='eval'"
            )

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        return self._accumulate(block, self._batch_fisher)

    def _check_batch(self, batch: Batch) -> None:
        """The shared checks, then: splitting the inputs per sample keeps the samples' outputs
        (an input shared by the batch but batch-sized must be marked ``jc.shared``)."""
        super()._check_batch(batch)
        if not has_terms(self.loss_fn):  # a token loss's products never split the batch
            check_per_sample_split(batch, lambda b: b.call(self.model))

    def per_sample_gradients(self, batch: Batch) -> torch.Tensor:
        """The ``(B, n)`` matrix of per-sample gradients of one (device-placed) batch."""
        names, model, loss_fn, pick = self.param_names, self.model, self.loss_fn, self.outputs
        primals = self._detached_params()

        # only per-sample inputs are split (core/batches.py: Batch.per_sample_dims): inputs
        # marked jc.shared, or not batch-sized, reach every sample whole
        arg_dims, kw_dims = batch.per_sample_dims()

        def sample_loss(params, args, kwargs, target):
            args = tuple(a if d is None else _one(a) for a, d in zip(args, arg_dims))
            kwargs = {k: v if kw_dims[k] is None else _one(v) for k, v in kwargs.items()}
            out = functional_call(model, dict(zip(names, params)), args, kwargs, strict=False)
            return loss_fn(_inputs.model_outputs(out, pick), target.unsqueeze(0))

        if self._vmap_works:
            try:
                grads = vmap(grad(sample_loss), in_dims=(None, arg_dims, kw_dims, 0))(
                    primals, batch.args, batch.kwargs, batch.targets
                )
                return torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)
            except RuntimeError as exc:
                if not _FUNCTORCH_REFUSAL.search(str(exc)):
                    raise
                self._vmap_works = False
        rows = []
        for i in range(batch.size):
            params = [p.requires_grad_() for p in self._detached_params()]
            one = batch.sample(i)  # per-sample inputs sliced to a batch of one, shared whole
            out = functional_call(
                model, dict(zip(names, params)), one.args, one.kwargs, strict=False
            )
            loss = loss_fn(_inputs.model_outputs(out, pick), one.targets)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        (torch.zeros_like(p) if g is None else g).reshape(-1)
                        for g, p in zip(grads, params)
                    ]
                )
            )
        return torch.stack(rows)

    def _batch_fisher(self, batch: Batch, block: torch.Tensor) -> torch.Tensor:
        if has_terms(self.loss_fn):
            product = self._term_fisher(batch, block)
            norm = self._weight(batch)
        else:
            check_equal_sample_weights(self.loss_fn, batch.targets, "EmpiricalFisherOperator")
            self._loss(self._forward(batch), batch)
            G = self.per_sample_gradients(batch)
            product = G.T @ (G @ block)  # sum over the batch's samples
            norm = batch.size  # w_b is B_b times the samples' common weight
        # _accumulate multiplies by w_b for the mean; the per-sample sum already is the total
        return product / max(norm, 1) if self.reduction == "mean" else product

    def _term_fisher(self, batch: Batch, block: torch.Tensor) -> torch.Tensor:
        """``sum_t g_t g_t^T V = J_l^T (J_l V)`` over the batch's per-term losses ``l``."""
        forward = self._function(batch)

        def terms(*params: torch.Tensor) -> torch.Tensor:
            return self.loss_fn.terms(forward(*params), batch.targets)

        def identity(losses: torch.Tensor, JV: torch.Tensor) -> torch.Tensor:
            self._check_finite(losses, batch)  # names a batch with NaN/inf loss
            return JV

        return self._sandwich(terms, block, identity)
