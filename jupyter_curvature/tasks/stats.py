"""The statistics task: evaluation, gradient and curvature statistics, weight norms and the
per-layer curvature table of :mod:`jupyter_curvature.stats` in one call (``%curv_stats``,
``jupyter-curvature stats``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.progress import Cancelled, Progress
from ..core.vocabulary import accepts_aliases
from .names import InputError, resolve_setup
from .outputs import output_folder, save_json

__all__ = ["STATS_KINDS", "StatsResult", "statistics"]

#: the statistics the task can compute
STATS_KINDS = ("evaluation", "gradients", "curvature", "norms", "layers")


@dataclass
class StatsResult:
    """What :func:`statistics` returns: the engine's records, any of which may be None.

    Attributes:
        evaluation, test_evaluation: :func:`~jupyter_curvature.stats.evaluate` on the data
            and on the test data.
        gradients: :func:`~jupyter_curvature.stats.gradient_statistics`.
        curvature: :func:`~jupyter_curvature.stats.curvature_statistics` of the first
            curvature asked for; ``curvatures`` holds every one by name.
        norms: :func:`~jupyter_curvature.stats.weight_norms`.
        layers: :func:`~jupyter_curvature.stats.layer_curvature`.
        cancelled: cancelled before the end; ``not_computed`` names the statistics left out
            (the per-layer table may hold the rows finished before it).
    """

    evaluation: Any = None
    gradients: Any = None
    curvature: Any = None
    norms: Any = None
    layers: Any = None
    test_evaluation: Any = None
    curvatures: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False
    not_computed: list[str] = field(default_factory=list)

    def records(self) -> list[Any]:
        """The records computed, in a fixed order."""
        extra = [r for r in self.curvatures.values() if r is not self.curvature]
        return [
            r
            for r in (
                self.evaluation,
                self.test_evaluation,
                self.gradients,
                self.curvature,
                *extra,
                self.norms,
                self.layers,
            )  # fmt: skip
            if r is not None
        ]

    def to_dict(self) -> dict[str, Any]:
        """Each record as its ``to_dict()`` (None where not computed); every curvature under
        ``curvature_<name>``."""
        out = {
            k: (getattr(self, k).to_dict() if getattr(self, k) is not None else None)
            for k in ("evaluation", "test_evaluation", "gradients", "curvature", "norms", "layers")
        }
        for name, record in self.curvatures.items():
            out[f"curvature_{name}"] = record.to_dict()
        out["cancelled"] = self.cancelled
        out["not_computed"] = list(self.not_computed)
        return out

    def save(self, out: str | Path) -> Path:
        """``stats.json`` in ``out`` (NaN as ``null``)."""
        out = output_folder(out)
        save_json(out / "stats.json", self.to_dict())
        return out

    def plot(self, ax: Any = None) -> Any:
        """The per-layer largest eigenvalue and trace as bars (needs ``layers``)."""
        if self.layers is None:
            raise ValueError("no per-layer statistics to plot: include 'layers'")
        import matplotlib.pyplot as plt

        from ..plotting import curvature_label

        if ax is None:
            _, ax = plt.subplots(figsize=(6.4, 3.6))
        rows = self.layers.rows
        ax.bar(range(len(rows)), [r.lambda_max for r in rows])
        ax.set_xticks(range(len(rows)), [r.layer for r in rows], rotation=45, ha="right")
        ax.set_ylabel(f"largest {curvature_label(self.layers.curvature)} eigenvalue")
        return ax

    def __str__(self) -> str:
        text = "\n\n".join(str(r) for r in self.records())
        if self.cancelled:
            left = ", ".join(self.not_computed) or "part of the per-layer table"
            text = f"CANCELLED: not computed: {left}\n\n{text}"
        return text

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


#: the mini-batch size of the statistics when none is given (on data of more samples)
DEFAULT_BATCH = 128


def default_batch_size(data: Any) -> int:
    """:data:`DEFAULT_BATCH`, or half the samples of smaller data: the statistics across
    mini-batches need at least two batches, so a default must not make one."""
    from ..stats._common import known_num_samples

    total = known_num_samples(data)
    if total is None or total > DEFAULT_BATCH:
        return DEFAULT_BATCH
    return max(1, (total + 1) // 2)


@accepts_aliases
def statistics(
    model: Any = "small_cnn",
    data: Any = "digits",
    *,
    test_data: Any = None,
    loss_fn: Any = None,
    include: Iterable[str] = STATS_KINDS,
    curvature: str | Iterable[str] = "hessian",
    num_probes: int = 8,
    batch_size: int | None = None,
    per_sample: bool = False,
    layers: Any = None,
    num_samples: int | None = None,
    data_root: str | None = None,
    device: Any = None,
    seed: int = 0,
    out: str | Path | None = None,
    namespace: dict[str, Any] | None = None,
    progress: Any = None,
    cancel: Any = None,
) -> StatsResult:
    """The advanced statistics of :mod:`jupyter_curvature.stats` in one call.

    ``include`` picks from ``evaluation`` (loss and accuracy, also on ``test_data`` when
    it is given), ``gradients`` (gradient mean, variance and signal-to-noise ratio over
    mini-batches of ``batch_size``, or of single samples with ``per_sample``; by default
    128, or half the samples of data with at most 128, so that there are two batches),
    ``curvature`` (Hutchinson-type statistics with ``num_probes`` probes: Hutchinson 1990;
    Avron & Toledo, J. ACM 2011) of each ``curvature`` (``"hessian"``, ``"ggn"`` or both as
    a list), ``norms`` (weight norms) and ``layers`` (per-layer largest eigenvalue and trace
    of the first curvature; ``layers`` picks the modules).

    Old keywords (``ggn=True``, ``probes``, ``subsample``, ...) still work and warn.

    ``progress`` (``True`` for ``tqdm.auto`` bars, or a callable receiving each
    :class:`~jupyter_curvature.core.progress.ProgressEvent`) reports phase ``"statistics"``
    once per statistic (``partial``: the result so far) and the products inside the
    curvature statistics and the per-layer table. ``cancel`` (a
    :class:`~jupyter_curvature.core.progress.CancelToken`) stops before the next product:
    the statistics finished by then are kept, the others listed in ``not_computed``.

    Raises:
        InputError: an unknown statistic or curvature, unusable names.
    """
    from .. import stats
    from .spectrum import check_curvature

    include = list(include)
    bad = [k for k in include if k not in STATS_KINDS]
    if bad or not include:
        raise InputError(f"--include {bad or include}: choose from {', '.join(STATS_KINDS)}")
    kinds = [curvature] if isinstance(curvature, str) else list(curvature)
    for kind in kinds:
        check_curvature(kind)
    if out is not None:
        out = output_folder(out)
    tracker = Progress.of(progress, cancel, "setup")
    tracker.step(0)
    s = resolve_setup(model, data, namespace=namespace, test_data=test_data, loss_fn=loss_fn,
                      batch_size=batch_size or DEFAULT_BATCH, num_samples=num_samples,
                      data_root=data_root, device=device, seed=seed)  # fmt: skip
    if batch_size is None:
        batch_size = default_batch_size(s.data)
    tracker.finish()
    result = StatsResult()
    todo = [k for k in STATS_KINDS if k in include]
    phases = tracker.child("statistics", len(todo))

    def evaluation() -> None:
        result.evaluation = stats.evaluate(s.model, s.loss_fn, s.data, topk=(1,))
        if test_data is not None:  # only when asked for: a named dataset's split is not
            result.test_evaluation = stats.evaluate(s.model, s.loss_fn, s.test_data, topk=(1,))

    def gradients() -> None:
        result.gradients = stats.gradient_statistics(
            s.model, s.loss_fn, s.data, batch_size=batch_size, per_sample=per_sample
        )

    def curvature_() -> None:
        for kind in kinds:
            result.curvatures[kind] = stats.curvature_statistics(
                s.model, s.loss_fn, s.data, curvature=kind, num_probes=num_probes,
                batch_size=batch_size, seed=seed, progress=phases,
            )  # fmt: skip
        result.curvature = result.curvatures[kinds[0]]

    def norms() -> None:
        result.norms = stats.weight_norms(s.model)

    def layers_() -> None:
        result.layers = stats.layer_curvature(
            s.model, s.loss_fn, s.data, layers, curvature=kinds[0], seed=seed, progress=phases
        )
        result.cancelled = result.cancelled or result.layers.cancelled

    sections = {"evaluation": evaluation, "gradients": gradients, "curvature": curvature_,
                "norms": norms, "layers": layers_}  # fmt: skip
    for i, kind in enumerate(todo):
        if phases.step(i, partial=lambda: result):
            result.not_computed = todo[i:]
            break
        try:
            sections[kind]()
        except Cancelled:
            result.not_computed = todo[i:]
            break
    result.cancelled = result.cancelled or bool(result.not_computed)
    if result.curvatures and result.curvature is None:  # cancelled between two curvatures
        result.curvature = next(iter(result.curvatures.values()))
    phases.finish(step=len(todo) - len(result.not_computed), partial=lambda: result)
    if out is not None:
        result.save(out)
    return result
