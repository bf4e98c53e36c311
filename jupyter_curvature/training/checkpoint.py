"""Checkpoints: written atomically, read safely, checked against the model they are loaded into.

* **Atomic**: :func:`atomic_save` writes to a fresh temporary file in the same folder,
  flushes and ``fsync``s it, then ``os.replace``s it over the target: a crash at any moment
  leaves either the old checkpoint or the new one, never a torn file; a full disk raises
  :class:`~jupyter_curvature.core.files.DiskFullError` and keeps the old one.
* **Safe**: :func:`load_checkpoint` uses ``torch.load(weights_only=True)``, which
  refuses to unpickle arbitrary objects; checkpoints therefore hold only tensors, numbers,
  strings and containers of them (RNG states included).
* **Checked**: :func:`load_model_weights` compares names and shapes first and raises
  :class:`CheckpointMismatchError` naming the missing, unexpected and mis-shaped keys.
* **Complete**: :class:`CheckpointState`, the trainer's checkpoint side, writes everything
  an exact resume needs (model, optimiser, preconditioner, scheduler, position in the data,
  running epoch sums, RNG states of every rank, history) and reads it back.
"""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.files import atomic_write, remove_stale_temps
from . import ddp as _ddp
from .history import History

FORMAT = "jupyter_curvature.checkpoint"
VERSION = 1
#: the file refreshed after every epoch, on stop and on interruption
LAST = "checkpoint-last.pt"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model (another architecture or size)."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` through :func:`~jupyter_curvature.core.files.atomic_write`: a
    kill or a full disk leaves the previous checkpoint intact.

    Raises:
        DiskFullError: the disk is full or the file too large (``ulimit -f``).
    """
    return atomic_write(path, lambda f: torch.save(obj, f), what="checkpoint")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable checkpoint (truncated, or holds objects
            that are not plain tensors and containers).
    """
    path = Path(path)
    remove_stale_temps(path)  # of a run killed while saving it
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path} is not a readable checkpoint ({_why_unreadable(path, exc)}); it may be "
            "truncated, or hold pickled objects (they are refused, never run: weights_only)"
        ) from exc


def _why_unreadable(path: Path, exc: Exception) -> str:
    """One line from ``torch.load``'s error: its many-line advice on ``weights_only`` (which
    suggests unsafe loading) is cut down to what the unpickler refused."""
    if path.stat().st_size == 0:
        return "the file is empty"
    _, refused, rest = str(exc).partition("WeightsUnpickler error:")
    detail = " ".join((rest if refused else str(exc)).split())
    detail = re.split(r"\.?\s*(?:Please|Check the documentation)", detail)[0]
    return f"{type(exc).__name__}: {detail}"


def model_state_from(
    checkpoint: dict[str, Any], name: str = "this checkpoint"
) -> dict[str, torch.Tensor]:
    """The model's ``state_dict`` inside a checkpoint of ours, the original package's
    (``{"state_dict": ...}``) or a plain ``state_dict``; ``name`` is the checkpoint in
    error messages."""
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"{name} holds a {type(checkpoint).__name__}, not model weights (expected ours, a "
            "{'state_dict': ...} dict or a plain state_dict)"
        )
    if checkpoint.get("format") == FORMAT:
        return checkpoint["model"]
    if isinstance(checkpoint.get("state_dict"), dict):
        return checkpoint["state_dict"]
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise ValueError(
        f"{name} holds no model weights (expected ours, a "
        "{'state_dict': ...} dict or a plain state_dict)"
    )


