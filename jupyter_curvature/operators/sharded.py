"""Curvature products of a model sharded with FSDP2 / DTensor (``torch.distributed.fsdp.fully_shard``).

Why not differentiate through FSDP itself: FSDP2 all-gathers a layer's parameters in a
forward pre-hook into new, *unsharded* tensors that are not in the autograd graph of the
sharded ``DTensor`` parameters (their gradient reaches the shards through a post-backward
hook that reduce-scatters ``.grad``). So ``torch.autograd.grad(loss, model.parameters())``
fails on a sharded model with "The differentiated Tensor at index 0 appears to not have been
used in the graph" (measured with torch 2.14, gloo, CPU: ``tests/test_fsdp.py`` keeps that
check), even before any second derivative; and FSDP refuses ``copy.deepcopy``.

The route taken here is the functional one: the full parameters are gathered once with
:meth:`DTensor.full_tensor` (one all-gather per parameter) into ``replica``, a plain copy of
the architecture (build it on the ``meta`` device: it costs no memory until filled), and the
products are those of an ordinary :class:`~jupyter_curvature.operators.HessianOperator` /
:class:`~jupyter_curvature.operators.GGNOperator` on the replica, each rank on its own data
shard, the partial products summed over ranks as for data-parallel products
(``docs/distributed.md``). Vectors are full-length (``n``) and the same on every rank, so
:func:`~jupyter_curvature.distributed.eigenpairs` and
:func:`~jupyter_curvature.distributed.spectral_density` run unchanged;
:meth:`ShardedOperator.shard` maps a result back to the parameters' layout (local shards).

Memory per rank: ``n`` parameters (the replica) beside the ``n / W`` shards, one batch's
graph of the full model (FSDP itself holds about one layer unsharded at a time), and the
Lanczos basis of full vectors (``8 n`` bytes per vector in float64). The trade-off is stated
in ``docs/distributed.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .base import CompositeOperator
from .functional import GGNOperator
from .graphs import ValueSnapshot
from .hessian import HessianOperator
from .risk import EmpiricalRiskOperator

CURVATURES = {"hessian": HessianOperator, "ggn": GGNOperator}


def _dtensor_class() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return None
    return DTensor


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a ``DTensor`` (FSDP2 / tensor parallel)."""
    cls = _dtensor_class()
    return cls is not None and any(isinstance(p, cls) for p in model.parameters())


def check_mesh(model: nn.Module) -> None:
    """Raise ``ValueError`` unless every sharded parameter lives on a mesh of all the ranks.

    The products sum every rank's data shard over the default process group; parameters
    sharded over another group (a mesh of a different size, or other ranks) would gather a
    different model on some ranks, or hang in the gather.
    """
    cls = _dtensor_class()
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(
            "model has sharded (DTensor) parameters but no process group is initialised: "
            "call jupyter_curvature.distributed.init_distributed() first (under torchrun)"
        )
    world = list(range(dist.get_world_size()))
    for name, p in model.named_parameters():
        if not isinstance(p, cls):
            continue
        ranks = sorted(p.device_mesh.mesh.flatten().tolist())
        if ranks != world:
            raise ValueError(
                f"parameter {name!r} is sharded over ranks {ranks} (a mesh of {len(ranks)}) "
                f"but the process group has {len(world)} ranks {world}: the products sum the "
                "data shards of every rank, so the model must be sharded over all of them; "
                "shard it with fully_shard(model) on the default mesh, or "
                f"mesh=init_device_mesh(device_type, ({len(world)},))"
            )


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (module.get_submodule(path) if path else module), leaf


def _full(t: torch.Tensor) -> torch.Tensor:
    cls = _dtensor_class()
    t = t.detach()
    return t.full_tensor() if cls is not None and isinstance(t, cls) else t


def _check_replica(model: nn.Module, replica: nn.Module) -> None:
    if not isinstance(replica, nn.Module):
        raise TypeError(
            "replica must be an nn.Module with the model's architecture (built unsharded, "
            f"e.g. on the meta device), got {type(replica).__name__}"
        )
    if is_sharded(replica) or replica is model:
        raise ValueError(
            "replica must be a plain, unsharded copy of the architecture, not the sharded "
            "model: build it with the same constructor under `with torch.device('meta'):`"
        )
    want = {n: tuple(p.shape) for n, p in model.named_parameters()}
    have = {n: tuple(p.shape) for n, p in replica.named_parameters()}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))[:4]
        raise ValueError(
            "replica's parameters differ from the sharded model's (name, global shape): "
            f"first differences {diff}; build replica with the model's constructor and arguments"
        )


