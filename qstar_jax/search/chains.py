"""Sampled-chain baselines: greedy chain of thought, self-consistency, best-of-N.

A chain planner expands the root by N children once (chain i starts with the i-th
child), then each live chain by one child per round, through the same expander as Q*,
so compute is counted the same way. A chain ends at a terminal step, after
``max_steps`` steps, or when the expander returns no step for it. The complete chains
are ranked by a function of their final nodes; the best wins, ties to the lower chain.

Under ``h_agg=last`` a chain's h is the Q̂ of its final step alone, so only a step that
ends its chain is scored by Q̂ (``ChainPlanner.q_reads``): a terminal step or one at
``max_steps``. Chain 0's last step when the expander ends it with no step and no chain
completes (the partial answer, scored by its f) is scored as the search finishes.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Callable, Hashable, Sequence

import numpy as np

from qstar_jax.search.aggregate import Agg
from qstar_jax.search.checks import (as_agg, checked_scores, require_positive,
                                     require_temperature)
from qstar_jax.search.interface import ExpandRequest, Node, QItem, Step
from qstar_jax.search.planner import Outcome, ScoredStep, SearchResult
from qstar_jax.search.tree import TreePlanner

# Scores [n] for the final nodes of n complete chains of one problem.
ChainRanking = Callable[[Sequence[Node]], np.ndarray]
ROOT = -1  # stands for the root in the list of chains being expanded


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChainConfig:
    num_chains: int  # N
    temperature: float
    max_steps: int = 32
    agg: Agg = Agg.min  # aggregates process rewards into g along a chain
    h_agg: Agg = Agg.last  # folds the Q̂ of the path's edges into h (last: the paper's)

    def __post_init__(self):
        object.__setattr__(self, "agg", as_agg(self.agg))
        object.__setattr__(self, "h_agg", as_agg(self.h_agg))
        require_positive(self, "num_chains", "max_steps")
        require_temperature(self)


class ChainPlanner(TreePlanner):
    """N sampled chains of one problem, the best complete one by ``rank``.

    With no complete chain the answer is chain 0's partial trajectory (``partial``,
    scored by its f); with no chain at all, the empty root.

    ``rank`` sees only the final nodes of complete chains: under ``h_agg=last`` the
    other nodes' Q̂ is not scored (their h and f are NaN; ``q_reads``).
    """

    def __init__(self, problem_index: int, config: ChainConfig, rank: ChainRanking):
        super().__init__(problem_index, agg=config.agg, lam=1.0, h_agg=config.h_agg)
        self._config = config
        self._rank = rank
        self._tips: list[Node] = []  # the last node of each chain
        self._live: list[bool] = []
        self._scores = np.zeros(0)
        # Chain 0's tip as a Q̂ item while its Q̂ is unscored: the partial answer, should
        # the chain end with no step and no chain complete. Owed: asked for on finishing.
        self._tip_0_item: QItem | None = None
        self._owed: list[QItem] = []

    def q_reads(self, children: Sequence[Sequence[Step]]) -> list[list[bool]]:
        """Under ``h_agg=last`` (h: the Q̂ of a node's own step) the steps that end their
        chain as they come: terminal, or at ``max_steps``; these are the final nodes the
        ranking and a partial answer read. Every step under another ``h_agg``, which
        folds the Q̂ of the path's steps."""
        if self._config.h_agg is not Agg.last:
            return super().q_reads(children)
        depths = [1 if chain == ROOT else self._tips[chain].depth + 1
                  for chain in self._expanding]
        return [[step.ends_trace or depth >= self._config.max_steps for step in steps]
                for depth, steps in zip(depths, children)]

    def take_owed_q(self) -> list[QItem]:
        owed, self._owed = self._owed, []
        return owed

    def absorb_owed_q(self, q_values: np.ndarray) -> None:
        """Chain 0's tip, the partial answer, with its Q̂ (``_finish``)."""
        if len(q_values) != 1 or self._tip_0_item is None:
            super().absorb_owed_q(q_values)
            return
        self._tips[0] = self._tree.score_q(self._tips[0], float(q_values[0]))
        self._tip_0_item = None

    def propose(self) -> list[ExpandRequest]:
        self._check_can_propose()
        config = self._config
        if self._tree.expansions == 0:
            self._expanding = [ROOT]
            return [self._tree.request(self._tree.root, config.num_chains, config.temperature)]
        self._expanding = [chain for chain, live in enumerate(self._live) if live]
        return [self._tree.request(self._tips[chain], 1, config.temperature)
                for chain in self._expanding]

    def absorb(self, children: Sequence[Sequence[ScoredStep]]) -> None:
        self._check_absorb(children)
        for chain, scored in zip(self._expanding, children):
            parent = self._tree.root if chain == ROOT else self._tips[chain]
            self._tree.release(parent)
            nodes = self._tree.add_children(parent, scored, merge_identical=False)
            if chain == ROOT:
                self._tips, self._live = nodes, [True] * len(nodes)
            elif nodes:
                self._tips[chain] = nodes[0]
            else:
                self._live[chain] = False
            if chain in (ROOT, 0) and nodes:  # chain 0's new tip: its first child
                self._note_tip_0(parent, nodes[0], scored[0].step)
        self._expanding = []
        for chain, tip in enumerate(self._tips):
            if self._live[chain] and (tip.terminal or tip.depth >= self._config.max_steps):
                self._live[chain] = False
                self._tree.release(tip)
        if not any(self._live):
            self._finish()

    def result(self, *, include_tree: bool = False) -> SearchResult:
        complete = self._complete()
        if complete:
            best = int(np.argmax(self._scores))  # first maximum: ties to the lower chain
            chosen, outcome, score = complete[best], Outcome.complete, float(self._scores[best])
        else:
            chosen = self._tips[0] if self._tips else self._tree.root
            outcome, score = Outcome.partial, chosen.f
        return self._result(chosen, outcome, score,
                            [(n, float(s)) for n, s in zip(complete, self._scores)],
                            include_tree=include_tree)

    def _complete(self) -> list[Node]:
        return [tip for tip in self._tips if tip.terminal]

    def _note_tip_0(self, parent: Node, tip: Node, step: Step) -> None:
        """Keeps chain 0's new ``tip`` (``step`` after ``parent``) as a Q̂ item while its
        Q̂ is unscored."""
        self._tip_0_item = (
            QItem(problem_index=self.problem_index, prefix_steps=parent.steps,
                  step_text=step.text, hidden=step.hidden, logprob=step.logprob)
            if math.isnan(tip.h) else None)

    def _finish(self) -> None:
        super()._finish()
        complete = self._complete()
        if complete:
            self._scores = checked_scores(self._rank(complete), len(complete),
                                          "chain ranking", "complete chains")
        elif self._tip_0_item is not None:  # the partial answer is read by its f
            self._owed = [self._tip_0_item]


def greedy_planner(problem_index: int, *, max_steps: int = 32,
                   agg: Agg = Agg.min) -> ChainPlanner:
    """One chain at temperature 0; its score is its f = g + Q̂ of the final step."""
    config = ChainConfig(num_chains=1, temperature=0.0, max_steps=max_steps, agg=agg)
    return ChainPlanner(problem_index, config,
                        lambda finals: np.array([n.f for n in finals], np.float64))


def self_consistency_planner(problem_index: int, config: ChainConfig,
                             answer_key: Callable[[tuple[str, ...]], Hashable | None]
                             ) -> ChainPlanner:
    """Majority vote over ``answer_key(steps)`` of the complete chains (None: no vote).

    A chain's score is the number of votes its answer got; of equally voted answers the
    one first reached by the lower-numbered chain wins.
    """
    return ChainPlanner(problem_index, config,
                        lambda finals: vote_counts([answer_key(n.steps) for n in finals]))


def vote_counts(keys: Sequence[Hashable | None]) -> np.ndarray:
    """float [len(keys)]: the votes each chain's answer got among the chains (0 for a
    chain with no answer)."""
    counts = collections.Counter(key for key in keys if key is not None)
    return np.array([counts[key] if key is not None else 0 for key in keys], np.float64)


def self_consistency_of(result: SearchResult,
                        answer_key: Callable[[tuple[str, ...]], Hashable | None]
                        ) -> SearchResult:
    """Self-consistency's result from the chains of another chain search of the same
    ChainConfig (best-of-N's): the same chains, re-ranked by votes, with no Q̂ or PRM
    call charged (a vote reads neither). Its answer is the one
    ``self_consistency_planner`` would give: the complete chains come in chain order, and
    without any the partial chain 0 stands as it is. Its tree, where the search kept one,
    is the search's with each complete chain's votes by its last node (``votes``): the
    nodes' Q̂ and PRM scores in it are the other search's, which the vote did not read."""
    counters = (None if result.counters is None
                else dataclasses.replace(result.counters, q_calls=0, prm_calls=0))
    votes = vote_counts([answer_key(t.steps) for t in result.trajectories])
    tree = (None if result.tree is None else
            {**result.tree, "votes": {str(t.node_id): int(v)
                                      for t, v in zip(result.trajectories, votes)}})
    if not result.trajectories:
        return dataclasses.replace(result, counters=counters, tree=tree)
    best = int(np.argmax(votes))  # first maximum: ties to the lower chain
    chosen = result.trajectories[best]
    return dataclasses.replace(
        result, steps=chosen.steps, node_id=chosen.node_id, score=float(votes[best]),
        trajectories=tuple(dataclasses.replace(t, score=float(v))
                           for t, v in zip(result.trajectories, votes)),
        counters=counters, tree=tree)

