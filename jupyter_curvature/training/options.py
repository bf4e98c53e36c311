"""The :class:`~jupyter_curvature.training.Trainer`'s grouped settings: typed, frozen, checked.

Three groups of settings that belong together travel as one object each, checked when
the object is made (the error names the field and the remedy):

* :class:`DataOptions`: how a ``Dataset`` becomes batches (``batch_size``, ``shuffle``,
  ``num_workers``, ``drop_last``);
* :class:`CheckpointOptions`: where and how often checkpoints are written (``dir``,
  ``every`` epochs, ``steps``);
* :class:`DistributedOptions`: whether to train under ``DistributedDataParallel``
  (``enabled``) and the wrapper's settings (``ddp_kwargs``).

The flat keywords these replace (``Trainer(batch_size=64, checkpoint_dir=...,
distributed=True)``) still work for one release: :func:`merge_flat` turns them into the
option objects with a ``FutureWarning`` naming the replacement, and refuses a group given
both ways.

>>> DataOptions(batch_size=64, shuffle=False)
DataOptions(batch_size=64, shuffle=False, num_workers=0, drop_last=False)
>>> CheckpointOptions(dir="runs/a", every=0)
Traceback (most recent call last):
...
ValueError: CheckpointOptions.every must be a positive integer (epochs between kept epoch checkpoints) or None, got 0
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CheckpointOptions", "DataOptions", "DistributedOptions", "merge_flat"]


def _positive(owner: str, name: str, value: Any, what: str, *, optional: bool) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        none = " or None" if optional else ""
        raise ValueError(f"{owner}.{name} must be a positive integer ({what}){none}, got {value!r}")


def _flag(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}.{name} must be True or False, got {value!r}")


@dataclass(frozen=True)
class DataOptions:
    """How the trainer reads a ``Dataset`` (a ``DataLoader``'s own settings win over these).

    Args:
        batch_size: samples per optimisation step; under DDP the *global* batch, split
            across the ranks.
        shuffle: reshuffle every epoch (the order is seeded by the trainer's ``seed`` and
            the epoch, so resuming reads the same batches).
        num_workers: ``DataLoader`` worker processes (0: read in the training process,
            the only setting under which mid-epoch resume also reproduces random
            augmentations).
        drop_last: drop the last, smaller batch of each epoch.
    """

    batch_size: int = 128
    shuffle: bool = True
    num_workers: int = 0
    drop_last: bool = False

    def __post_init__(self) -> None:
        _positive("DataOptions", "batch_size", self.batch_size, "samples per step",
                  optional=False)  # fmt: skip
        _flag("DataOptions", "shuffle", self.shuffle)
        _flag("DataOptions", "drop_last", self.drop_last)
        w = self.num_workers
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ValueError(
                f"DataOptions.num_workers must be a non-negative integer (0: no worker "
                f"processes), got {w!r}"
            )


@dataclass(frozen=True)
class CheckpointOptions:
    """Where and when the trainer writes checkpoints.

    Args:
        dir: folder for ``checkpoint-last.pt`` (after every epoch, on stop and on
            interruption) and ``checkpoint-%05d.pt`` (every ``every`` epochs); ``None``
            writes none.
        every: epochs between kept epoch checkpoints (``None``: only the last).
        steps: also refresh ``checkpoint-last.pt`` every so many steps (``None``: not).
        keep_steps: keep a numbered copy ``checkpoint-<step>.pt`` (six digits) of every
            ``checkpoint-last.pt`` written, announced in its place (what ``%%curv_train
            --checkpoint-dir`` does, so any checkpoint of the run can be resumed).
    """

    dir: str | Path | None = None
    every: int | None = None
    steps: int | None = None
    keep_steps: bool = False

    def __post_init__(self) -> None:
        if self.dir is not None:
            if not isinstance(self.dir, (str, Path)):
                raise TypeError(
                    f"CheckpointOptions.dir must be a folder path (str or Path) or None, got "
                    f"{type(self.dir).__name__}"
                )
            object.__setattr__(self, "dir", Path(self.dir))
        _positive("CheckpointOptions", "every", self.every,
                  "epochs between kept epoch checkpoints", optional=True)  # fmt: skip
        _positive("CheckpointOptions", "steps", self.steps,
                  "steps between refreshes of checkpoint-last.pt", optional=True)  # fmt: skip


@dataclass(frozen=True)
class DistributedOptions:
    """Whether and how the trainer trains under ``DistributedDataParallel``.

    Args:
        enabled: ``None`` (default): under DDP when a process group with more than one
            rank is initialised or the model is a DDP module; ``True``: require it;
            ``False``: train this rank's model alone.
        ddp_kwargs: more ``DistributedDataParallel`` settings (``find_unused_parameters``,
            ``broadcast_buffers``, ...) when the trainer wraps the model.
    """

    enabled: bool | None = None
    ddp_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.enabled is None or isinstance(self.enabled, bool)):
            raise TypeError(
                f"DistributedOptions.enabled must be None (automatic), True or False, got "
                f"{self.enabled!r}"
            )
        kw = {} if self.ddp_kwargs is None else self.ddp_kwargs
        if not isinstance(kw, dict):
            raise TypeError(
                f"DistributedOptions.ddp_kwargs must be a dict of DistributedDataParallel "
                f"settings, got {type(kw).__name__}"
            )
        object.__setattr__(self, "ddp_kwargs", dict(kw))


#: the flat keywords of each group: flat name -> (group keyword, option class, field)
_FLAT = {
    "batch_size": ("data_options", DataOptions, "batch_size"),
    "shuffle": ("data_options", DataOptions, "shuffle"),
    "num_workers": ("data_options", DataOptions, "num_workers"),
    "drop_last": ("data_options", DataOptions, "drop_last"),
    "checkpoint_dir": ("checkpoint", CheckpointOptions, "dir"),
    "checkpoint_every": ("checkpoint", CheckpointOptions, "every"),
    "checkpoint_steps": ("checkpoint", CheckpointOptions, "steps"),
    "distributed": ("distributed", DistributedOptions, "enabled"),
    "ddp_kwargs": ("distributed", DistributedOptions, "ddp_kwargs"),
}


def merge_flat(
    groups: dict[str, Any], flat: dict[str, Any], *, owner: str = "Trainer", stacklevel: int = 3
) -> dict[str, Any]:
    """The option objects of ``groups`` (``{"data_options": DataOptions | None, ...}``) with the
    deprecated flat keywords ``flat`` folded in.

    Each flat keyword warns (``FutureWarning`` naming its replacement); a group given both
    as an object and as flat keywords is a ``TypeError``; an unknown keyword is a
    ``TypeError`` as Python would raise it. A missing group becomes its default object.
    """
    classes = {"data_options": DataOptions, "checkpoint": CheckpointOptions,
               "distributed": DistributedOptions}  # fmt: skip
    out = dict(groups)
    moved: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        if name not in _FLAT:
            raise TypeError(f"{owner}() got an unexpected keyword argument {name!r}")
        group, cls, attr = _FLAT[name]
        moved.setdefault(group, {})[attr] = value
        warnings.warn(
            f"{owner}({name}=...) is deprecated and will be removed in the next release; "
            f"pass {group}={cls.__name__}({attr}=...)",
            FutureWarning,
            stacklevel=stacklevel,
        )
    for group, cls in classes.items():
        given = out.get(group)
        if given is not None and not isinstance(given, cls):
            raise TypeError(
                f"{owner}({group}=...) must be a {cls.__name__}, got {type(given).__name__}"
            )
        if group in moved:
            if given is not None:
                names = ", ".join(k for k, v in _FLAT.items() if v[0] == group and k in flat)
                raise TypeError(
                    f"{owner}() got both {group}={cls.__name__}(...) and the flat keyword(s) "
                    f"{names}; put every setting into {cls.__name__}"
                )
            given = cls(**moved[group])
        out[group] = given if given is not None else cls()
    return out
