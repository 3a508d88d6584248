"""Hand-built search trees behind the search interfaces, for planner tests.

A tree maps a step prefix (written as space-separated step texts, "" for the root) to
the children an expansion samples, in order. At temperature 0 the expander returns the
first listed child (repeated), otherwise ``num_children`` listed from ``first_child``
on. Each child's hidden vector is [q, reward], so ``HiddenQ`` reads Q̂ from it and
``reward_rule`` looks the reward up: every value a planner sees is written in the test.
A child's ``tokens`` are all charged unless ``charged`` says fewer, as a decoder that
samples siblings as a trie charges their shared prefix once.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Mapping, Sequence

import numpy as np

from qstar_jax.search.interface import (ExpandRequest, Generation, NoRoom, QItem, Step,
                                       TextRequest)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FakeChild:
    text: str
    q: float
    reward: float = 0.0
    tokens: int = 1
    end: bool = False
    charged: int | None = None  # tokens the expander charges for it (None: all)


def child(text: str, q: float, *, reward: float = 0.0, tokens: int = 1,
          end: bool = False, charged: int | None = None) -> FakeChild:
    return FakeChild(text=text, q=q, reward=reward, tokens=tokens, end=end, charged=charged)


def tree(spec: Mapping[str, Sequence[FakeChild]]) -> dict[tuple[str, ...], list[FakeChild]]:
    return {tuple(prefix.split()): list(children) for prefix, children in spec.items()}


class FakeExpander:
    """A ``StepExpander`` over fixed trees, one per problem index, that checks the handle
    discipline: only live handles may be expanded, each handle is released exactly once."""

    def __init__(self, trees: Mapping[int, Mapping[tuple[str, ...], Sequence[FakeChild]]],
                 *, prompt_tokens: int = 10):
        self.trees = trees
        self.prompt_tokens = prompt_tokens
        self.expand_calls: list[list[ExpandRequest]] = []
        self.release_calls: list[list[int]] = []
        self.live: set[int] = set()
        self.issued = 0
        self.terminal_handles: set[int] = set()
        self.issued_in: dict[int, int] = {}  # handle -> number of the expand call
        self.released_after: dict[int, int] = {}  # handle -> expand calls made before
        # Most cache slots a decoder would hold at once: live handles after an expand call
        # (its parents are released only after it returns) plus the roots it prefilled.
        self.peak_held = 0
        self._generated: collections.Counter[int] = collections.Counter()
        self._prefilled: collections.Counter[int] = collections.Counter()

    def expand(self, requests: Sequence[ExpandRequest]) -> list[list[Step]]:
        self.expand_calls.append(list(requests))
        out = [self._expand_one(request) for request in requests]
        roots = sum(request.node.handle is None for request in requests)
        self.peak_held = max(self.peak_held, len(self.live) + roots)
        return out

    def _expand_one(self, request: ExpandRequest) -> list[Step]:
        node, problem = request.node, request.problem_index
        if node.handle is None:
            assert node.depth == 0, f"non-root node {node.steps} has no handle"
            self._prefilled[problem] += self.prompt_tokens
        else:
            assert node.handle in self.live, f"expanding {node.steps} with a released handle"
        listed = self.trees[problem][node.steps]
        if request.temperature == 0:
            chosen = listed[:1] * request.num_children
        else:
            chosen = listed[request.first_child:request.first_child + request.num_children]
        steps = []
        for fake in chosen:
            self.issued += 1
            self.live.add(self.issued)
            self.issued_in[self.issued] = len(self.expand_calls)
            if fake.end:
                self.terminal_handles.add(self.issued)
            self._generated[problem] += fake.tokens if fake.charged is None else fake.charged
            steps.append(Step(text=fake.text, token_ids=tuple(range(fake.tokens)), logprob=-1.0,
                              hidden=np.array([fake.q, fake.reward]), ends_trace=fake.end,
                              handle=self.issued))
        return steps

    def release(self, handles: Sequence[int]) -> None:
        self.release_calls.append(list(handles))
        for handle in handles:
            assert handle in self.live, f"handle {handle} released twice or never issued"
            self.live.remove(handle)
            self.released_after[handle] = len(self.expand_calls)

    def assert_released_promptly(self) -> None:
        """Every handle was freed as soon as its node could not be expanded: an expanded
        node's after the expand call of its round returned, a terminal child's in the
        round that made it, and every other handle by the end of the search."""
        for round_number, call in enumerate(self.expand_calls, start=1):
            for request in call:
                if request.node.handle is not None:
                    assert self.released_after[request.node.handle] == round_number, (
                        f"{request.node.steps}, expanded in round {round_number}, was freed "
                        f"after round {self.released_after[request.node.handle]}")
        late = [h for h in self.terminal_handles if self.released_after[h] != self.issued_in[h]]
        assert not late, f"terminal handles {late} were not freed in the round that made them"
        assert set(self.released_after) == set(range(1, self.issued + 1))

    def generated_tokens(self, problem_index: int) -> int:
        return self._generated[problem_index]

    def prefilled_tokens(self, problem_index: int) -> int:
        return self._prefilled[problem_index]

    def reward_rule(self, problem_index: int, steps: tuple[str, ...]) -> float:
        """A ``RuleUtility`` rule: the reward written on the step's child entry."""
        listed = self.trees[problem_index][steps[:-1]]
        return next(fake.reward for fake in listed if fake.text == steps[-1])


