"""The contract between the search driver and a per-problem planner, and what it returns.

A planner is a state machine over one problem, so the driver can batch every unfinished
problem's requests into one expander call per round:

    while not planner.done:
        requests = planner.propose()          # may finish the planner and return []
        children = expander.expand(requests)  # batched with other problems' requests
        planner.absorb(scored children)       # each child with its Q̂ and process reward
        expander.release(planner.take_released())
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Protocol, Sequence, TypeVar

from qstar_jax.search.interface import ExpandRequest, Step


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoredStep:
    """A sampled step with Q̂ of its edge and its process reward R_P."""

    step: Step
    q_value: float
    reward: float


class Outcome(str, enum.Enum):
    """How the chosen trajectory was found."""

    complete = "complete"  # a terminal node the search reached (popped / finished chain)
    # A terminal node that was generated but not reached before the budget ran out.
    terminal_over_budget = "terminal_over_budget"
    partial = "partial"  # no terminal node at all: the fallback partial trajectory


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoredTrajectory:
    node_id: int
    steps: tuple[str, ...]
    score: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchCounters:
    """Compute one problem's search spent. ``wall_s`` runs from the start of the batched
    run to this problem's finish, so problems searched side by side overlap."""

    generated_tokens: int
    prefilled_tokens: int
    q_calls: int  # (s, a) items Q̂ scored
    prm_calls: int  # steps a reward model scored
    expansions: int  # expand requests issued
    wall_s: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchResult:
    """The chosen trajectory of one problem. ``score`` is the planner's ranking value of
    it (f for Q* and beam search, votes for self-consistency, the scorer's value for
    best-of-N); ``trajectories`` are all complete ones with their scores. ``counters``
    is filled by the driver; ``tree`` is a JSON-serialisable dump when asked for.
    ``pruned``: the states a threshold cut (ToT-DFS; 0 where no search prunes), so an
    empty partial answer tells whether every state was pruned."""

    problem_index: int
    steps: tuple[str, ...]
    node_id: int
    outcome: Outcome
    score: float
    trajectories: tuple[ScoredTrajectory, ...]
    counters: SearchCounters | None = None
    tree: dict[str, Any] | None = None
    pruned: int = 0

    @property
    def completed(self) -> bool:
        """The answer is a finished trajectory (it ends in a terminal step), reached by
        the search or, when the budget ran out first, generated (``terminal_over_budget``):
        either way it is what the method answers, and evaluate grades it."""
        return self.outcome is not Outcome.partial


RequestT = TypeVar("RequestT", covariant=True)
ReplyT = TypeVar("ReplyT", contravariant=True)


class RoundPlanner(Protocol[RequestT, ReplyT]):
    """A planner the driver steps round by round: requests out, their replies back."""

    problem_index: int

    @property
    def done(self) -> bool: ...

    def propose(self) -> list[RequestT]:
        """This round's requests; [] only when the planner has just finished."""

    def absorb(self, replies: Sequence[Sequence[ReplyT]]) -> None:
        """The replies to each request of the last ``propose``, in order."""

    def result(self, *, include_tree: bool = False) -> SearchResult: ...


class Planner(RoundPlanner[ExpandRequest, ScoredStep], Protocol):
    """Absorbs the scored children of each expansion it requested."""

    def note_generated_tokens(self, tokens: int) -> None:
        """The tokens the expander has charged this search so far, the figure its result's
        counters report; told before each ``absorb``."""

    def take_released(self) -> list[Any]:
        """Handles that can be freed now; each handle is returned exactly once."""

    @property
    def holds_handles(self) -> bool:
        """Whether any handle it was given is not yet handed back."""

    def abandon(self) -> list[Any]:
        """Every handle not yet handed back, to be freed: the search is given up (to begin
        again with a fresh planner) and this planner is not used again."""


class RoundGuard:
    """The propose/absorb alternation every planner keeps: ``propose`` only on a live
    planner between rounds, ``absorb`` exactly one result list per request proposed."""

    def __init__(self):
        self._expanding: list = []
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def _check_can_propose(self) -> None:
        if self._done or self._expanding:
            raise RuntimeError("propose() called on a finished planner or before absorb()")

    def _check_absorb(self, children: Sequence) -> None:
        if len(children) != len(self._expanding):
            raise ValueError(f"absorb() got {len(children)} child lists for "
                             f"{len(self._expanding)} requests")
