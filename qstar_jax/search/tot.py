"""Tree of Thoughts (Yao et al. 2023): breadth-first and depth-first search over steps,
each new state judged by a state evaluator.

The evaluator is a function of a node: Q̂ of the edge that made it (``node.h``: the
trained Q̂, or a value prompt sampled V times, ``search/value_prompt.py``, both arrive
as the driver's Q̂ scores), or the aggregated process reward (``node.g``: a PRM).

- BFS: at each depth, K proposed steps per kept state, the best b new states kept: step
  beam search ranked by the evaluator instead of f (``BeamPlanner`` with ``value``).
- DFS: expand the best unexplored state first; children whose value falls below a
  threshold are pruned, and a state whose children are all pruned or spent sends the
  search back to the best remaining sibling of the deepest ancestor that has one
  (backtracking). Ends at ``n_complete`` terminal states above the threshold or after
  ``max_expansions`` expansions (the step limit).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from qstar_jax.search.aggregate import Agg
from qstar_jax.search.beam import BeamConfig, BeamPlanner
from qstar_jax.search.checks import as_agg, require_positive, require_temperature
from qstar_jax.search.interface import ExpandRequest, Node
from qstar_jax.search.planner import Outcome, ScoredStep, SearchResult
from qstar_jax.search.tree import TreePlanner, best_by

StateValue = Callable[[Node], float]


def q_value(node: Node) -> float:
    """h: Q̂ of the edge into the node, or the path's folded by ``h_agg`` (the trained Q̂,
    or a value prompt behind the Q̂ call)."""
    return node.h


def process_value(node: Node) -> float:
    """The aggregated process reward g (a PRM's, under the search's Agg)."""
    return node.g


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToTConfig:
    k: int = 5  # K: steps proposed per state
    keep: int = 5  # b: states kept per depth (BFS)
    threshold: float = 0.5  # DFS: a child valued below this is pruned
    max_expansions: int = 100  # DFS: the step limit
    n_complete: int = 1  # DFS: terminal states to collect before stopping
    temperature: float = 1.0
    max_steps: int = 32  # depth limit
    agg: Agg = Agg.min
    h_agg: Agg = Agg.last  # folds the Q̂ of the path's edges into h (last: the paper's)

    def __post_init__(self):
        object.__setattr__(self, "agg", as_agg(self.agg))
        object.__setattr__(self, "h_agg", as_agg(self.h_agg))
        require_positive(self, "k", "keep", "max_expansions", "n_complete",
                         "max_steps")
        require_temperature(self)


def tot_bfs_planner(problem_index: int, config: ToTConfig, value: StateValue) -> BeamPlanner:
    """ToT-BFS: a beam of ``keep`` states, ``k`` proposals each, ranked by
    ``value``; the answer is the finished state ``value`` ranks highest."""
    beam = BeamConfig(beam_width=config.keep, k=config.k,
                      agg=config.agg, h_agg=config.h_agg, temperature=config.temperature,
                      max_steps=config.max_steps)
    return BeamPlanner(problem_index, beam, value=value)


class ToTDFSPlanner(TreePlanner):
    """ToT-DFS on one problem, one expansion per round (depth first is sequential).

    The stack holds unexplored states; children of an expansion go on it best-last, so
    the best is expanded next and the rest wait for backtracking. Ties in value go to
    the lower node id. The answer is the best-valued terminal state collected. With none
    it is ``partial``: the best-valued state kept but never expanded, left on the stack
    when the search stopped or cut at ``max_steps``, as A* answers from its frontier and
    cut nodes; where no such state is left, the last state expanded (the root before any
    expansion). The result counts the states the threshold pruned.
    """

    def __init__(self, problem_index: int, config: ToTConfig, value: StateValue):
        super().__init__(problem_index, agg=config.agg, lam=1.0, h_agg=config.h_agg)
        self._config = config
        self._value = value
        self._stack: list[Node] = [self._tree.root]
        self._complete: list[Node] = []
        self._last_expanded: Node = self._tree.root
        self._cut: list[Node] = []  # open states at max_steps, never expanded
        self.pruned: list[int] = []  # node ids cut by the threshold, in order

    def propose(self) -> list[ExpandRequest]:
        self._check_can_propose()
        config = self._config
        if (not self._stack or self._tree.expansions >= config.max_expansions
                or len(self._complete) >= config.n_complete):
            self._finish()
            return []
        node = self._stack.pop()
        self._expanding, self._last_expanded = [node], node
        return [self._tree.request(node, config.k, config.temperature)]

    def absorb(self, children: Sequence[Sequence[ScoredStep]]) -> None:
        self._check_absorb(children)
        [parent], [scored] = self._expanding, children
        self._expanding = []
        self._tree.release(parent)
        ranked = sorted(self._tree.add_children(parent, scored, merge_identical=True),
                        key=lambda node: (-self._value(node), node.id))
        kept = []
        for node in ranked:
            if self._value(node) < self._config.threshold:
                self.pruned.append(node.id)
                self._tree.release(node)
            elif node.terminal:
                self._complete.append(node)
                self._tree.release(node)
            elif node.depth >= self._config.max_steps:
                self._cut.append(node)
                self._tree.release(node)
            else:
                kept.append(node)
        self._stack.extend(reversed(kept))

    def result(self, *, include_tree: bool = False) -> SearchResult:
        if self._complete:
            chosen, outcome = best_by(self._complete, self._value), Outcome.complete
        else:
            chosen, outcome = self._partial_answer(), Outcome.partial
        result = self._result(chosen, outcome, self._value(chosen),
                              [(n, self._value(n)) for n in self._complete],
                              include_tree=include_tree)
        return dataclasses.replace(result, pruned=len(self.pruned))

    def _partial_answer(self) -> Node:
        """The best-valued state left unexpanded (the root aside), else the last expanded."""
        unexpanded = [node for node in self._stack if node.depth] + self._cut
        return best_by(unexpanded, self._value) if unexpanded else self._last_expanded
