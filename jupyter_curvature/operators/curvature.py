"""Matrix-free curvature of the empirical risk: Hessian, generalised Gauss-Newton, empirical Fisher.

Every operator here is the curvature of ``loss_fn`` applied to *all* of ``data`` as if it were
one batch (the definition of ``docs/operators.md``). With ``reduction="mean"`` that is the mean over all ``N`` samples, so a
batch ``b`` of ``B_b`` samples enters with weight ``B_b / N`` (a short last batch counts by its
size); with ``reduction="sum"`` batches are simply added. ``N`` is counted during the pass, so no
extra pass over the data is needed. A loss whose mean is over other terms (the counted tokens
of :class:`~jupyter_curvature.core.losses.TokenCrossEntropy`) weights a batch by their number
instead (:func:`~jupyter_curvature.core.losses.mean_weight`), so the risk is the mean over the
tokens that count across all batches.

Products are exact (no sampling, no approximation) and use only one batch's graph at a time.
A block ``(n, k)`` of vectors shares the work of each batch: one forward (and for the Hessian
one gradient graph) serves all ``k`` columns.
"""

from __future__ import annotations

import functools
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from ..core import inputs as _inputs
from ..core.batches import Batch
from ..core.losses import has_terms
from ._second_order import check_twice_differentiable, recorded_calls, twice_differentiable
from .blocks import vectorised_block_backward
from .loss_hessians import OutputHessian, output_hessian_for
from .risk import EmpiricalRiskOperator, check_loss_fn

#: disjoint lists of parameter indices: the blocks of a block-diagonal product
Groups = Sequence[Sequence[int]]


# forward-mode AD keeps its nesting level in process-wide globals (``_current_level`` of
# torch.autograd.forward_ad, ``JVP_NESTING`` of torch.func.jvp): two threads inside it at once
# fail with "Nested forward mode AD is not supported", whatever models they differentiate
_FORWARD_AD = threading.Lock()


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


