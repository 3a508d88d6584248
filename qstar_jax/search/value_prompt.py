"""Tree of Thoughts' value prompt as a ``QValueFunction``: the model judges a state.

For each new state s' = s ⊕ a the model is asked ``samples`` times whether the state can
still reach a solution; each reply's verdict (the last of the words "sure", "likely",
"impossible" it names: "unsure" is none) maps to a number and the state's value is their
sum (Yao et al. 2023, Game of 24: sure 20, likely 1, impossible 0.001; a reply with no
verdict counts 0). Behind the driver's Q̂ call, ToT ranks by it as it would by Q̂, and
the tokens are charged to the problem like every other sample.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping, Sequence

import numpy as np

from qstar_jax.search.interface import QItem, TextGenerator, TextRequest

TOT_VALUES = {"sure": 20.0, "likely": 1.0, "impossible": 0.001}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ValuePromptScorer:
    """``prompt(problem_index, steps)``: the value prompt for the state after ``steps``."""

    generator: TextGenerator
    prompt: Callable[[int, tuple[str, ...]], str]
    samples: int = 3
    temperature: float = 1.0
    values: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(TOT_VALUES))

    def __post_init__(self):
        if self.samples < 1:
            raise ValueError(f"ValuePromptScorer.samples must be >= 1, got {self.samples}")

    def score(self, items: Sequence[QItem]) -> np.ndarray:
        """float [len(items)]."""
        states = [item.prefix_steps + (item.step_text,) for item in items]
        replies = self.generator.generate([
            TextRequest(problem_index=item.problem_index,
                        prompt=self.prompt(item.problem_index, steps),
                        num_samples=self.samples, temperature=self.temperature,
                        stream="value/" + "\n".join(steps))
            for item, steps in zip(items, states)])
        return np.array([sum(self.verdict_value(g.text) for g in generations)
                         for generations in replies], np.float64)

    def verdict_value(self, reply: str) -> float:
        words = re.findall(r"\b(?:" + "|".join(map(re.escape, self.values)) + r")\b",
                           reply.lower())
        return self.values[words[-1]] if words else 0.0
