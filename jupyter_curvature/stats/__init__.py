"""Statistics of networks: evaluation, gradient and curvature statistics, weight norms.

The original package's "advanced statistics" (MLRG Deep Curvature's ``loss_stats``), done
with several probes and standard errors, exact batch weighting, per-sample gradients by
``torch.func`` and a per-layer curvature table. Every function returns a typed record
(:mod:`.results`) that prints as a table and converts to a dict or JSON.
"""

from .curvature import curvature_statistics, make_probes
from .evaluation import bn_update, evaluate
from .gradients import gradient_statistics
from .layers import layer_curvature
from .norms import weight_norms
from .report import network_statistics
from .results import (
    CurvatureStatistics,
    Estimate,
    EvaluationResult,
    GradientStatistics,
    LayerCurvature,
    LayerCurvatureRow,
    NetworkStatistics,
    ParameterNorm,
    Record,
    WeightNorms,
)

__all__ = [
    "CurvatureStatistics",
    "Estimate",
    "EvaluationResult",
    "GradientStatistics",
    "LayerCurvature",
    "LayerCurvatureRow",
    "NetworkStatistics",
    "ParameterNorm",
    "Record",
    "WeightNorms",
    "bn_update",
    "curvature_statistics",
    "evaluate",
    "gradient_statistics",
    "layer_curvature",
    "make_probes",
    "network_statistics",
    "weight_norms",
]