class ShardedOperator(CompositeOperator):
    """The Hessian or GGN of an FSDP2-sharded model, equal to that of the unsharded model.

    ``A v = sum_r sum_{b in shard r} w_b A_b(theta) v`` with ``theta`` the full parameters,
    gathered from the ranks' shards (``DTensor.full_tensor``) into ``replica``; every
    product is one pass of the wrapped operator over this rank's data plus one all-reduce
    (see the module docstring for why FSDP's own hooks cannot be differentiated twice).
    The parameters are gathered again before a product whenever a local shard changed on any
    rank (a training step, or a ``p.data`` edit that leaves version counters alone: see
    :class:`~jupyter_curvature.operators.graphs.ValueSnapshot`), so products never use stale
    weights.

    Args:
        model: the sharded model (``fully_shard`` applied; its parameters are DTensors on a
            mesh of every rank of the default process group).
        loss_fn, data: as for :class:`~jupyter_curvature.operators.HessianOperator`;
            ``data`` is this rank's shard
            (:func:`~jupyter_curvature.distributed.shard_loader`).
        replica: an unsharded module of the same architecture (same parameter names and
            shapes); build it on the meta device so that it costs nothing until filled.
        curvature: ``"hessian"`` or ``"ggn"``.
        **kwargs: passed to the wrapped operator (``params=``, ``batchnorm=``, ...).

    Raises:
        ValueError: no sharded parameter, parameters sharded over another group than the
            default one (:func:`check_mesh`), or a replica that does not match.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        data: Any,
        replica: nn.Module,
        *,
        curvature: str = "hessian",
        **kwargs: Any,
    ) -> None:
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {sorted(CURVATURES)}, got {curvature!r}")
        if not is_sharded(model):
            raise ValueError(
                "model has no sharded (DTensor) parameter: use HessianOperator or GGNOperator "
                "directly (they already sum the products of data-parallel ranks)"
            )
        check_mesh(model)
        _check_replica(model, replica)
        self.sharded_model = model
        self.replica = replica
        self._gather(assign=True)
        inner: EmpiricalRiskOperator = CURVATURES[curvature](replica, loss_fn, data, **kwargs)
        super().__init__([inner])
        self.curvature = curvature
        self._sharded = dict(model.named_parameters())

    @property
    def operator(self) -> EmpiricalRiskOperator:
        """The wrapped operator on the replica (full parameters)."""
        return self.parts[0]  # type: ignore[return-value]

    # the wrapped operator's view of the parameters and the data (checks read them)
    param_names = property(lambda self: self.operator.param_names)
    params = property(lambda self: self.operator.params)
    source = property(lambda self: self.operator.source)
    num_samples = property(lambda self: self.operator.num_samples)

    def _shard_versions(self) -> tuple[int, ...]:
        return tuple(_local(p)._version for p in self.sharded_model.parameters())

    def _local_shards(self) -> list[torch.Tensor]:
        return [_local(p) for p in self.sharded_model.parameters()]

    def _shards_changed(self) -> bool:
        """Whether any rank's shards changed since the last gather, agreed by all ranks.

        Versions catch in-place steps, the exact comparison with a snapshot catches ``.data``
        edits that leave them alone; the flag is all-reduced, because the gather that follows
        is a collective that every rank must enter or none.
        """
        changed = self._shard_versions() != self._gathered_versions or not (
            self._gathered_values.matches(self._local_shards())
        )
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([float(changed)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            changed = bool(flag.item())
        return changed

    def _gather(self, assign: bool = False) -> None:
        """Fill the replica with the full parameters and buffers (a collective)."""
        with torch.no_grad():
            for name, p in self.sharded_model.named_parameters():
                owner, leaf = _owner(self.replica, name)
                full = _full(p)
                if assign:
                    setattr(owner, leaf, nn.Parameter(full.clone(), p.requires_grad))
                else:
                    getattr(owner, leaf).copy_(full)
            for name, b in self.sharded_model.named_buffers():
                owner, leaf = _owner(self.replica, name)
                setattr(owner, leaf, _full(b).clone())
        self._gathered_versions = self._shard_versions()
        self._gathered_values = ValueSnapshot(self._local_shards())

    def parameter_versions(self) -> tuple[int, ...]:
        return self._shard_versions() + super().parameter_versions()

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        if self._shards_changed():
            self._gather()  # a rank changed its shards: every rank gathers
        return self.operator._product(block)

    def shard(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """A full vector ``(n,)`` (an eigenvector, a product) as DTensors laid out like the
        chosen parameters (no communication: each rank keeps its own shards)."""
        from torch.distributed.tensor import distribute_tensor

        pieces = self.operator.unflatten(vector)
        out = []
        for name, piece in zip(self.operator.param_names, pieces):
            p = self._sharded[name]
            out.append(
                distribute_tensor(piece, p.device_mesh, p.placements, src_data_rank=None)
                if isinstance(p, _dtensor_class())
                else piece
            )
        return out

    def unshard(self, shards: Sequence[torch.Tensor]) -> torch.Tensor:
        """The inverse of :meth:`shard`: DTensors (or local tensors) -> one full vector."""
        return self.operator.flatten([_full(s) for s in shards])

    def __repr__(self) -> str:
        return f"ShardedOperator({self.operator!r})"


def _local(p: torch.Tensor) -> torch.Tensor:
    cls = _dtensor_class()
    return p.to_local() if cls is not None and isinstance(p, cls) else p
