"""All that search knows of the decoder and the models: records and protocols.

A planner sees the policy only as a ``StepExpander`` (expand these nodes by K steps
each, free these cache handles), Q̂ only as a ``QValueFunction`` and the process reward
R_P only as a ``ProcessUtility``. Every call takes one batch across all problems of a
search round, so the implementations behind them can fill an accelerator.

Shapes: E = hidden size of the policy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, kw_only=True)
class Node:
    """One state of a problem's search tree: the question plus ``steps``.

    ``id`` is unique within a problem and assigned in creation order (root 0), so it
    does not depend on how problems were batched; the decoder derives its sampling keys
    from it. ``g`` is the aggregated process reward, ``h`` the Q̂ of the edge that made
    the node (or of the path's edges, folded by the planner's ``h_agg``), ``f = g + λ·h``.
    ``handle`` is the expander's cache handle, opaque to search (None for the root: the
    expander prefills the prompt itself).
    """

    id: int
    parent: int | None
    steps: tuple[str, ...]
    depth: int
    g: float
    h: float  # NaN where its Q̂ was not scored (a chain step whose h no ranking reads)
    f: float
    terminal: bool
    handle: Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExpandRequest:
    """Sample ``num_children`` next steps of ``node`` at ``temperature`` (0 = greedy).
    Children are numbered from ``first_child``: a node expanded again asks for the
    numbers after those it already has, so it samples new steps."""

    problem_index: int
    node: Node
    num_children: int
    temperature: float
    first_child: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Step:
    """One sampled next step. ``ends_trace``: EOS, the task's final-answer line or a full
    cache row, so the child is terminal (a step cut at its token cap is not). ``handle``:
    the cache handle of the child state (None when the expander keeps no cache for it).
    ``hidden`` [E] or None as in ``Node``."""

    text: str
    token_ids: tuple[int, ...]
    logprob: float
    hidden: np.ndarray | None
    ends_trace: bool
    handle: Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class QItem:
    """A candidate edge (s, a) of one problem: s = question ⊕ ``prefix_steps``, a =
    ``step_text``. ``hidden`` [E] is the policy's hidden state at a's last token, or None;
    ``logprob`` a's summed log-probability under the policy, or None.
    The same item is what process utilities and PRMs score (the reward of a)."""

    problem_index: int
    prefix_steps: tuple[str, ...]
    step_text: str
    hidden: np.ndarray | None
    logprob: float | None = None


class NoRoom(RuntimeError):
    """An expander found no room for a call's children (the decoder's KV cache full) and
    changed nothing: the call may be made again once handles are released. The decoder's
    own error is the cause."""


class StepExpander(Protocol):
    """The decoder as search sees it.

    The planners release a node's handle after the ``expand`` call of its last
    expansion returned, and every other handle they were given once its node can no
    longer be expanded (terminal, pruned, or search over).
    """

    def expand(self, requests: Sequence[ExpandRequest]) -> list[list[Step]]:
        """One batched call for every request of a round, across problems: for each
        request, at most ``num_children`` steps in a deterministic order. Raises NoRoom,
        having changed nothing, when the cache cannot hold every request's children."""

    def release(self, handles: Sequence[Any]) -> None:
        """Free the cache slots behind these handles."""

    def generated_tokens(self, problem_index: int) -> int:
        """Tokens sampled so far for this problem (all steps returned for it)."""

    def prefilled_tokens(self, problem_index: int) -> int:
        """Tokens prefilled so far for this problem (prompt and any re-prefill)."""


class QValueFunction(Protocol):
    """Q̂(s, a): reads the policy's hidden state, or runs its own backbone on the text."""

    def score(self, items: Sequence[QItem]) -> np.ndarray:
        """float [len(items)]."""


class ProcessRewardModel(Protocol):
    def score_steps(self, items: Sequence[QItem]) -> np.ndarray:
        """float [len(items)]: probability that each item's step (the latest) is good."""


class ProcessUtility(Protocol):
    """R_P of a new step. ``calls_reward_model`` says whether scoring spends PRM calls."""

    calls_reward_model: bool

    def step_rewards(self, items: Sequence[QItem]) -> np.ndarray:
        """float [len(items)]."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextRequest:
    """Sample ``num_samples`` completions of ``prompt`` (a whole text, not a step) at
    ``temperature`` (0 = greedy). ``stream`` names the request within its problem (e.g.
    "critique/3"): the random numbers derive from (problem, stream, sample), so they do
    not depend on how requests were batched. ``max_tokens``: at most this many tokens per
    completion (None: the generator's own limit; the smaller of the two holds).
    ``read_complete``: a check of a completion's text so far, True once the part of it
    that will be read is complete (a self-score's first number): the generator may stop
    sampling it there, so the tokens after it are not drawn (nor charged)."""

    problem_index: int
    prompt: str
    num_samples: int
    temperature: float
    stream: str
    max_tokens: int | None = None
    read_complete: Callable[[str], bool] | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Generation:
    """One completion and the tokens sampled for it."""

    text: str
    generated_tokens: int
    # Ended at a limit (the request's max_tokens, the generator's own, or a full cache
    # row), not of itself: its text may stop mid-word.
    cut: bool = False


class TextGenerator(Protocol):
    """The policy as a writer of whole texts from arbitrary prompts (MCTSr's answers,
    critiques and self-scores; ToT's value prompts), with the expander's accounting."""

    def generate(self, requests: Sequence[TextRequest]) -> list[list[Generation]]:
        """One batched call for every request of a round: ``num_samples`` completions
        each, in sample order."""

    def generated_tokens(self, problem_index: int) -> int:
        """Tokens sampled so far for this problem."""

    def prefilled_tokens(self, problem_index: int) -> int:
        """Tokens prefilled so far for this problem."""
