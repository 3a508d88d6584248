"""Checks on planner configs; each error names the field and the accepted values."""

from __future__ import annotations

from typing import Any

from qstar_jax.search.aggregate import Agg


def as_agg(value: Agg | str) -> Agg:
    try:
        return Agg(value)
    except ValueError:
        raise ValueError(f"unknown aggregation {value!r}; choose one of "
                         f"{[a.value for a in Agg]}") from None


def require_positive(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be an integer >= 1, "
                             f"got {value!r}")


def require_temperature(config: Any) -> None:
    if config.temperature < 0:
        raise ValueError(f"{type(config).__name__}.temperature must be >= 0 (0 = greedy), "
                         f"got {config.temperature}")