def check_state_fits(model: nn.Module, state: dict[str, torch.Tensor], source: str = "") -> None:
    """Raise :class:`CheckpointMismatchError` naming every key that does not fit."""
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    shapes = [
        f"{k} (checkpoint {list(state[k].shape)}, model {list(ours[k].shape)})"
        for k in ours
        if k in state
        and isinstance(state[k], torch.Tensor)
        and tuple(state[k].shape) != tuple(ours[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return

    def listed(keys: list[str]) -> str:
        return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {listed(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {listed(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches: {listed(shapes)}")
    origin = f" (saved from {source})" if source else ""
    raise CheckpointMismatchError(
        f"the checkpoint{origin} does not fit {type(model).__name__}: " + "; ".join(parts)
    )


def load_model_weights(
    model: nn.Module, checkpoint: str | Path | dict[str, Any], map_location: Any = None
) -> nn.Module:
    """Load weights into ``model`` from a checkpoint file or dict, after checking they fit.

    Raises:
        CheckpointMismatchError: another architecture (the message names the keys).
    """
    name = "this checkpoint"
    if not isinstance(checkpoint, dict):
        if map_location is None:
            p = next(model.parameters(), None)
            map_location = p.device if p is not None else "cpu"
        name = f"the checkpoint {checkpoint}"
        checkpoint = load_checkpoint(checkpoint, map_location=map_location)
    state = model_state_from(checkpoint, name)
    check_state_fits(model, state, str(checkpoint.get("model_class", "")))
    model.load_state_dict(state)
    return model


# --- RNG states, as tensors and numbers (weights_only-safe) ----------------------------------


def rng_state(devices: list[torch.device] | None = None) -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python RNG states, in loadable form."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }
    cuda = sorted({d.index or 0 for d in devices or [] if d.type == "cuda"})
    if cuda:
        state["cuda"] = {str(i): torch.cuda.get_rng_state(i) for i in cuda}
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate(
        (py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"])
    )
    for index, value in state.get("cuda", {}).items():
        if torch.cuda.is_available() and int(index) < torch.cuda.device_count():
            torch.cuda.set_rng_state(value.cpu(), int(index))


# --- the trainer's checkpoint state -----------------------------------------------------------


class CheckpointState:
    """The checkpoint side of :class:`~jupyter_curvature.training.Trainer` (a mixin: it
    reads and sets the trainer's model, optimiser, scheduler, progress and history).

    The file format (``FORMAT``, ``VERSION``) is a dict of tensors, numbers, strings and
    containers; under DDP rank 0 writes and reads it and sends it to every rank.
    """

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (tensors, numbers, strings and containers).

        Under DDP a collective (every rank's RNG state is gathered into ``rng_ranks``).
        """
        devices = [self.device] if self.device.type == "cuda" else []
        return {
            "format": FORMAT,
            "version": VERSION,
            "model_class": type(self.model).__name__,
            "model_name": self.model_name,
            "model": self.model.state_dict(),
            "optimizer_class": type(self.optimizer).__name__,
            "optimizer": self.optimizer.state_dict(),
            "preconditioner": self.preconditioner.state_dict()
            if self.preconditioner is not None
            else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "trainer": {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "seed": self.seed,
                "total_steps": self.total_steps,
                "sums": dict(self._sums),
                "train_seconds": self.train_seconds,
                "used_lr": self._used_lr,  # the last step's rate, for the epoch's record
            },
            "rng": rng_state(devices),
            "history": self.history.to_dict(),
            **self._ranks_state(devices),
        }

    def _ranks_state(self, devices: list[torch.device]) -> dict[str, Any]:
        if not self.distributed:
            return {}
        from ..core.distributed.primitives import gather_objects

        return {"world_size": self.world_size, "rng_ranks": gather_objects(rng_state(devices))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Everything is checked before anything is loaded (an error leaves the trainer as it
        was): the model's keys and shapes, the optimiser's class, and the settings that
        decide what an exact resume continues (:meth:`_check_resume_settings`).
        """
        if state.get("format") != FORMAT:
            raise ValueError("not a jupyter_curvature training checkpoint (no 'format' entry)")
        check_state_fits(
            self.model, state["model"], state.get("model_name") or state.get("model_class", "")
        )
        saved_opt = state.get("optimizer_class")
        if saved_opt and saved_opt != type(self.optimizer).__name__:
            raise ValueError(
                f"the checkpoint was trained with {saved_opt}, this trainer has "
                f"{type(self.optimizer).__name__}; resume with the same optimiser"
            )
        self._check_resume_settings(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.preconditioner is not None and state.get("preconditioner") is not None:
            self.preconditioner.load_state_dict(state["preconditioner"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        t = state["trainer"]
        self.step, self.epoch, self.batch_in_epoch = t["step"], t["epoch"], t["batch_in_epoch"]
        self._sums = dict(t["sums"])
        self.train_seconds = float(t.get("train_seconds", 0.0))
        self._used_lr = t.get("used_lr")
        self.history = History.from_dict(state["history"])
        ranks = state.get("rng_ranks")
        if self.distributed and ranks is not None and len(ranks) == self.world_size:
            set_rng_state(ranks[self.rank])  # bitwise resume with the same number of ranks
        else:
            set_rng_state(state["rng"])

    def _check_resume_settings(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint whose run this trainer would not continue, warn where a
        difference is a legitimate use.

        * another ``seed``: the data order of every epoch is drawn from ``(seed, epoch)``,
          so the resumed run would read other batches than the checkpoint's run
          (``ValueError``: build the trainer with the checkpoint's seed);
        * a preconditioner state (K-FAC factors) and no preconditioner: it would be dropped
          (``ValueError``); a preconditioner and no state in the checkpoint: it starts
          afresh (``UserWarning``);
        * another plan (``epochs``/``steps``): with a schedule built on the plan (the
          ``"linear"`` schedule, whose ``total`` is restored with the scheduler's state) the
          rates would follow the checkpoint's plan, not this one (``ValueError``); with any
          other schedule, extending or shortening a run is legitimate: training continues
          from the checkpoint's step to this trainer's end, the scheduler from its saved
          state (``UserWarning`` saying so).
        """
        t = state["trainer"]
        saved_seed = t.get("seed")
        if saved_seed is not None and int(saved_seed) != self.seed:
            raise ValueError(
                f"the checkpoint's run has seed={saved_seed}, this trainer seed={self.seed}: "
                "the data order is drawn from the seed, so the resumed run would read other "
                f"batches than the checkpoint's; build the Trainer with seed={saved_seed}"
            )
        has_state = state.get("preconditioner") is not None
        if has_state and self.preconditioner is None:
            raise ValueError(
                "the checkpoint holds a preconditioner's state (K-FAC factors) but this trainer "
                "has no preconditioner, so it would be dropped; pass preconditioner= of the "
                "same kind, or load the weights alone with load_model_weights"
            )
        if self.preconditioner is not None and not has_state:
            warnings.warn(
                "the checkpoint holds no preconditioner state: this trainer's preconditioner "
                "starts with no curvature factors at the checkpoint's step",
                UserWarning,
                stacklevel=3,
            )
        saved_total = t.get("total_steps")
        if saved_total is None or int(saved_total) == self.total_steps:
            return
        plan = f"{saved_total} steps" + (
            f" ({saved_total // self.steps_per_epoch} epochs)"
            if self.epochs is not None and saved_total % self.steps_per_epoch == 0
            else ""
        )
        ours = f"{self.total_steps} steps" + (
            f" ({self.epochs} epochs)" if self.epochs is not None else ""
        )
        saved_lambdas = (state.get("scheduler") or {}).get("lr_lambdas") or []
        ours_lambdas = getattr(self.scheduler, "lr_lambdas", [])
        for saved, fn in zip(saved_lambdas, ours_lambdas):
            span = getattr(fn, "total", None)
            if isinstance(saved, dict) and span is not None and saved.get("total") != span:
                raise ValueError(
                    f"the checkpoint's run planned {plan}, this trainer {ours}, and its "
                    f"schedule is built on the plan ({type(fn).__name__} over "
                    f"{saved.get('total')}, here {span}; its length is restored with the "
                    "scheduler's state, so the rates would follow the checkpoint's plan); "
                    "resume with the checkpoint's plan (epochs=/steps=), or to train on past "
                    "it pass schedule='constant' or a scheduler of your own"
                )
        step = int(t["step"])
        what = (
            f"training continues from step {step} to step {self.total_steps}"
            if step < self.total_steps
            else f"the checkpoint is at step {step}: nothing is left to train"
        )
        warnings.warn(
            f"the checkpoint's run planned {plan}, this trainer plans {ours}: {what}, with "
            "the optimiser's and the scheduler's states as saved (a scheduler continues from "
            "its saved state; it is not rebuilt for the new plan)",
            UserWarning,
            stacklevel=3,
        )

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write the state atomically (default ``checkpoint.dir/checkpoint-last.pt``).

        Under DDP a collective: only rank 0 writes, every rank returns once the file is
        complete (or raises if rank 0 could not write it).
        """
        if path is None:
            if self.checkpoint.dir is None:
                raise ValueError(
                    "no checkpoint path: pass path= or set checkpoint=CheckpointOptions(dir=...)"
                )
            path = self.checkpoint.dir / LAST
        return self._write([Path(path)], self.state_dict())[0]

    def _write(self, paths: list[Path], state: dict[str, Any]) -> list[Path]:
        error: BaseException | None = None
        if self.rank == 0:
            try:
                for path in paths:
                    atomic_save(state, path)
            except BaseException as exc:  # told to every rank below, then raised
                error = exc
        if self.distributed:
            (failed,) = _ddp.any_flags([error is not None], self.device)
            if failed and error is None:
                raise RuntimeError(
                    f"rank 0 could not write the checkpoint {paths[0]}; see rank 0's error"
                )
        if error is not None:
            raise error
        self.last_checkpoint = paths[0]
        return paths

    def load_checkpoint(self, path: str | Path) -> None:
        """Resume from a checkpoint file (read with ``weights_only=True``).

        Under DDP a collective: rank 0 reads the file and sends it to every rank (the other
        ranks need not see the file system), and every rank raises rank 0's error if any.
        """
        self.load_state_dict(self._read(path, required=True))

    def _read(self, path: str | Path, *, required: bool) -> dict[str, Any] | None:
        """The checkpoint at ``path`` (rank 0's copy under DDP); ``None`` if it is missing
        and not ``required``."""
        if not self.distributed:
            if not required and not Path(path).is_file():
                return None
            return load_checkpoint(path, map_location=self.device)
        message: tuple[str, str] | None = None
        state = None
        if self.rank == 0:
            try:
                if required or Path(path).is_file():
                    state = load_checkpoint(path, map_location="cpu")
            except (FileNotFoundError, ValueError) as exc:
                message = (type(exc).__name__, str(exc))
        state, message = _ddp.broadcast_object((state, message))
        if message is not None:
            kind = FileNotFoundError if message[0] == "FileNotFoundError" else ValueError
            raise kind(f"rank 0: {message[1]}")
        return state

    def _write_checkpoints(self, epoch_file: bool = False) -> None:
        if self.checkpoint.dir is None:
            return
        paths = [self.checkpoint.dir / LAST]
        announced = list(paths)
        if self.checkpoint.keep_steps:
            numbered = self.checkpoint.dir / f"checkpoint-{self.step:06d}.pt"
            paths.append(numbered)
            # announced in place of the last; once per step (an epoch's end may also be due)
            announced = [] if numbered in self._kept_checkpoints else [numbered]
            self._kept_checkpoints.add(numbered)
        if epoch_file:
            paths.append(self.checkpoint.dir / f"checkpoint-{self.epoch:05d}.pt")
            announced.append(paths[-1])
        self._write(paths, self.state_dict())
        for path in announced:
            self.record_event({"event": "checkpoint", "path": str(path)})