class CacheFull(RuntimeError):
    """The decoder's error a room-limited expander's NoRoom carries."""


class RoomLimitedExpander(FakeExpander):
    """Holds at most ``room`` handles at once, counting a call's parents (released only
    after it returns), the roots it prefills and its new children: a call that would
    hold more raises NoRoom, caused by CacheFull, before it changes anything."""

    def __init__(self, trees, room: int):
        super().__init__(trees, prompt_tokens=7)
        self.room, self.refused = room, 0

    def expand(self, requests):
        new = sum(len(self.trees[r.problem_index][r.node.steps][:r.num_children]) if
                  r.temperature else r.num_children for r in requests)
        new += sum(r.node.handle is None for r in requests)  # a root's prefilled slot
        if len(self.live) + new > self.room:
            self.refused += 1
            try:
                raise CacheFull(f"{len(self.live)} held and {new} new: over {self.room}")
            except CacheFull as full:
                raise NoRoom(str(full)) from full
        return super().expand(requests)


def without_wall(results):
    """The results with their wall-clock zeroed: what a schedule must not change."""
    return [dataclasses.replace(r, counters=dataclasses.replace(r.counters, wall_s=0))
            for r in results]


class HiddenQ:
    """A ``QValueFunction`` reading Q̂ from the hidden vector, counting its calls."""

    def __init__(self):
        self.batches: list[int] = []

    def score(self, items: Sequence[QItem]) -> np.ndarray:
        self.batches.append(len(items))
        return np.array([item.hidden[0] for item in items])


class HiddenRewardPRM:
    """A ``ProcessRewardModel`` reading the reward from the hidden vector."""

    def score_steps(self, items: Sequence[QItem]) -> np.ndarray:
        return np.array([item.hidden[1] for item in items])


class ScriptedWriter:
    """A ``TextGenerator`` that answers each prompt from a script: prompt -> the
    completions, in sample order (a request takes the first ``num_samples``). Tokens
    are counted as words, so every count is written in the test."""

    def __init__(self, script: Mapping[str, Sequence[str]]):
        self.script = script
        self.requests: list[TextRequest] = []
        self._generated: collections.Counter[int] = collections.Counter()
        self._prefilled: collections.Counter[int] = collections.Counter()

    def generate(self, requests: Sequence[TextRequest]) -> list[list[Generation]]:
        self.requests += requests
        out = []
        for request in requests:
            texts = list(self.script[request.prompt][:request.num_samples])
            assert len(texts) == request.num_samples, f"script too short for {request.prompt!r}"
            self._prefilled[request.problem_index] += len(request.prompt.split())
            self._generated[request.problem_index] += sum(len(t.split()) for t in texts)
            out.append([Generation(text=t, generated_tokens=len(t.split())) for t in texts])
        return out

    def generated_tokens(self, problem_index: int) -> int:
        return self._generated[problem_index]

    def prefilled_tokens(self, problem_index: int) -> int:
        return self._prefilled[problem_index]
