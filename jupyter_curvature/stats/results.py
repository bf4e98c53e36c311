"""Typed result records for the statistics: readable tables, dicts, JSON, save and load.

Every record is a dataclass. ``str(record)`` is a plain-text table; ``record.to_dict()``
and ``record.to_json()`` give plain Python / JSON (``None``/``null`` for NaN, such as an
undefined standard error: the package's one JSON policy, :mod:`jupyter_curvature.core.records`);
``record.save(path)`` writes JSON and ``Record.load(path)`` (or the concrete class's
``load``) reads it back into the same typed record.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..core.records import jsonable, to_json, write_json
from ..core.tables import format_table, format_value

_REGISTRY: dict[str, type[Record]] = {}


def _plain(value: Any) -> Any:
    """A record's fields as plain data (nested records as their fields, no ``"type"`` key);
    every leaf through :func:`~jupyter_curvature.core.records.jsonable` (NaN -> ``None``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return jsonable(value)


def _build(tp: Any, value: Any) -> Any:
    """Rebuild a value of annotated type ``tp`` from its plain (JSON) form.

    ``null`` stands for NaN where the field is a ``float`` (the JSON policy of
    :mod:`jupyter_curvature.core.records`), and for ``None`` where it is optional.
    """
    if value is None:
        return math.nan if tp is float else None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _build(options[0], value) if len(options) == 1 else value
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return [_build(item, v) for v in value]
    if origin is tuple:
        return tuple(value)
    if origin is dict:
        _, item = typing.get_args(tp) or (str, Any)
        return {k: _build(item, v) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        kwargs = {
            f.name: _build(hints[f.name], value[f.name])
            for f in dataclasses.fields(tp)
            if f.init and f.name in value
        }
        return tp(**kwargs)
    if tp is float and isinstance(value, (int, float)):
        return float(value)
    return value


@dataclass(frozen=True)
class Estimate:
    """A statistical estimate: the mean over ``num_samples`` random probes and its standard error.

    ``stderr`` is the sample standard deviation over the probes divided by
    ``sqrt(num_samples)``; it is NaN for a single probe (no spread to measure), and 0 for an
    exact quantity.
    """

    value: float
    stderr: float
    num_samples: int

    def __str__(self) -> str:
        if math.isnan(self.stderr):
            return f"{format_value(self.value)} ± nan"
        return f"{format_value(self.value)} ± {self.stderr:.2g}"

    def __float__(self) -> float:
        return float(self.value)

    @property
    def interval(self) -> tuple[float, float]:
        """The value plus and minus two standard errors (about 95% for many probes)."""
        return (self.value - 2 * self.stderr, self.value + 2 * self.stderr)


class Record:
    """Mixin for the result dataclasses: table printing, dict/JSON conversion, save/load."""

    #: the record's title in its printed table
    title: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    # printing -------------------------------------------------------------------------
    def _rows(self) -> list[list[Any]]:
        """``[name, value]`` rows of the summary table; records with a table override __str__."""
        rows = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.metadata.get("hide"):
                continue
            rows.append([f.name, getattr(self, f.name)])
        return rows

    def __str__(self) -> str:
        rows = [[k, str(v) if isinstance(v, Estimate) else v] for k, v in self._rows()]
        return format_table(["quantity", "value"], rows, title=self.title or type(self).__name__)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython, without importing it
        printer.text(str(self))

    # conversion ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain Python (dicts, lists, floats, ints, strings); a ``"type"`` key names the record.

        The package's one JSON policy (:func:`jupyter_curvature.core.records.jsonable`): NaN
        and infinities become ``None``; :meth:`from_dict` turns them back into NaN where the
        field is a ``float``.
        """
        return {"type": type(self).__name__, **_plain(self)}

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text (strict: NaN and infinities are written as ``null``)."""
        return to_json(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """The record that :meth:`to_dict` gave ``data`` for."""
        name = data.get("type", cls.__name__)
        target = _REGISTRY.get(name)
        if target is None:
            raise ValueError(f"unknown record type {name!r}; known: {sorted(_REGISTRY)}")
        if cls is not Record and not issubclass(target, cls):
            raise ValueError(f"the data holds a {name}, not a {cls.__name__}")
        body = {k: v for k, v in data.items() if k != "type"}
        return _build(target, body)

    def save(self, path: str | Path) -> Path:
        """Write the record as JSON to ``path`` (``.json`` is added if it has no suffix)."""
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".json")
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Record:
        """Read a record saved by :meth:`save` (files with ``NaN`` literals too)."""
        return cls.from_dict(json.loads(Path(path).read_text()))


class _PerLayerFigure:
    """``.plot()`` for the records with per-layer rows."""

    def plot(self, **kwargs: Any) -> Any:
        """Bar charts of the per-layer quantities; returns the matplotlib figure.

        Drawn by :func:`jupyter_curvature.plotting.plot_stats` (``kwargs`` go to it).
        """
        from ..plotting import plot_stats

        return plot_stats(self, **kwargs)


def _hidden(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A field left out of the summary table (still in dicts and JSON)."""
    if default is dataclasses.MISSING:
        return field(metadata={"hide": True}, **kwargs)
    return field(default=default, metadata={"hide": True}, **kwargs)


@dataclass
class EvaluationResult(Record):
    """Mean loss and top-k accuracy of a model over a dataset.

    Attributes:
        loss: mean loss per sample (a ``reduction="sum"`` criterion is divided by the count).
        accuracy: ``{"top1": ..., "top5": ...}`` fractions in [0, 1]; empty when the targets
            are not class indices.
        num_samples: samples evaluated.
        batchnorm: the BatchNorm policy used (``"eval"``: running statistics; ``"train"``:
            batch statistics, running buffers left untouched).
    """

    title: ClassVar[str] = "Evaluation"

    loss: float
    accuracy: dict[str, float]
    num_samples: int
    batchnorm: str

    @property
    def error(self) -> dict[str, float]:
        """``1 - accuracy`` for each k (the original's ``train_err`` / ``test_err``)."""
        return {k: 1.0 - v for k, v in self.accuracy.items()}

    def _rows(self) -> list[list[Any]]:
        rows: list[list[Any]] = [["loss", self.loss]]
        rows += [[f"accuracy {k}", v] for k, v in self.accuracy.items()]
        rows += [["samples", self.num_samples], ["batchnorm", self.batchnorm]]
        return rows


@dataclass
class GradientStatistics(Record):
    """Loss and gradient statistics over mini-batches (or single samples).

    With batch weights ``w_i = b_i / N`` (``b_i`` samples in batch ``i``, ``N`` in all),
    batch mean losses ``l_i`` and batch gradients ``g_i``:

    * ``loss_mean = sum_i w_i l_i`` (the full-data mean loss) and
      ``loss_var = sum_i w_i (l_i - loss_mean)^2``;
    * ``grad_mean_norm_sq = ||g||^2`` with ``g = sum_i w_i g_i`` (the full-data gradient);
    * ``grad_var = sum_i w_i ||g_i - g||^2``, the trace of the covariance of the mini-batch
      gradients (population form, as in the original);
    * ``snr = grad_mean_norm_sq / grad_var``, the gradient signal-to-noise ratio.

    With equal batches these are exactly the original's ``loss_stats`` formulas. With
    ``per_sample=True`` every batch is one sample (``batch_size == 1``).
    """

    title: ClassVar[str] = "Gradient statistics"

    loss_mean: float
    loss_var: float
    grad_mean_norm_sq: float
    grad_var: float
    snr: float
    per_sample: bool
    batch_size: int
    num_batches: int
    num_samples: int
    num_params: int
    batchnorm: str


@dataclass
class CurvatureStatistics(Record):
    """Statistics of a curvature matrix (Hessian or GGN) along random unit probes ``z``.

    For each probe, with batch weights ``w_i = b_i / N`` and per-batch products ``H_i z``
    (``H_i`` the curvature of batch ``i``'s mean loss), ``m = sum_i w_i H_i z`` (the
    full-data product):

    * ``mean_norm_sq = ||m||^2`` (original: ``hess_mean_norm_sq``);
    * ``variance = sum_i w_i ||H_i z - m||^2`` (``hess_var``);
    * ``rayleigh = z^T m`` (``hess_mu``, close to ``trace / num_params``);
    * ``delta = ||m - rayleigh z||^2``;
    * ``alpha = max(0, 1 - variance / num_batches / delta)`` (the shrinkage coefficient);
    * ``frobenius_sq``: Hutchinson on the square, ``||H g||^2`` for the Gaussian ``g`` whose
      direction is ``z``, an unbiased estimate of ``||H||_F^2``;
    * ``trace``: Hutchinson ``g^T H g`` for the same Gaussian ``g``, unbiased for ``tr(H)``.

    Each is an :class:`Estimate`: the mean over the probes and its standard error.
    ``per_probe`` holds the value of each quantity for each probe.
    """

    title: ClassVar[str] = "Curvature statistics"

    curvature: str
    mean_norm_sq: Estimate
    variance: Estimate
    rayleigh: Estimate
    delta: Estimate
    alpha: Estimate
    frobenius_sq: Estimate
    trace: Estimate
    num_probes: int
    batch_size: int
    num_batches: int
    num_samples: int
    num_params: int
    seed: int
    batchnorm: str
    per_probe: dict[str, list[float]] = _hidden(default_factory=dict)

    def original_keys(self) -> dict[str, float]:
        """The probe means under the original package's key names (``hess_*``, ``delta``, ``alpha``)."""
        return {
            "hess_mean_norm_sq": self.mean_norm_sq.value,
            "hess_var": self.variance.value,
            "hess_mu": self.rayleigh.value,
            "delta": self.delta.value,
            "alpha": self.alpha.value,
        }


@dataclass
class ParameterNorm:
    """Norms of one layer's parameters, split into weights, biases and normalisation parameters."""

    layer: str
    module: str
    kind: str  # "weight" (ordinary layer) or "norm" (BatchNorm/LayerNorm/GroupNorm... affine)
    num_params: int
    weight_l2: float | None
    weight_linf: float | None
    bias_l2: float | None
    bias_linf: float | None


@dataclass
class WeightNorms(_PerLayerFigure, Record):
    """L2 and L-infinity norms of a model's parameters, overall and per layer.

    ``l2`` / ``linf`` cover every parameter concatenated (the original's
    ``weight_norm_l2`` / ``weight_norm_linf``). The ``weights_*`` norms cover the weights of
    ordinary layers only; ``biases_*`` their biases; ``norm_*`` the affine parameters of
    normalisation layers (BatchNorm and the like). A group with no parameter is ``None``.
    """

    title: ClassVar[str] = "Weight norms"

    l2: float
    linf: float
    weights_l2: float | None
    weights_linf: float | None
    biases_l2: float | None
    biases_linf: float | None
    norm_l2: float | None
    norm_linf: float | None
    num_params: int
    layers: list[ParameterNorm] = _hidden(default_factory=list)

    def __str__(self) -> str:
        summary = format_table(
            ["group", "L2", "Linf"],
            [
                ["all parameters", self.l2, self.linf],
                ["weights", self.weights_l2, self.weights_linf],
                ["biases", self.biases_l2, self.biases_linf],
                ["normalisation", self.norm_l2, self.norm_linf],
            ],
            title=f"{self.title} ({self.num_params} parameters)",
        )
        layers = format_table(
            [
                "layer",
                "module",
                "kind",
                "params",
                "weight L2",
                "weight Linf",
                "bias L2",
                "bias Linf",
            ],
            [
                [
                    r.layer,
                    r.module,
                    r.kind,
                    r.num_params,
                    r.weight_l2,
                    r.weight_linf,
                    r.bias_l2,
                    r.bias_linf,
                ]
                for r in self.layers
            ],
        )
        return summary + "\n\n" + layers


@dataclass
class LayerCurvatureRow:
    """The curvature of one layer's diagonal block (or of the whole network, ``layer="(all)"``)."""

    layer: str
    num_params: int
    lambda_max: float
    lambda_max_residual: float
    lambda_method: str  # "dense" (exact, small blocks) or "lanczos"
    trace: float
    trace_stderr: float
    trace_method: str
    num_matvecs: int


@dataclass
class LayerCurvature(_PerLayerFigure, Record):
    """Per-layer largest eigenvalue and trace of the curvature's diagonal blocks.

    Each row is the block of the curvature matrix for one parameter group (the other
    parameters held fixed). The trace of the whole matrix equals the sum of the block traces
    (``sum_trace``, with the root-sum-square of their standard errors); the largest eigenvalue
    of the whole is at least every block's (Cauchy interlacing). ``lambda_max_residual`` is
    ``||H v - lambda v||``: a true eigenvalue lies within it of ``lambda_max``.
    ``cancelled``: the computation was cancelled; the rows are those finished before it.
    """

    title: ClassVar[str] = "Per-layer curvature"

    curvature: str
    rows: list[LayerCurvatureRow]
    total: LayerCurvatureRow | None
    sum_trace: float
    sum_trace_stderr: float
    batchnorm: str
    seed: int
    cancelled: bool = False

    def __str__(self) -> str:
        rows = [*self.rows, *([self.total] if self.total is not None else [])]
        table = format_table(
            [
                "layer",
                "params",
                "lambda_max",
                "residual",
                "by",
                "trace",
                "trace s.e.",
                "by",
                "products",
            ],
            [
                [
                    r.layer,
                    r.num_params,
                    r.lambda_max,
                    r.lambda_max_residual,
                    r.lambda_method,
                    r.trace,
                    r.trace_stderr,
                    r.trace_method,
                    r.num_matvecs,
                ]
                for r in rows
            ],
            title=f"{self.title} ({self.curvature}, batchnorm={self.batchnorm})",
        )
        return table + (
            f"\nsum of layer traces: {format_value(self.sum_trace)} ± {self.sum_trace_stderr:.2g}"
        )

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{layer: {"lambda_max": ..., "trace": ...}}`` for quick lookups."""
        return {r.layer: {"lambda_max": r.lambda_max, "trace": r.trace} for r in self.rows}


@dataclass
class NetworkStatistics(_PerLayerFigure, Record):
    """All the statistics of one model, as the original's ``compute_loss_stats`` reported them.

    ``train`` / ``test``: evaluations; ``gradients``: loss and gradient statistics on the
    training data; ``curvature``: curvature statistics on the training data (``None`` when
    not asked for); ``weights``: weight norms.
    """

    title: ClassVar[str] = "Network statistics"

    train: EvaluationResult
    test: EvaluationResult | None
    gradients: GradientStatistics
    curvature: CurvatureStatistics | None
    weights: WeightNorms

    def __str__(self) -> str:
        parts = [
            ("train", self.train),
            ("test", self.test),
            ("", self.gradients),
            ("", self.curvature),
            ("", self.weights),
        ]
        blocks = []
        for label, record in parts:
            if record is None:
                continue
            text = str(record)
            blocks.append(f"[{label}] {text}" if label else text)
        return "\n\n".join(blocks)
