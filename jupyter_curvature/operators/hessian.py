"""The Hessian of the empirical risk, by Pearlmutter's trick (Pearlmutter 1994).

:class:`HessianOperator` multiplies by ``H = d^2 L / dw^2``, ``L`` the risk of
:class:`~jupyter_curvature.operators.risk.EmpiricalRiskOperator` (all of ``data`` as one
batch). Per batch: one gradient graph ``g_b = dL_b/dw`` (``create_graph=True``), then
``H_b v = d(g_b^T v)/dw``, one backward through that graph per column of the block. The
block diagonal of :class:`~jupyter_curvature.operators.blocks.BlockDiagonalOperator`
(``groups``) runs through the same graph, and graphs kept across products (``keep_graphs``,
:mod:`~jupyter_curvature.operators.graphs`) leave only the second backward per product.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from ..core.batches import Batch
from ._second_order import check_twice_differentiable, recorded_calls, twice_differentiable
from .blocks import vectorised_block_backward
from .graphs import ValueSnapshot
from .risk import EmpiricalRiskOperator

#: disjoint lists of parameter indices: the blocks of a block-diagonal product
Groups = Sequence[Sequence[int]]


class HessianOperator(EmpiricalRiskOperator):
    """The Hessian ``H = d^2 L / dw^2`` of the empirical risk, by Pearlmutter's trick.

    ``H v = d/dw (g(w)^T v)`` with ``g = dL/dw`` built with ``create_graph=True`` (Pearlmutter
    1994): per batch one gradient graph, then one backward through it per column of the block,
    so ``k`` vectors share one forward and one gradient (``vectorize=True`` runs the columns as
    one ``is_grads_batched`` backward instead; on CPU convolutions that was slower). With
    ``keep_graphs=True`` the per-batch gradient graphs are built once and kept across products
    (memory: every batch's graph; for data that fits), so each later product costs only the
    second backward.

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
        self._graph_values: ValueSnapshot | None = None
        # whether the model's double backward runs batched (is_grads_batched): None until the
        # first try, which keeps the graph so that a failure part-way leaves it whole for the
        # column loop; after a failure every product goes straight to the loop
        self._batches_backward: bool | None = None
        super().__init__(model, loss_fn, data, params, **kwargs)

    def _matmat(self, block: torch.Tensor, groups: Groups | None = None) -> torch.Tensor:
        if self.keep_graphs:
            return self._matmat_kept(block, groups)
        return self._accumulate(block, functools.partial(self._batch_hvp, groups=groups))

    def _check_batch(self, batch: Batch) -> None:
        """The shared checks, then one Hessian product of the batch: an operation torch cannot
        differentiate twice is named now, not in the middle of a spectrum."""
        with (
            twice_differentiable(lean=True) as mode,
            recorded_calls(self.model) as calls,
        ):
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
        with twice_differentiable(self._reroute, lean=True):
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
        if self._try_batched() and len(groups) > 1:
            retain = keep or self._batches_backward is None
            out = vectorised_block_backward(self.params, grads, columns, groups, retain)
            self._batches_backward = out is not None
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
            if self._try_batched() and k > 1:
                retain = keep_g or self._batches_backward is None
                hv = self._batch_hvp_vectorised(
                    outputs, targets, [columns[i] for i in live], retain
                )
                self._batches_backward = hv is not None
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

    def _try_batched(self) -> bool:
        """``vectorize=True`` and no batched backward has failed on this model yet."""
        return self.vectorize and self._batches_backward is not False

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
        the same way). The graphs are rebuilt whenever the value of a parameter or of a
        floating-point buffer (BatchNorm's running statistics) differs from the one they were
        built with, so a training step in between never gives stale products: the version
        counters catch in-place changes through autograd at no cost, and an exact comparison
        with a snapshot (:class:`~jupyter_curvature.operators.graphs.ValueSnapshot`) catches
        the rest, such as a hand-written ``p.data -= lr * p.grad`` that leaves the versions
        alone.
        """
        watched = self._watched_tensors()
        versions = [t._version for t in watched]
        if (
            self._graphs is None
            or versions != self._graph_versions
            or not self._graph_values.matches(watched)
        ):
            self._graphs = None  # free the old graphs before building the new ones
            graphs = []
            with self._mode():
                for batch in self._batches():
                    graphs.append((batch, self._gradient_graph(batch)))
            self._graphs = graphs
            # taken after the build: in train mode it moves BatchNorm's running statistics
            watched = self._watched_tensors()
            self._graph_versions = [t._version for t in watched]
            self._graph_values = ValueSnapshot(watched)
        total, count = None, 0
        # the backward differentiates with respect to the chosen parameters, so a chosen
        # frozen one needs requires_grad during the products too, restored afterwards
        with self._mode():
            for batch, grads in self._graphs:
                product = self._batch_hvp(batch, block, grads=grads, keep=True, groups=groups)
                total, weight = self._add(total, product, batch)
                count += weight
        return self._finish(total, count, block)

    def _watched_tensors(self) -> list[torch.Tensor]:
        """What a kept graph was built from: the parameters and the floating-point buffers."""
        buffers = [b for b in self.model.buffers() if b.is_floating_point()]
        return [*self.params, *buffers]

    def release_graphs(self) -> None:
        """Free the kept gradient graphs (they are rebuilt on the next product)."""
        self._graphs = self._graph_versions = self._graph_values = None
