"""Curvature operators: exact, matrix-free products with the Hessian, the GGN and the gradient covariance."""

from ..core.batches import BatchLayout, Shared, default_layout, labels_layout, shared
from ..core.losses import TokenCrossEntropy
from ..core.model_state import BATCHNORM_POLICIES, curvature_mode
from ..core.params import flatten, select_parameters, unflatten
from .adapters import FunctionOperator, as_operator
from .base import (
    CompositeOperator,
    CurvatureOperator,
    DeflatedOperator,
    DenseOperator,
    ModelChangedError,
    ProjectedOperator,
    ScaledOperator,
    SumOperator,
)
from .blocks import BlockDiagonalOperator
from .functional import EmpiricalFisherOperator, GGNOperator
from .hessian import HessianOperator
from .loss_hessians import SUPPORTED_LOSSES, output_hessian_for, register_output_hessian
from .risk import EmpiricalRiskOperator
from .sharded import ShardedOperator

BatchNormPolicy = str  # "eval" | "train", see BATCHNORM_POLICIES

__all__ = [
    "BATCHNORM_POLICIES",
    "BatchLayout",
    "BatchNormPolicy",
    "BlockDiagonalOperator",
    "CompositeOperator",
    "CurvatureOperator",
    "DeflatedOperator",
    "DenseOperator",
    "EmpiricalFisherOperator",
    "EmpiricalRiskOperator",
    "FunctionOperator",
    "GGNOperator",
    "HessianOperator",
    "ModelChangedError",
    "ProjectedOperator",
    "ScaledOperator",
    "ShardedOperator",
    "Shared",
    "SumOperator",
    "TokenCrossEntropy",
    "SUPPORTED_LOSSES",
    "as_operator",
    "curvature_mode",
    "default_layout",
    "flatten",
    "labels_layout",
    "output_hessian_for",
    "register_output_hessian",
    "select_parameters",
    "shared",
    "unflatten",
]
