"""Argument checks shared by the optimisers (clear errors naming the argument)."""

from __future__ import annotations

import math


def positive(name: str, value, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not (v > 0) or not math.isfinite(v):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def non_negative(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not (v >= 0) or not math.isfinite(v):
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return v


def unit_interval(name: str, value, *, closed_right: bool = False) -> float:
    v = non_negative(name, value)
    if v > 1 or (v == 1 and not closed_right):
        raise ValueError(f"{name} must lie in [0, 1{']' if closed_right else ')'}, got {value!r}")
    return v


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value
