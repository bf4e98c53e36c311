"""Scale out with ``torch.distributed``: sharded full-dataset curvature, spectra, statistics, landscapes.

Launch with ``torchrun`` (or :func:`launch` for local processes); in the script::

    import jupyter_curvature as jc
    from jupyter_curvature import distributed as jd

    ctx = jd.init_distributed(timeout=600)            # reads torchrun's environment
    loader = jd.shard_loader(dataset, batch_size=128)  # this rank's shard: no padding, no overlap
    H = jc.HessianOperator(model.to(ctx.device), loss_fn, loader)  # products summed over ranks
    result = jd.eigenpairs(H, k=5, total=len(dataset))  # same on every rank, checked
    if jd.is_main_process():
        result.save("eigenpairs.npz")

Curvature operators sum the ranks' partial products by themselves whenever a process group
with more than one rank is initialised (``distributed=None``); this package adds the pieces
around them. The primitives (process context, checks, reductions, sharding) live in the
foundation layer, :mod:`jupyter_curvature.core.distributed`, so that the engine can use
them; this package re-exports them beside the torchrun wrappers over the engine.
See ``docs/distributed.md``.
"""

from ..core.distributed.basis import ShardedBasis, ShardedSpace, gather_rows
from ..core.distributed.checks import (
    DistributedMismatchError,
    check_consistent_model,
    check_shards,
    check_signatures,
    count_samples,
    verify_identical,
)
from ..core.distributed.context import (
    DEFAULT_TIMEOUT,
    DistributedContext,
    barrier,
    get_rank,
    get_world_size,
    init_distributed,
    is_initialized,
    is_main_process,
    main_process_first,
    on_main_process,
    save_on_main,
)
from ..core.distributed.primitives import check_backend_device, is_distributed, local_only
from ..core.distributed.reduce import all_reduce_moments, split_indices, split_map
from ..core.distributed.sharding import ShardSampler, shard_bounds, shard_loader
from ..operators.sharded import ShardedOperator, check_mesh, is_sharded
from .computations import (
    check_operator,
    eigenpairs,
    evaluate_landscape,
    gradient_statistics,
    landscape_1d,
    landscape_2d,
    spectral_density,
    split_points_evaluator,
)
from .launch import DistributedRunError, free_port, launch

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistributedContext",
    "ShardedBasis",
    "ShardedOperator",
    "ShardedSpace",
    "check_mesh",
    "is_sharded",
    "DistributedMismatchError",
    "DistributedRunError",
    "ShardSampler",
    "all_reduce_moments",
    "barrier",
    "check_backend_device",
    "check_consistent_model",
    "check_operator",
    "check_shards",
    "check_signatures",
    "count_samples",
    "eigenpairs",
    "evaluate_landscape",
    "free_port",
    "gather_rows",
    "get_rank",
    "get_world_size",
    "gradient_statistics",
    "landscape_1d",
    "landscape_2d",
    "init_distributed",
    "is_distributed",
    "is_initialized",
    "is_main_process",
    "launch",
    "local_only",
    "main_process_first",
    "on_main_process",
    "save_on_main",
    "shard_bounds",
    "shard_loader",
    "spectral_density",
    "split_indices",
    "split_map",
    "split_points_evaluator",
    "verify_identical",
]
