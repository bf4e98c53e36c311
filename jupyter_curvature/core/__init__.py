"""The foundation layer: what every other package of jupyter_curvature may import.

- :mod:`.params`: choosing parameters by name or glob, flattening and unflattening.
- :mod:`.batches`: batch layouts (``(inputs, targets)``, dicts, custom) and the data pass.
- :mod:`.model_state`: snapshot and restore of a model around a computation, BatchNorm
  policy, the per-model lock that keeps concurrent computations apart.
- :mod:`.distributed`: process-group primitives (gather, signature checks, all-reduce of
  sample-weighted partial sums) that are no-ops without ``torch.distributed``.
- :mod:`.inputs`: early checks of user input (finite weights and vectors, outputs,
  deterministic passes) with errors that name the argument and the remedy.
- :mod:`.files`: atomic writes with unpredictable temporary names.
- :mod:`.records`: the one JSON policy (NaN -> null, arrays -> lists) and its atomic writer.
- :mod:`.validate`: checks of scalar settings (positive, in an interval, an integer).

This layer imports only torch, numpy and the standard library.
"""
