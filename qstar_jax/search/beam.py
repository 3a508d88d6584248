"""Step-level beam search: each live beam expanded by K, the top B children kept.

Every round pools the children of all live beams (identical siblings merged as in Q*),
keeps the B with the highest f = g + λ·Q̂ (ties to the lower node id) and drops the
rest. A kept terminal child is a finished beam: it is set aside and expanded no more.
The search ends once B beams have finished, when no beam is live, or when the live beams
have taken ``max_steps`` steps. The answer is the finished beam with the best f.

``value`` ranks by another function of a node instead of f: Tree of Thoughts' BFS is
this search ranked by its state evaluator (``search/tot.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from qstar_jax.search.aggregate import Agg
from qstar_jax.search.checks import as_agg, require_finite, require_positive, require_temperature
from qstar_jax.search.interface import ExpandRequest, Node
from qstar_jax.search.planner import Outcome, ScoredStep, SearchResult
from qstar_jax.search.tree import TreePlanner, best_by


@dataclasses.dataclass(frozen=True, kw_only=True)
class BeamConfig:
    beam_width: int  # B
    k: int  # K
    lam: float = 1.0  # λ
    agg: Agg = Agg.min
    h_agg: Agg = Agg.last  # folds the Q̂ of the path's edges into h (last: the paper's)
    temperature: float = 1.0
    max_steps: int = 32

    def __post_init__(self):
        object.__setattr__(self, "agg", as_agg(self.agg))
        object.__setattr__(self, "h_agg", as_agg(self.h_agg))
        require_positive(self, "beam_width", "k", "max_steps")
        require_temperature(self)
        require_finite(self, "lam")


class BeamPlanner(TreePlanner):
    """Beam search on one problem. With no finished beam the answer is the best-f beam
    of the last round (``partial``), or the empty root if no step was ever kept.
    ``value``: what ranks nodes (default f); ties go to the lower node id."""

    def __init__(self, problem_index: int, config: BeamConfig,
                 value: Callable[[Node], float] = lambda node: node.f):
        super().__init__(problem_index, agg=config.agg, lam=config.lam, h_agg=config.h_agg)
        self._config = config
        self._value = value
        self._live: list[Node] = [self._tree.root]
        self._last_kept: list[Node] = []
        self._finished: list[Node] = []

    def propose(self) -> list[ExpandRequest]:
        self._check_can_propose()
        self._expanding, self._live = self._live, []
        return [self._tree.request(node, self._config.k, self._config.temperature)
                for node in self._expanding]

    def absorb(self, children: Sequence[Sequence[ScoredStep]]) -> None:
        self._check_absorb(children)
        pool = []
        for parent, scored in zip(self._expanding, children):
            self._tree.release(parent)
            pool += self._tree.add_children(parent, scored, merge_identical=True)
        self._expanding = []
        pool.sort(key=lambda node: (-self._value(node), node.id))
        kept, dropped = pool[:self._config.beam_width], pool[self._config.beam_width:]
        for node in dropped:
            self._tree.release(node)
        for node in kept:
            if node.terminal:
                self._finished.append(node)
                self._tree.release(node)
            else:
                self._live.append(node)
        if kept:
            self._last_kept = kept
        if (len(self._finished) >= self._config.beam_width or not self._live
                or self._live[0].depth >= self._config.max_steps):
            self._finish()

    def result(self, *, include_tree: bool = False) -> SearchResult:
        if self._finished:
            chosen, outcome = best_by(self._finished, self._value), Outcome.complete
        else:
            chosen = best_by(self._last_kept, self._value) if self._last_kept else self._tree.root
            outcome = Outcome.partial
        return self._result(chosen, outcome, self._value(chosen),
                            [(n, self._value(n)) for n in self._finished],
                            include_tree=include_tree)
