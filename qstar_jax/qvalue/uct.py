"""A small UCT search over single reasoning steps, used to pick where rollouts start.

Each tree is rooted at a state s'. A simulation descends by UCT, expands a node by
sampling ``branching`` single steps (``max_steps=1``), rolls out from the first unvisited
child to the end of the trace, and backs the discounted return up the path. Trees of
many roots advance in lockstep so every round costs at most two batched sampler calls.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from qstar_jax.qvalue.rollouts import RewardFn, RolloutSampler, SamplerItem, sample_checked


@dataclasses.dataclass(frozen=True, kw_only=True)
class UCTConfig:
    simulations: int = 8
    branching: int = 3  # single steps sampled when a node is expanded
    exploration: float = 1.0  # c in mean + c·sqrt(ln N_parent / N_child)
    temperature: float = 0.9
    discount: float = 1.0
    max_steps: int | None = None  # cap on a rollout's length

    def __post_init__(self):
        if self.simulations < 1 or self.branching < 1:
            raise ValueError(f"simulations={self.simulations} and branching={self.branching} "
                             "must both be at least 1")


@dataclasses.dataclass(kw_only=True, eq=False)
class _Node:
    steps: tuple[str, ...]  # steps after the root state
    children: list["_Node"] = dataclasses.field(default_factory=list)
    expanded: bool = False
    terminal_return: float | None = None  # set once the trace is known to end here
    visits: int = 0
    value_sum: float = 0.0


def _uct_score(child: _Node, parent_visits: int, exploration: float) -> float:
    mean = child.value_sum / child.visits
    return mean + exploration * math.sqrt(math.log(parent_visits) / child.visits)


def _descend(root: _Node, exploration: float) -> list[_Node]:
    """Path from the root to the node this simulation acts on."""
    path, node = [root], root
    while node.expanded and node.terminal_return is None:
        unvisited = [c for c in node.children if c.visits == 0]
        if unvisited:
            path.append(unvisited[0])
            return path
        node = max(node.children, key=lambda c: _uct_score(c, node.visits, exploration))
        path.append(node)
    return path


def uct_best_returns(roots: Sequence[SamplerItem], sampler: RolloutSampler,
                     reward_fn: RewardFn, config: UCTConfig) -> np.ndarray:
    """Best discounted return found from each root state by UCT rollouts: [len(roots)]."""
    trees = [_Node(steps=()) for _ in roots]
    best = np.full(len(roots), -np.inf)

    def terminal_return(i: int, node: _Node, after: tuple[str, ...]) -> float:
        problem, root_steps = roots[i]
        trace = (*root_steps, *node.steps, *after)
        return config.discount ** (len(node.steps) + len(after)) * reward_fn(problem, trace)

    for _ in range(config.simulations):
        paths = [_descend(tree, config.exploration) for tree in trees]
        to_expand = [i for i, path in enumerate(paths)
                     if path[-1].terminal_return is None and not path[-1].expanded
                     and (path[-1].visits > 0 or len(path) == 1)]
        expansions = sample_checked(
            sampler, [(roots[i][0], (*roots[i][1], *paths[i][-1].steps)) for i in to_expand],
            config.branching, config.temperature, max_steps=1)
        for i, candidates in zip(to_expand, expansions):
            node = paths[i][-1]
            node.expanded = True
            for step in dict.fromkeys(c[0] for c in candidates if c):
                node.children.append(_Node(steps=(*node.steps, step)))
            if node.children:
                paths[i].append(node.children[0])
            else:
                node.terminal_return = terminal_return(i, node, ())
        to_roll = [i for i, path in enumerate(paths) if path[-1].terminal_return is None]
        rollouts = sample_checked(
            sampler, [(roots[i][0], (*roots[i][1], *paths[i][-1].steps)) for i in to_roll],
            1, config.temperature, max_steps=config.max_steps)
        returns = {i: paths[i][-1].terminal_return for i in range(len(trees))}
        for i, (continuation,) in zip(to_roll, rollouts):
            returns[i] = terminal_return(i, paths[i][-1], continuation)
            if not continuation:
                paths[i][-1].terminal_return = returns[i]
        for i, path in enumerate(paths):
            for node in path:
                node.visits += 1
                node.value_sum += returns[i]
            best[i] = max(best[i], returns[i])
    return best
