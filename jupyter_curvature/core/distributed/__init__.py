"""Distributed primitives of the foundation layer (no-ops without ``torch.distributed``).

- :mod:`.primitives`: is a process group active, backend checks, the all-reduce of
  sample-weighted partial sums, gathering Python objects, signature checks.
- :mod:`.context`: rank, world size, start-up from torchrun's environment, main-process helpers.
- :mod:`.checks`: checks that every rank holds the same model and a disjoint shard.
- :mod:`.reduce`: all-reduce of statistics moments, splitting work across ranks.
- :mod:`.sharding`: the sampler and loader that give each rank its shard.
- :mod:`.basis`: the row layout of the Lanczos vectors (all here, or sliced across ranks).

The public face is :mod:`jupyter_curvature.distributed`, which re-exports these.
"""
