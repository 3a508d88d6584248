"""One problem's search tree: node ids, scores of new children, handle bookkeeping, dump.

Every planner builds its nodes here, so ids, g/h/f and the release of cache handles
follow one rule for Q* and every baseline.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from qstar_jax.search.aggregate import Agg, aggregate
from qstar_jax.search.interface import ExpandRequest, Node, QItem, Step
from qstar_jax.search.planner import (Outcome, RoundGuard, ScoredStep, ScoredTrajectory,
                                      SearchResult)


class SearchTree:
    """Nodes of one problem, ids in creation order (root 0), f = g + ``lam``·h, where h
    folds the Q̂ of the path's edges by ``h_agg`` (``Agg.last``: Q̂ of the edge into the
    node, the paper's h).

    A child whose Q̂ was not scored (its planner said it would not read it,
    ``TreePlanner.q_reads``) comes with a NaN Q̂; under ``Agg.last`` its h and f are NaN,
    so a read of them shows (a ranking refuses it), and the dump writes them as None.
    ``score_q`` fills them in where a planner finds late that it reads them after all.

    A handle is handed back for release exactly once: when its node is released, when a
    duplicate sibling is dropped, or by ``release_all`` when the search ends.
    """

    def __init__(self, problem_index: int, *, agg: Agg, lam: float, h_agg: Agg = Agg.last):
        self.problem_index = problem_index
        self._agg, self._h_agg = agg, h_agg
        self._lam = lam
        self.root = Node(id=0, parent=None, steps=(), depth=0, g=0.0, h=0.0, f=0.0,
                         terminal=False, handle=None)
        self._nodes: dict[int, Node] = {0: self.root}
        self._held: dict[int, Any] = {}  # node id -> handle not yet released
        self._released: list[Any] = []
        self._expansion_order: list[int] = []
        self._requests: dict[int, list[int]] = {}  # node id -> children asked, per expansion
        self._child_texts: dict[int, set[str]] = {}  # node id -> its children's step texts

    @property
    def expansions(self) -> int:
        return len(self._expansion_order)

    def request(self, node: Node, num_children: int, temperature: float) -> ExpandRequest:
        """An expansion of ``node``; the order of these calls is the expansion order. A
        node expanded again asks for children numbered after those it already asked for."""
        self._expansion_order.append(node.id)
        requested = self._requests.setdefault(node.id, [])
        first_child = sum(requested)
        requested.append(num_children)
        return ExpandRequest(problem_index=self.problem_index, node=node,
                             num_children=num_children, temperature=temperature,
                             first_child=first_child)

    def expansions_of(self, node: Node) -> int:
        """How many times ``node`` has been requested for expansion."""
        return len(self._requests.get(node.id, ()))

    def add_children(self, parent: Node, scored: Sequence[ScoredStep], *,
                     merge_identical: bool) -> list[Node]:
        """New child nodes of ``parent``, in the expander's order.

        With ``merge_identical``, a step whose text equals an earlier sibling's (from this
        or an earlier expansion of ``parent``) is dropped and its handle released: the
        first sample is kept as it is (its logprob, Q̂ and reward), nothing of the
        duplicate is added to it.
        """
        children = []
        seen = self._child_texts.setdefault(parent.id, set()) if merge_identical else set()
        for item in scored:
            step = item.step
            if merge_identical and step.text in seen:
                self._release_handle(step.handle)
                continue
            seen.add(step.text)
            g = aggregate(self._agg, parent.g if parent.depth else None, item.reward)
            if math.isnan(item.q_value) and self._h_agg is not Agg.last:
                raise ValueError(f"a step with no Q̂ scored under h_agg={self._h_agg.value}: "
                                 "h folds the Q̂ of every step of the path")
            h = aggregate(self._h_agg, parent.h if parent.depth else None, item.q_value)
            node = Node(id=len(self._nodes), parent=parent.id, steps=parent.steps + (step.text,),
                        depth=parent.depth + 1, g=g, h=h, f=g + self._lam * h,
                        terminal=step.ends_trace, handle=step.handle)
            self._nodes[node.id] = node
            if step.handle is not None:
                self._held[node.id] = step.handle
            children.append(node)
        return children

    def score_q(self, node: Node, q_value: float) -> Node:
        """``node``, a leaf added with no Q̂ scored, with its Q̂ now ``q_value``: the node
        that replaces it (h and f set; its id, place and handle are the same)."""
        if not math.isnan(node.h) or self._nodes.get(node.id) is not node:
            raise ValueError(f"node {node.id} is not an unscored node of this tree")
        parent = self._nodes[node.parent]
        h = aggregate(self._h_agg, parent.h if parent.depth else None, q_value)
        scored = dataclasses.replace(node, h=h, f=node.g + self._lam * h)
        self._nodes[node.id] = scored
        return scored

    def release(self, node: Node) -> None:
        """The node will not be expanded (again): its handle can be freed."""
        if node.id in self._held:
            self._release_handle(self._held.pop(node.id))

    @property
    def holds_handles(self) -> bool:
        """Whether a handle is held or released and not yet taken."""
        return bool(self._held or self._released)

    def release_all(self) -> None:
        for node_id in sorted(self._held):
            self._release_handle(self._held.pop(node_id))

    def take_released(self) -> list[Any]:
        released, self._released = self._released, []
        return released

    def _release_handle(self, handle: Any) -> None:
        if handle is not None:
            self._released.append(handle)

    def dump(self) -> dict[str, Any]:
        """JSON-serialisable: every node with its steps, scores and expansion index (its
        last expansion's place in ``expansion_order``; None if never expanded). A node
        whose Q̂ was never scored has h and f None."""
        order = {node_id: i for i, node_id in enumerate(self._expansion_order)}
        return {
            "problem_index": self.problem_index,
            "expansion_order": list(self._expansion_order),
            "nodes": [{"id": n.id, "parent": n.parent, "steps": list(n.steps), "depth": n.depth,
                       "g": n.g, "h": _scored(n.h), "f": _scored(n.f), "terminal": n.terminal,
                       "expansion_index": order.get(n.id)}
                      for n in self._nodes.values()],
        }


class TreePlanner(RoundGuard):
    """A planner over one problem's ``SearchTree`` (Q*, beam search, ToT-DFS, chains): it
    hands back the handles the tree released, ends the search by releasing the rest, and
    reports a chosen node as the ``SearchResult``."""

    def __init__(self, problem_index: int, *, agg: Agg, lam: float, h_agg: Agg = Agg.last):
        super().__init__()
        self.problem_index = problem_index
        self._tree = SearchTree(problem_index, agg=agg, lam=lam, h_agg=h_agg)
        self._generated_tokens = 0  # as the expander charged them (note_generated_tokens)

    def note_generated_tokens(self, tokens: int) -> None:
        self._generated_tokens = tokens

    def q_reads(self, children: Sequence[Sequence[Step]]) -> list[list[bool]]:
        """Which new children the planner will read the Q̂ (h) of, for each request of its
        last ``propose`` as the expander answered it, before they are scored: the driver
        scores only these and hands the others to ``absorb`` with a NaN Q̂. Every one
        here: a tree search ranks its frontier by every child's f."""
        return [[True] * len(steps) for steps in children]

    def take_owed_q(self) -> list[QItem]:
        """Steps it absorbed unscored whose Q̂ it found, on finishing, that it reads after
        all (each asked once); the driver scores them and hands the values to
        ``absorb_owed_q``. None here."""
        return []

    def absorb_owed_q(self, q_values: np.ndarray) -> None:
        """The Q̂ of the items of the last ``take_owed_q``, in order."""
        if len(q_values):
            raise ValueError(f"{len(q_values)} Q̂ values for no step owed")

    def take_released(self) -> list[Any]:
        return self._tree.take_released()

    @property
    def holds_handles(self) -> bool:
        return self._tree.holds_handles

    def abandon(self) -> list[Any]:
        self._finish()
        return self._tree.take_released()

    def _finish(self) -> None:
        self._tree.release_all()
        self._done = True

    def _result(self, chosen: Node, outcome: Outcome, score: float,
                trajectories: Iterable[tuple[Node, float]], *,
                include_tree: bool) -> SearchResult:
        """``chosen`` with its ``score``; ``trajectories``: each complete node and its score."""
        return SearchResult(
            problem_index=self.problem_index, steps=chosen.steps, node_id=chosen.id,
            outcome=outcome, score=score,
            trajectories=tuple(ScoredTrajectory(node_id=node.id, steps=node.steps, score=s)
                               for node, s in trajectories),
            tree=self._tree.dump() if include_tree else None)


def _scored(value: float) -> float | None:
    """A dumped h or f: None where no Q̂ was scored (NaN)."""
    return None if math.isnan(value) else value


def best_by_f(nodes: Sequence[Node]) -> Node:
    """The highest f, ties to the lowest node id."""
    return best_by(nodes, lambda node: node.f)


def best_by(nodes: Sequence[Node], value: Callable[[Node], float]) -> Node:
    """The highest ``value``, ties to the lowest node id."""
    return min(nodes, key=lambda node: (-value(node), node.id))
