"""A known reasoning tree for one problem, and a fake sampler that enumerates it.

Every full trace and its reward:
    a a2 -> 0      a a1 -> 1      b b1 b11 -> 1      b b1 b12 -> 0      c -> 0
"""

from __future__ import annotations

from qstar_jax.qvalue.dataset import StepPair, step_pairs
from qstar_jax.qvalue.rollouts import ProblemRollouts, Rollout

CHILDREN = {
    (): ("a", "b", "c"),
    ("a",): ("a2", "a1"),  # the worse step first, so one sample finds the worse return
    ("b",): ("b1",),
    ("b", "b1"): ("b11", "b12"),
}
REWARDS = {("a", "a2"): 0.0, ("a", "a1"): 1.0, ("b", "b1", "b11"): 1.0,
           ("b", "b1", "b12"): 0.0, ("c",): 0.0}
PROBLEM = 7


def reward(problem: int, steps: tuple[str, ...]) -> float:
    assert problem == PROBLEM
    return REWARDS[steps]


def completions(state: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every continuation of ``state`` to the end of its trace, depth first."""
    if state in REWARDS:
        return [()]
    return [(step, *rest) for step in CHILDREN[state] for rest in completions((*state, step))]


def best_return(state: tuple[str, ...], discount: float) -> float:
    """Brute force over the whole tree: max over completions c of γ^len(c) · R(state ⊕ c)."""
    if state in REWARDS:
        return REWARDS[state]
    return max(discount * best_return((*state, step), discount) for step in CHILDREN[state])


class EnumeratingSampler:
    """Sample j from a state is its j-th completion (cycling, counted per state), truncated
    to ``max_steps``; every call is recorded."""

    def __init__(self):
        self.calls: list[dict] = []
        self._drawn: dict[tuple[str, ...], int] = {}

    def continue_from(self, items, n, temperature, max_steps=None):
        self.calls.append({"items": list(items), "n": n, "temperature": temperature,
                           "max_steps": max_steps})
        out = []
        for problem, prefix in items:
            assert problem == PROBLEM
            options = completions(prefix)
            start = self._drawn.get(prefix, 0)
            self._drawn[prefix] = start + n
            out.append([options[(start + j) % len(options)][:max_steps] for j in range(n)])
        return out


def all_pairs() -> list[StepPair]:
    """Every (s, a) of the tree, from rollouts that cover all of its traces."""
    traces = ProblemRollouts(problem_index=PROBLEM, temperature=0.9, rollouts=tuple(
        Rollout(steps=steps, reward=r) for steps, r in REWARDS.items()))
    return step_pairs([traces])
