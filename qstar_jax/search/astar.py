"""Q*: best-first (A*) search over reasoning steps on f = g + λ·h.

h of a child is Q̂(s, a) of the edge that made it, so children are scored without being
expanded; g aggregates the process rewards along the path. The frontier is a heap on
(−f, −depth, node id): the highest f first, ties to the deeper node, then the older one.
Ties to depth keep a search whose Q̂ saturates (or is a 0/1 oracle) going down one path
instead of widening breadth-first over equally scored nodes, as A* breaks ties toward
the larger g. Goal test on pop: a popped terminal node is a complete trajectory. Goal
tests cost nothing, so terminal nodes at the top of the frontier are popped even when
the expansion budget is spent. Identical sibling steps (same text) merge into the first
sample (``SearchTree.add_children``). With ``max_steps``, an open node that deep is cut:
never expanded, as a baseline's chain is cut there.

The paper expands a node once. With ``expansions_per_node`` > 1 an expanded node goes
back on the frontier at its own f until it has been expanded that many times, each time
sampling K new steps: when none of a promising node's K children scores as well as the
node itself (the policy missed the good step), the search samples there again instead
of descending into worse children. Q̂(s, a) estimates the best value reachable after a,
so a child's h below its parent's says the sampled steps fall short of what the parent
was worth.
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Sequence

from qstar_jax.search.aggregate import Agg
from qstar_jax.search.checks import (as_agg, require_count_or_none, require_finite,
                                     require_positive, require_temperature)
from qstar_jax.search.interface import ExpandRequest, Node
from qstar_jax.search.planner import Outcome, ScoredStep, SearchResult
from qstar_jax.search.tree import TreePlanner, best_by_f


@dataclasses.dataclass(frozen=True, kw_only=True)
class Budget:
    """Per-problem limits; None = unlimited. The token limit is checked before each
    round against the tokens the expander charged (the result's ``generated_tokens``:
    with prefix sharing, the steps' distinct tokens), so the last round may overshoot it
    by what that round generates."""

    max_expansions: int | None = None
    max_generated_tokens: int | None = None

    def __post_init__(self):
        require_count_or_none(self, 0, "max_expansions", "max_generated_tokens")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AStarConfig:
    """Paper defaults: K = 6 children per expansion, N = 6 complete trajectories, λ = 1."""

    k: int = 6  # K
    n_complete: int = 6  # N
    lam: float = 1.0  # λ
    agg: Agg = Agg.min
    h_agg: Agg = Agg.last  # folds the Q̂ of the path's edges into h (last: the paper's)
    temperature: float = 1.0
    budget: Budget = Budget()
    expansions_per_round: int = 1  # best nodes of a problem expanded in one round
    expansions_per_node: int = 1  # times a node may be expanded (paper: once)
    max_steps: int | None = None  # depth limit: an open node this deep is cut (None: none)

    def __post_init__(self):
        object.__setattr__(self, "agg", as_agg(self.agg))
        object.__setattr__(self, "h_agg", as_agg(self.h_agg))
        require_positive(self, "k", "n_complete", "expansions_per_round",
                         "expansions_per_node")
        require_count_or_none(self, 1, "max_steps")
        require_temperature(self)
        require_finite(self, "lam")
        if not isinstance(self.budget, Budget):
            raise ValueError(f"AStarConfig.budget must be a Budget, got "
                             f"{type(self.budget).__name__}")


class AStarPlanner(TreePlanner):
    """Q* on one problem; see the module docstring for the search rules.

    The answer is the complete trajectory with the best f. If none was reached within
    the budget it is the best-f terminal node generated (``terminal_over_budget``), else
    the frontier node with steps of best f, ties to the lowest id (``partial``; the root,
    with no steps, if the frontier holds no other). That is the node the search would
    have expanded next except at a tie, where the search takes the deeper node, and where
    the root is back on the frontier (``expansions_per_node``) at its children's best f:
    a partial answer has steps wherever the frontier holds one, whatever the sign of f.
    Nodes cut at ``max_steps`` stand beside the frontier's here, as a chain cut there
    answers its tip.
    """

    def __init__(self, problem_index: int, config: AStarConfig):
        super().__init__(problem_index, agg=config.agg, lam=config.lam, h_agg=config.h_agg)
        self._config = config
        self._frontier: list[tuple[float, int, int, Node]] = []
        self._push(self._tree.root)
        self._complete: list[Node] = []
        self._cut: list[Node] = []  # open nodes at max_steps, never expanded
        self._root_best = float("-inf")

    def propose(self) -> list[ExpandRequest]:
        self._check_can_propose()
        batch, limit = [], self._round_limit()
        self._goal_test_top()
        while (len(batch) < limit and self._frontier
               and len(self._complete) < self._config.n_complete):
            batch.append(heapq.heappop(self._frontier)[-1])
            if len(batch) < limit:  # the next node this round is popped now
                self._goal_test_top()
        if not batch or len(self._complete) >= self._config.n_complete:
            self._finish()
            return []
        self._expanding = batch
        return [self._tree.request(node, self._config.k, self._config.temperature)
                for node in batch]

    def absorb(self, children: Sequence[Sequence[ScoredStep]]) -> None:
        self._check_absorb(children)
        for parent, scored in zip(self._expanding, children):
            new = self._tree.add_children(parent, scored, merge_identical=True)
            for child in new:
                if child.terminal:
                    self._tree.release(child)
                elif self._too_deep(child):
                    self._tree.release(child)
                    self._cut.append(child)
                    continue
                self._push(child)
            if self._tree.expansions_of(parent) < self._config.expansions_per_node:
                self._push(parent, self._reentry_f(parent, new))
            else:
                self._tree.release(parent)
        self._expanding = []

    def result(self, *, include_tree: bool = False) -> SearchResult:
        if self._complete:
            chosen, outcome = best_by_f(self._complete), Outcome.complete
        elif terminals := [entry[-1] for entry in self._frontier if entry[-1].terminal]:
            chosen, outcome = best_by_f(terminals), Outcome.terminal_over_budget
        else:  # the root, with no steps, answers only where no other node is left
            frontier = [entry[-1] for entry in self._frontier if entry[-1].depth] + self._cut
            chosen, outcome = best_by_f(frontier) if frontier else self._tree.root, Outcome.partial
        return self._result(chosen, outcome, chosen.f, [(n, n.f) for n in self._complete],
                            include_tree=include_tree)

    def _round_limit(self) -> int:
        budget = self._config.budget
        if (budget.max_generated_tokens is not None
                and self._generated_tokens >= budget.max_generated_tokens):
            return 0
        if budget.max_expansions is None:
            return self._config.expansions_per_round
        return min(self._config.expansions_per_round,
                   budget.max_expansions - self._tree.expansions)

    def _too_deep(self, node: Node) -> bool:
        return self._config.max_steps is not None and node.depth >= self._config.max_steps

    def _goal_test_top(self) -> None:
        while (self._frontier and self._frontier[0][-1].terminal
               and len(self._complete) < self._config.n_complete):
            self._complete.append(heapq.heappop(self._frontier)[-1])

    def _reentry_f(self, node: Node, children: Sequence[Node]) -> float:
        """A node's f on the frontier again: its own, g + λ·Q̂ of the edge into it; the
        root, which has no such edge, takes the best f of its children, max_a Q̂(s0, a)."""
        if node.depth:
            return node.f
        self._root_best = max([self._root_best, *(child.f for child in children)])
        return self._root_best

    def _push(self, node: Node, f: float | None = None) -> None:
        heapq.heappush(self._frontier, (-(node.f if f is None else f), -node.depth, node.id, node))
