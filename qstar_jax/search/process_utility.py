"""Process utilities R_P (``aggregate.py`` folds them into g(s) = Agg(R_P(s_1), ..., R_P(s_t))).

The paper uses a PRM on GSM8K, a rule on MBPP (−0.5 when the code so far fails Python's
tokenizer, with Agg = last) and zero on MATH, where g = 0 for every aggregation.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from qstar_jax.search.interface import ProcessRewardModel, QItem


@dataclasses.dataclass(frozen=True, kw_only=True)
class ZeroUtility:
    """R_P = 0 for every step (g = 0)."""

    calls_reward_model: bool = dataclasses.field(default=False, init=False)

    def step_rewards(self, items: Sequence[QItem]) -> np.ndarray:
        return np.zeros(len(items), np.float64)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuleUtility:
    """R_P from a rule over the path: ``rule(problem_index, steps)`` where ``steps`` ends
    with the new step (e.g. the paper's MBPP rule, which the caller passes)."""

    rule: Callable[[int, tuple[str, ...]], float]
    calls_reward_model: bool = dataclasses.field(default=False, init=False)

    def step_rewards(self, items: Sequence[QItem]) -> np.ndarray:
        return np.array([self.rule(item.problem_index, item.prefix_steps + (item.step_text,))
                         for item in items], np.float64)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PRMUtility:
    """R_P = a process reward model's probability that the new step is good."""

    prm: ProcessRewardModel
    calls_reward_model: bool = dataclasses.field(default=True, init=False)

    def step_rewards(self, items: Sequence[QItem]) -> np.ndarray:
        if not items:
            return np.zeros(0, np.float64)
        return np.asarray(self.prm.score_steps(items), np.float64)
