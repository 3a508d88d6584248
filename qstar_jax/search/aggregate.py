"""How step rewards along a path aggregate into g(s) = Agg(R_P(s_1), ..., R_P(s_t)).

Here rather than in ``config`` so that ``search`` depends on nothing above it; ``config``
imports ``Agg`` from this module.
"""

from __future__ import annotations

import enum


class Agg(str, enum.Enum):
    """How step rewards along a path aggregate into g(s)."""

    min = "min"
    max = "max"
    sum = "sum"
    last = "last"
    product = "product"


def aggregate(agg: Agg, previous: float | None, reward: float) -> float:
    """g of a child from its parent's g (None when the parent is the root, whose path is
    empty) and the new step's reward; every Agg is a fold, so this is exact."""
    if previous is None or agg is Agg.last:
        return float(reward)
    if agg is Agg.min:
        return min(previous, float(reward))
    if agg is Agg.max:
        return max(previous, float(reward))
    if agg is Agg.sum:
        return previous + float(reward)
    if agg is Agg.product:
        return previous * float(reward)
    raise ValueError(f"unknown aggregation {agg!r}; choose one of {[a.value for a in Agg]}")
