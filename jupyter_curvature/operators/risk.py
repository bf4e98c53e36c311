"""The empirical risk whose curvature every operator here is: data passes, weights, checks.

:class:`EmpiricalRiskOperator` holds what the Hessian, GGN and empirical Fisher operators
share. Each of them is the curvature of ``loss_fn`` applied to *all* of ``data`` as if it were
one batch (the definition of ``docs/operators.md``). With ``reduction="mean"`` that is the mean
over all ``N`` samples, so a batch ``b`` of ``B_b`` samples enters with weight ``B_b / N`` (a
short last batch counts by its size); with ``reduction="sum"`` batches are simply added. ``N``
is counted during the pass, so no extra pass over the data is needed. A loss whose mean is over
other terms (the counted tokens of :class:`~jupyter_curvature.core.losses.TokenCrossEntropy`)
weights a batch by their number instead (:func:`~jupyter_curvature.core.losses.mean_weight`),
so the risk is the mean over the tokens that count across all batches.

Products are exact (no sampling, no approximation) and use only one batch's graph at a time.
A block ``(n, k)`` of vectors shares the work of each batch: one forward (and for the Hessian
one gradient graph) serves all ``k`` columns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..core import inputs as _inputs
from ..core import params as _params
from ..core.batches import Batch, BatchLayout, BatchSource
from ..core.distributed.primitives import all_reduce_sum, check_start, is_distributed
from ..core.losses import mean_weight, no_counted_terms_error
from ..core.model_state import check_batchnorm_policy, curvature_mode, model_lock
from .base import CurvatureOperator
from .loss_hessians import loss_reduction

#: half-precision models: each batch's product in the model's dtype (its autograd), their
#: weighted sum over batches and ranks in float32, which is also the dtype of the result
HALF_ACCUMULATION = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def check_loss_fn(loss_fn: Any) -> None:
    """A ``loss_fn`` that is no function fails here, before anything looks it up."""
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be callable (a torch criterion), got {type(loss_fn).__name__}"
        )


class EmpiricalRiskOperator(CurvatureOperator):
    """Shared machinery: parameter choice, data passes, sample weighting, validation.

    Args:
        model: the network; products run on its device and in its parameters' dtype
            (floating inputs are cast to that dtype, so a ``.double()`` model works end to end).
        loss_fn: ``loss_fn(outputs, targets) -> scalar``, a torch criterion with reduction
            ``"mean"`` or ``"sum"``, or :class:`~jupyter_curvature.core.losses.TokenCrossEntropy`
            (the mean over the counted tokens of all batches).
        data: a DataLoader, any re-iterable of ``(inputs, targets)`` batches, or one batch;
            Hugging Face dict batches (``input_ids``, ``attention_mask``, ..., ``labels``) are
            called ``model(**inputs)`` with the labels as targets
            (:func:`~jupyter_curvature.core.batches.labels_layout`).
        params: which parameters (see :func:`~jupyter_curvature.core.params.select_parameters`).
        batchnorm: ``"eval"`` (running statistics; default) or ``"train"`` (batch statistics).
        batch_layout: ``fn(batch) -> (model_args, targets)`` or
            ``(model_args, model_kwargs, targets)`` for other batch layouts.
        check: run the first batch now (forward and gradient), so bad input fails at
            construction rather than in the middle of a spectrum.
        check_deterministic: with ``check``, read the whole data twice and require the
            same risk and gradient up to rounding (see
            :func:`~jupyter_curvature.core.inputs.check_same_pass`), and every pass to
            read the same number of samples: random augmentation, dropout left on, a random
            subset or batch statistics of reshuffled batches would make each product another
            matrix. A loader that only reshuffles the same samples passes: the risk is a sum
            over samples. ``False`` skips this.
        outputs: ``fn(model_output) -> tensor`` picking the tensor the loss takes from a model
            that returns a tuple or a dict (``outputs=lambda out: out["logits"]``). Without
            it, an output with a ``logits`` tensor (Hugging Face) gives its logits.
        distributed: sum the partial products of all ``torch.distributed`` ranks (each rank
            passes its own shard of the data); ``None`` does so whenever a process group with
            more than one rank is initialised.
    """

    #: whether the outputs themselves are differentiated (the GGN), so must be one tensor
    _needs_tensor_outputs = False

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        data: Any,
        params: _params.ParamSpec = None,
        *,
        batchnorm: str = "eval",
        batch_layout: BatchLayout | None = None,
        check: bool = True,
        check_deterministic: bool = True,
        outputs: _inputs.OutputsFn | None = None,
        distributed: bool | None = None,
    ) -> None:
        named = _params.select_parameters(model, params)
        if outputs is not None and not callable(outputs):
            raise TypeError(
                f"outputs must be a function of the model's output, got {type(outputs).__name__}"
            )
        check_loss_fn(loss_fn)
        self.model = model
        self.loss_fn = loss_fn
        self.reduction = loss_reduction(loss_fn)
        self.batchnorm = check_batchnorm_policy(batchnorm)
        self.param_names = [name for name, _ in named]
        self.params = [p for _, p in named]
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) > 1:
            raise ValueError(
                f"the chosen parameters mix dtypes {sorted(map(str, dtypes))}; convert the model "
                "with model.to(dtype) or choose parameters of one dtype with params="
            )
        self.source = BatchSource(data, batch_layout)
        self.distributed = distributed
        self.check_deterministic = bool(check_deterministic)
        self.outputs = outputs
        #: the weight of the data in the mean: its samples, or its counted terms (tokens)
        self.num_samples: int | None = None
        first = self.params[0]
        super().__init__(sum(p.numel() for p in self.params), first.dtype, first.device)
        if check:
            self._check_first_batch()
        if self.distributed or (self.distributed is None and is_distributed()):
            # same parameters on every rank and a backend that reduces this device: fail here
            check_start(self.param_names, self.params, self.device)

    # ----------------------------------------------------------------- helpers
    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-parameter tensors (in :attr:`params` order) as one flat vector."""
        return _params.flatten(tensors)

    def _new_lock(self) -> threading.RLock:
        return model_lock(self.model)  # the model's state is shared by all its operators

    def parameter_versions(self) -> tuple[int, ...]:
        return tuple(p._version for p in self.params)

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """A flat vector ``(n,)`` or block ``(n, k)`` as tensors shaped like :attr:`params`."""
        return _params.unflatten(vector, self.params)

    def _mode(self):
        return curvature_mode(self.model, self.params, self.batchnorm)

    def _batches(self):
        """The data's batches on the model's device and dtype, less those with no term in the
        mean (every label ``ignore_index``: their loss is 0/0 and their weight 0)."""
        for batch in self.source:
            if self.reduction == "mean" and self._weight(batch) == 0:
                continue
            yield batch.to(self.device, self.dtype)

    def _check_state(self) -> None:
        """The weights' check before each product: a NaN in them makes every entry NaN."""
        _inputs.check_finite_parameters(self.model.named_parameters())

    def _forward(self, batch: Batch, model: Callable[..., Any] | None = None) -> Any:
        """The outputs the loss takes: ``model`` (default the module) on the batch, then ``outputs=``."""
        with _inputs.explain_forward(batch, self.dtype):
            raw = batch.call(model or self.model)
        return _inputs.model_outputs(raw, self.outputs)

    def _loss(self, outputs: Any, batch: Batch) -> torch.Tensor:
        with _inputs.explain_loss(outputs, batch):
            loss = self.loss_fn(outputs, batch.targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                f"loss_fn must return a scalar, got {shape}; use reduction='mean' or 'sum'"
            )
        self._check_finite(loss, batch)
        return loss if loss.ndim == 0 else loss.reshape(())  # a view would hide a leaf

    @staticmethod
    def _check_finite(loss: torch.Tensor, batch: Batch) -> None:
        if not bool(torch.isfinite(loss).all()):
            raise ValueError(
                f"the loss is {loss.sum().item()} on batch {batch.index}: the model or the data "
                "produced NaN/inf there; check that batch and the weights"
            )

    def _check_first_batch(self) -> None:
        """Weights, first batch, outputs, loss and gradient; with ``check_deterministic`` the
        whole data, twice (:func:`~jupyter_curvature.core.inputs.check_same_pass`).

        Costs one forward and one gradient of the first batch, and with
        ``check_deterministic`` two gradients of the whole data (a Lanczos run costs
        hundreds of products of two to three gradients each).
        """
        _inputs.check_finite_parameters(self.model.named_parameters())
        with self._mode():
            first = next(self._batches(), None)
            if first is None:
                self.source.first()  # empty data fails here, naming it
                raise no_counted_terms_error(self.loss_fn)
            self._check_batch(first)
            if self.check_deterministic:
                _inputs.check_same_pass(
                    self._pass_loss_and_gradient(), self._pass_loss_and_gradient(), self.dtype
                )

    def _check_batch(self, batch: Batch) -> None:
        """The first batch's forward, loss and gradient (subclasses add their own checks)."""
        self._loss_and_gradient(batch)

    def _pass_loss_and_gradient(self) -> _inputs.PassSums:
        """One pass over the data: the risk and its gradient, and the sums of the per-batch
        magnitudes that bound their rounding (weights ``w_b`` as in :meth:`_accumulate`)."""
        sums = _inputs.PassSums()
        for batch in self._batches():
            loss, grad = self._loss_and_gradient(batch)
            sums.add(loss, grad, self._weight(batch) if self.reduction == "mean" else 1)
        return sums

    def _loss_and_gradient(
        self, batch: Batch, check_graph: Callable[[torch.Tensor], None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss and flat gradient; ``check_graph(loss)`` sees the graph first."""
        outputs = self._forward(batch)
        if self._needs_tensor_outputs:
            _inputs.require_tensor_outputs(outputs, type(self).__name__)
        loss = self._loss(outputs, batch)
        if check_graph is not None and loss.requires_grad:
            check_graph(loss)
        grads = (
            torch.autograd.grad(loss, self.params, allow_unused=True)
            if loss.requires_grad
            else [None] * len(self.params)
        )
        _inputs.check_depends_on_params(loss, outputs, grads)
        flat = self.flatten(
            [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params)]
        )
        return loss.detach(), flat.detach()

    def _weight(self, batch: Batch) -> int | float:
        """The batch's weight in the mean: what its loss's mean divides by (samples, counted
        tokens, the summed class weights of the counted labels)."""
        return mean_weight(self.loss_fn, batch)

    def _add(
        self, total: torch.Tensor | None, product: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, int]:
        """``total + w_b P_b`` (``P_b`` for the sum) and ``w_b``.

        ``total=None`` starts the sum at the first batch's term and later terms are added in
        place, fused: one pass over the ``n x k`` block per batch instead of a zero fill, a
        product and a sum (on a large model with little data these passes, not the backward,
        were most of a product: 11M parameters and 2 images).
        """
        weight = self._weight(batch)
        scale = weight if self.reduction == "mean" else 1
        # a half-precision batch product is widened first (``accumulation_dtype``)
        product = product.to(self.accumulation_dtype)
        if total is None:
            return product * scale, weight  # a new tensor: never the caller's ``product``
        return total.add_(product, alpha=scale), weight

    @property
    def accumulation_dtype(self) -> torch.dtype:
        """The dtype the batches' products are summed (and returned) in: float32 for a
        float16/bfloat16 model (docs/operators.md, "Half precision"), else the model's."""
        return HALF_ACCUMULATION.get(self.dtype, self.dtype)

    def _accumulate(self, block: torch.Tensor, batch_product) -> torch.Tensor:
        """``sum_b w_b P_b`` over batches, ``w_b = B_b / N`` for the mean (``T_b / T`` for a
        token loss), 1 for the sum."""
        total, count = None, 0
        with self._mode():
            for batch in self._batches():
                total, weight = self._add(total, batch_product(batch, block), batch)
                count += weight
        return self._finish(total, count, block)

    def _finish(self, total: torch.Tensor | None, count: int, block: torch.Tensor) -> torch.Tensor:
        """Sum over ranks when distributed, then divide by ``N`` for the mean (``total=None``:
        this rank had no batch)."""
        if total is None:
            total = torch.zeros_like(block, dtype=self.accumulation_dtype)
        if self.distributed or (self.distributed is None and is_distributed()):
            total, count = all_reduce_sum(total, count)
        if count == 0:
            raise ValueError("data is empty: it yielded no batch; check the dataset and the loader")
        if self.check_deterministic:
            _inputs.check_same_count(count, self.num_samples)
        self.num_samples = count
        return total.div_(count) if self.reduction == "mean" else total  # ours: in place