class HessianOperator(EmpiricalRiskOperator):
    """The Hessian ``H = d^2 L / dw^2`` of the empirical risk, by Pearlmutter's trick.

    ``H v = d/dw (g(w)^T v)`` with ``g = dL/dw`` built with ``create_graph=True`` (Pearlmutter
    1994): per batch one gradient graph, then one backward through it per column of the block,
    so ``k`` vectors share one forward and one gradient (``vectorize=True`` runs the columns as
    one ``is_grads_batched`` backward instead; on CPU convolutions that was slower). With ``keep_graphs=True`` the per-batch gradient graphs are built once and kept
    across products (memory: every batch's graph; for data that fits), so each later product
    costs only the second backward.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 1, bias=False).double()
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    >>> H = HessianOperator(model, nn.MSELoss(reduction="sum"), (x, torch.zeros(2, 1).double()))
    >>> H.to_dense().tolist()  # 2 X^T X for a linear least-squares model
    [[2.0, 0.0], [0.0, 8.0]]
    """

    # route calls through twice_differentiable() until the first batch shows none needs it
    _reroute = True

    def __init__(
        self,
        model,
        loss_fn,
        data,
        params=None,
        *,
        keep_graphs: bool = False,
        vectorize: bool = False,
        **kwargs,
    ):
        self.keep_graphs = bool(keep_graphs)
        self.vectorize = bool(vectorize)
        self._graphs: list[tuple[Batch, list[torch.Tensor | None]]] | None = None
        self._graph_versions: list[int] | None = None
        super().__init__(model, loss_fn, data, params, **kwargs)

    def _matmat(self, block: torch.Tensor, groups: Groups | None = None) -> torch.Tensor:
        if self.keep_graphs:
            return self._matmat_kept(block, groups)
        return self._accumulate(block, functools.partial(self._batch_hvp, groups=groups))

    def _check_batch(self, batch: Batch) -> None:
        """The shared checks, then one Hessian product of the batch: an operation torch cannot
        differentiate twice is named now, not in the middle of a spectrum."""
        with twice_differentiable() as mode, recorded_calls(self.model) as calls:
            self._loss_and_gradient(
                batch, lambda loss: check_twice_differentiable(loss, self.params, calls)
            )
        self._reroute = mode.routed > 0

    def _gradient_graph(self, batch: Batch) -> list[torch.Tensor | None]:
        """``dL_b/dw`` with its graph; ``None`` where the gradient is constant (zero rows of H).

        The forward runs in :func:`twice_differentiable` when the first batch needed it, so
        that operations whose second derivative torch lacks (``hardsigmoid``, fused attention)
        get one.
        """
        with twice_differentiable(self._reroute):
            loss = self._loss(self._forward(batch), batch)
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        return [g if g is not None and g.requires_grad else None for g in grads]

    def _batch_hvp(
        self,
        batch: Batch,
        block: torch.Tensor,
        grads=None,
        keep: bool = False,
        groups: Groups | None = None,
    ):
        """The batch's ``H V``, or with ``groups`` its block diagonal ``diag(H_gg) V``.

        ``groups``: disjoint lists of parameter indices. For each group ``g`` the backward runs
        from the gradients of ``g`` to the parameters of ``g`` only (``H_gg V_g``), through the
        one gradient graph of the batch; autograd visits only the part of the graph between
        them, and a column whose rows in ``g`` are zero costs nothing.
        """
        if grads is None:
            grads = self._gradient_graph(batch)
        if groups is None:
            groups = [list(range(len(self.params)))]
        k = block.shape[1]
        columns = self.unflatten(block)
        if self.vectorize and len(groups) > 1:
            out = vectorised_block_backward(self.params, grads, columns, groups, keep)
            if out is not None:
                return torch.cat([o.reshape(-1, k) for o in out])
        out: list[torch.Tensor | None] = [None] * len(columns)  # None: a zero block
        for number, group in enumerate(groups):
            live = [i for i in group if grads[i] is not None]
            if not live:
                continue
            keep_g = keep or number < len(groups) - 1
            targets = [self.params[i] for i in group]
            outputs = [grads[i] for i in live]
            hv = None
            if self.vectorize and k > 1:
                hv = self._batch_hvp_vectorised(
                    outputs, targets, [columns[i] for i in live], keep_g
                )
            if hv is None:
                # measured faster on CPU than vmap over the backward (conv double backward)
                hv = self._batch_hvp_columns(
                    outputs, targets, [columns[i] for i in live], k, keep_g
                )
            for i, h in zip(group, hv):
                if h is not None:
                    out[i] = h
        return torch.cat(
            [(torch.zeros_like(c) if o is None else o).reshape(-1, k) for o, c in zip(out, columns)]
        )

    @staticmethod
    def _batch_hvp_vectorised(outputs, targets, columns, keep):
        """All ``k`` columns in one vectorised backward (``None``: no batching rule)."""
        k = columns[0].shape[-1]
        try:
            hv = torch.autograd.grad(
                outputs,
                targets,
                grad_outputs=[c.movedim(-1, 0) for c in columns],
                retain_graph=keep,
                allow_unused=True,
                is_grads_batched=True,
            )
        except RuntimeError:  # an operation without a batching rule: one backward per column
            return None
        return [
            None if h is None else h.reshape(k, *t.shape).movedim(0, -1)
            for h, t in zip(hv, targets)
        ]

    @staticmethod
    def _batch_hvp_columns(outputs, targets, columns, k, keep):
        """One backward per column; a column that is zero on ``columns`` is skipped (zero).

        ``None`` for a target the gradients do not reach."""
        # one reduction pass and one host sync for all parameters and columns (a sync per
        # parameter and column stalled a GPU's queue 60 times per product on ResNet-20); the
        # columns are finite (checked), so the max-norm is > 0 exactly when one entry is
        sizes = [
            torch.linalg.vector_norm(c.reshape(-1, k), ord=float("inf"), dim=0) for c in columns
        ]
        wanted = [j for j, size in enumerate(torch.stack(sizes).amax(0).tolist()) if size > 0]
        if wanted == [0] and k == 1:  # one vector: autograd's result is the answer, no copies
            hv = torch.autograd.grad(
                outputs,
                targets,
                grad_outputs=[c[..., 0] for c in columns],
                retain_graph=keep,
                allow_unused=True,
            )
            return [None if h is None else h.unsqueeze(-1) for h in hv]
        out = [
            torch.zeros(*t.shape, k, dtype=columns[0].dtype, device=columns[0].device)
            for t in targets
        ]
        for number, j in enumerate(wanted):
            hv = torch.autograd.grad(
                outputs,
                targets,
                grad_outputs=[c[..., j] for c in columns],
                retain_graph=keep or number < len(wanted) - 1,
                allow_unused=True,
            )
            for i, h in enumerate(hv):
                if h is not None:
                    out[i][..., j] = h
        return out

    def _matmat_kept(self, block: torch.Tensor, groups: Groups | None = None) -> torch.Tensor:
        """Products through gradient graphs built once and kept (``keep_graphs=True``).

        Each later product costs only the second backward (PyHessian reuses one batch's graph
        the same way). The graphs are rebuilt whenever a parameter changes in place (its
        version counter moves), so a training step in between never gives stale products.
        """
        versions = [p._version for p in self.params]
        if self._graphs is None or versions != self._graph_versions:
            self._graphs = []
            with self._mode():
                for batch in self._batches():
                    self._graphs.append((batch, self._gradient_graph(batch)))
            self._graph_versions = versions
        total, count = None, 0
        for batch, grads in self._graphs:
            product = self._batch_hvp(batch, block, grads=grads, keep=True, groups=groups)
            total, weight = self._add(total, product, batch)
            count += weight
        return self._finish(total, count, block)

    def release_graphs(self) -> None:
        """Free the kept gradient graphs (they are rebuilt on the next product)."""
        self._graphs = self._graph_versions = None


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
    ``autograd.Function`` without ``jvp``) fall back to reverse mode only (the double-backward
    trick for ``J v``), which gives the same product at a higher cost.

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
        if self._forward_mode_works:
            try:
                if block.shape[1] == 1:
                    return self._forward_mode(lambda: self._batch_ggn_dual(batch, block))
                return self._forward_mode(lambda: self._batch_ggn_functional(batch, block))
            except NotImplementedError:  # e.g. a custom autograd.Function without jvp
                self._forward_mode_works = False
        return self._batch_ggn_reverse(batch, block)

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

    def _batch_ggn_reverse(self, batch: Batch, block: torch.Tensor) -> torch.Tensor:
        """``G V`` with reverse mode only, for models with an operation that has no jvp.

        ``J v`` is the derivative of ``u -> (J^T u) . v`` (the double-backward trick), so only
        backward formulas are needed: one forward, then per column two backwards for ``J v``
        and one for ``J^T (H_L J v)``.
        """
        primals = [p.detach().requires_grad_() for p in self.params]
        with twice_differentiable():  # J v differentiates the backward graph
            outputs = self._function(batch)(*primals)
        self._loss(outputs.detach(), batch)
        dummy = torch.zeros_like(outputs, requires_grad=True)
        pulled = torch.autograd.grad(outputs, primals, dummy, create_graph=True, allow_unused=True)
        live = [i for i, g in enumerate(pulled) if g is not None and g.requires_grad]
        columns = self.unflatten(block)
        JV = []
        for j in range(block.shape[1]):
            if not live:
                JV.append(torch.zeros_like(outputs))
                continue
            (Jv,) = torch.autograd.grad(
                [pulled[i] for i in live],
                dummy,
                grad_outputs=[columns[i][..., j] for i in live],
                retain_graph=True,
            )
            JV.append(Jv)
        HJV = self._output_hessian(outputs.detach(), batch.targets, torch.stack(JV))
        return self._pull_back(outputs, primals, list(HJV), block)

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

    def _batch_ggn_functional(self, batch: Batch, block: torch.Tensor) -> torch.Tensor:
        """``G V`` for a block: ``torch.func.vjp`` once, ``jvp`` and the pullback vmapped over columns."""

        def output_hessian(outputs: torch.Tensor, JV: torch.Tensor) -> torch.Tensor:
            self._loss(outputs, batch)  # names a batch with NaN/inf loss
            return self._output_hessian(outputs, batch.targets, JV)

        return self._jacobian_sandwich(self._function(batch), block, output_hessian)


