"""Checks on planner configs and on the scores planners rank by; each error names the
field or the scorer, and what it accepts."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from qstar_jax.search.aggregate import Agg


def as_agg(value: Agg | str) -> Agg:
    try:
        return Agg(value)
    except ValueError:
        raise ValueError(f"unknown aggregation {value!r}; choose one of "
                         f"{[a.value for a in Agg]}") from None


def _is_count(value: Any, minimum: int) -> bool:
    """An int (not a bool: Python counts True as 1) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def require_positive(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not _is_count(value, 1):
            raise ValueError(f"{type(config).__name__}.{name} must be an integer >= 1, "
                             f"got {value!r}")


def require_count_or_none(config: Any, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and not _is_count(value, minimum):
            raise ValueError(f"{type(config).__name__}.{name} must be an integer >= {minimum} "
                             f"or None, got {value!r}")


def require_finite(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(
                value):
            raise ValueError(f"{type(config).__name__}.{name} must be a finite number, got "
                             f"{value!r}")


def require_temperature(config: Any) -> None:
    require_finite(config, "temperature")
    if config.temperature < 0:
        raise ValueError(f"{type(config).__name__}.temperature must be >= 0 (0 = greedy), "
                         f"got {config.temperature}")


def checked_scores(values: Any, count: int, name: str, what: str = "items") -> np.ndarray:
    """``values`` as float64 [count], or a ValueError naming the scorer ``name`` where they
    have another shape or any is NaN or infinite: a NaN would win an argmax, and every
    comparison a ranking makes with it is false."""
    scores = np.asarray(values, np.float64)
    if scores.shape != (count,):
        raise ValueError(f"{name} returned shape {scores.shape} for {count} {what}; "
                         f"expected ({count},)")
    non_finite = int(np.count_nonzero(~np.isfinite(scores)))
    if non_finite:
        raise ValueError(f"{name} returned {non_finite} non-finite scores (NaN or infinite) "
                         f"for {count} {what}")
    return scores