def _one(x: Any) -> Any:
    """One sample (inside vmap: without its batch dimension) as a batch of one."""
    return x.unsqueeze(0) if isinstance(x, torch.Tensor) else x


#: torch.func's refusals of a model that plain autograd can still differentiate
_FUNCTORCH_REFUSAL = re.compile(r"setup_context|functorch|vmap|torch\.func", re.IGNORECASE)


class EmpiricalFisherOperator(_FunctionalOperator):
    """The gradient covariance ("empirical Fisher") ``F = (1/N) sum_n g_n g_n^T``.

    ``g_n`` is the gradient of the loss on sample ``n`` alone (``loss_fn`` on a batch of one;
    for ``reduction="sum"`` the ``1/N`` is dropped). This is *not* the Fisher: it uses the true
    labels instead of the model's (Kunstner et al. 2019). Per-sample gradients come from
    ``torch.func.vmap(grad)``, so the cost per batch is one vectorised gradient; memory is
    ``B x n`` per batch. A model that torch.func cannot transform (a custom
    ``autograd.Function`` without ``setup_context``, a ``.item()`` in the forward) gets them
    from a loop of plain ``torch.autograd.grad`` calls, one per sample: the same numbers,
    ``B`` backward passes per batch.

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

    def per_sample_gradients(self, batch: Batch) -> torch.Tensor:
        """The ``(B, n)`` matrix of per-sample gradients of one (device-placed) batch."""
        names, model, loss_fn, pick = self.param_names, self.model, self.loss_fn, self.outputs
        primals = self._detached_params()

        def sample_loss(params, args, kwargs, target):
            args = tuple(a.unsqueeze(0) for a in args)
            kwargs = {k: _one(v) for k, v in kwargs.items()}
            out = functional_call(model, dict(zip(names, params)), args, kwargs, strict=False)
            return loss_fn(_inputs.model_outputs(out, pick), target.unsqueeze(0))

        kw_dims = {k: 0 if isinstance(v, torch.Tensor) else None for k, v in batch.kwargs.items()}
        if self._vmap_works:
            try:
                grads = vmap(grad(sample_loss), in_dims=(None, 0, kw_dims, 0))(
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
            args = tuple(a[i] for a in batch.args)
            kwargs = {k: v[i] if kw_dims[k] == 0 else v for k, v in batch.kwargs.items()}
            loss = sample_loss(params, args, kwargs, batch.targets[i])
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
            product = self._forward_mode(lambda: self._term_fisher(batch, block))
        else:
            self._loss(self._forward(batch), batch)
            G = self.per_sample_gradients(batch)
            product = G.T @ (G @ block)  # sum over the batch's samples
        # _accumulate multiplies by w_b for the mean; the per-sample sum already is the total
        return product / max(self._weight(batch), 1) if self.reduction == "mean" else product

    def _term_fisher(self, batch: Batch, block: torch.Tensor) -> torch.Tensor:
        """``sum_t g_t g_t^T V = J_l^T (J_l V)`` over the batch's per-term losses ``l``."""
        forward = self._function(batch)

        def terms(*params: torch.Tensor) -> torch.Tensor:
            return self.loss_fn.terms(forward(*params), batch.targets)

        def identity(losses: torch.Tensor, JV: torch.Tensor) -> torch.Tensor:
            self._check_finite(losses, batch)  # names a batch with NaN/inf loss
            return JV

        return self._jacobian_sandwich(terms, block, identity)
