"""Exhaustive Countdown solver, memoised over multisets of remaining numbers.

A state is the sorted tuple of the numbers left; which values a state can still finish
with does not depend on the target, so one ``CountdownSolver`` serves a whole problem
set and gets faster as it goes. A solution trace is the sequence of moves of one
finished, correct trace; with must_use_all off, a trace stops at the first step whose
result is the target, so traces that pass the target and go on are not counted. Two
moves differing only in the order of a commutative operation's operands are one move
(the larger operand is written first).
"""

from __future__ import annotations

import bisect
import dataclasses
import random
from typing import Iterator, Sequence

from qstar_jax.tasks.countdown.rules import (
    CountdownRules, Move, Number, StepError, apply_operation, take_operands)
from qstar_jax.tasks.countdown.steps import Step, format_step

State = tuple[Number, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SolveResult:
    """``traces``: every solution (or the first) as step lines in the exact format."""

    solvable: bool
    count: int
    traces: tuple[tuple[str, ...], ...]


class CountdownSolver:
    """Solves under one set of rules. Its memo only grows (about 70 MB after every
    default 4-number problem); make one per task, not one per problem."""

    def __init__(self, rules: CountdownRules):
        self.rules = rules
        self._moves: dict[State, tuple[tuple[Move, Number, State], ...]] = {}
        self._reachable: dict[State, frozenset[Number]] = {}
        self._counts: dict[tuple[State, Number], int] = {}

    def moves(self, remaining: Sequence[Number]) -> tuple[tuple[Move, Number, State], ...]:
        """Every legal move from a multiset, with its result and successor state, in a
        fixed order (so seeded sampling is reproducible)."""
        return self._moves_of(_state(remaining))

    def reachable(self, remaining: Sequence[Number]) -> frozenset[Number]:
        """The values one or more further steps can finish a trace with: the last number
        (must_use_all) or any step's result (must_use_all off)."""
        return self._reachable_of(_state(remaining))

    def solvable_from(self, remaining: Sequence[Number], target: Number) -> bool:
        """Whether one or more further legal steps from ``remaining`` can finish a correct
        trace. A finished state (one number left) has no step left, so it gives False:
        grade a finished trace instead."""
        return target in self._reachable_of(_state(remaining))

    def count_solutions(self, numbers: Sequence[Number], target: Number) -> int:
        return self._count_of(_state(numbers), target)

    def iter_solutions(self, numbers: Sequence[Number],
                       target: Number) -> Iterator[tuple[Move, ...]]:
        """Every solution trace as moves, lazily, in a fixed order."""
        for move, result, successor, _ in self._solution_moves(_state(numbers), target):
            if self._finishes(result, successor, target):
                yield (move,)
            else:
                for rest in self.iter_solutions(successor, target):
                    yield (move, *rest)

    def sample_solution(self, numbers: Sequence[Number], target: Number,
                        rng: random.Random) -> tuple[Move, ...]:
        """A solution trace drawn uniformly from all of them (ValueError if none)."""
        state, moves = _state(numbers), []
        while True:
            options = list(self._solution_moves(state, target))
            if not options:
                raise ValueError(f"Countdown: {list(numbers)} -> {target} has no solution; "
                                 "check solvable_from before sampling")
            pick = rng.randrange(sum(n for *_, n in options))
            for move, result, successor, n in options:
                if pick < n:
                    break
                pick -= n
            moves.append(move)
            if self._finishes(result, successor, target):
                return tuple(moves)
            state = successor

    def _moves_of(self, state: State) -> tuple[tuple[Move, Number, State], ...]:
        moves = self._moves.get(state)
        if moves is None:
            moves = self._moves[state] = tuple(self._find_moves(state))
        return moves

    def _find_moves(self, state: State) -> Iterator[tuple[Move, Number, State]]:
        pairs_done = set()
        for i, small in enumerate(state):
            for j in range(i + 1, len(state)):
                large = state[j]
                if (small, large) in pairs_done:
                    continue
                pairs_done.add((small, large))
                rest = list(state[:i] + state[i + 1:j] + state[j + 1:])
                candidates = [(large, "+", small), (large, "-", small), (large, "*", small),
                              (large, "/", small)]
                if small != large:
                    candidates += [(small, "-", large), (small, "/", large)]
                for move in candidates:
                    result = apply_operation(*move, self.rules)
                    if isinstance(result, StepError):
                        continue
                    successor = rest.copy()
                    bisect.insort(successor, result)
                    yield move, result, tuple(successor)

    def _reachable_of(self, state: State) -> frozenset[Number]:
        values = self._reachable.get(state)
        if values is None:
            found = set()
            for _, result, successor in self._moves_of(state):
                if self.rules.must_use_all and len(successor) == 1:
                    found.add(result)
                    continue
                if not self.rules.must_use_all:
                    found.add(result)
                found |= self._reachable_of(successor)
            values = self._reachable[state] = frozenset(found)
        return values

    def _count_of(self, state: State, target: Number) -> int:
        count = self._counts.get((state, target))
        if count is None:
            count = self._counts[state, target] = sum(
                n for *_, n in self._solution_moves(state, target))
        return count

    def _finishes(self, result: Number, successor: State, target: Number) -> bool:
        return result == target and (len(successor) == 1 or not self.rules.must_use_all)

    def _solution_moves(self, state: State,
                        target: Number) -> Iterator[tuple[Move, Number, State, int]]:
        """The moves from ``state`` that start a solution, each with its number of
        solution traces (1 for a move that finishes)."""
        for move, result, successor in self._moves_of(state):
            if self._finishes(result, successor, target):
                yield move, result, successor, 1
            elif target in self._reachable_of(successor):
                yield move, result, successor, self._count_of(successor, target)

    def trace_lines(self, numbers: Sequence[Number], moves: Sequence[Move]) -> list[str]:
        """Step lines playing ``moves`` from ``numbers`` in their written order: each
        ``left:`` list keeps the order of the numbers not used and appends the result.
        The last line carries ``done`` when must_use_all is off (solution traces)."""
        remaining, lines = list(numbers), []
        for index, (left, op, right) in enumerate(moves):
            result = apply_operation(left, op, right, self.rules)
            rest = take_operands(remaining, left, right)
            if rest is None:
                raise ValueError(f"Countdown: move {left} {op} {right} uses a number not "
                                 f"among {remaining}")
            if isinstance(result, StepError):
                raise ValueError(f"Countdown: move {left} {op} {right} is illegal: "
                                 f"{result.value}")
            remaining = rest + [result]
            done = not self.rules.must_use_all and index == len(moves) - 1
            lines.append(format_step(Step(left=left, op=op, right=right, result=result,
                                          remaining=tuple(remaining), done=done)))
        return lines

    def solve(self, numbers: Sequence[Number], target: Number, *,
              all_traces: bool = False) -> SolveResult:
        """Solvable or not, how many solution traces, and the first (or every) trace as
        step lines."""
        count = self.count_solutions(numbers, target)
        solutions = self.iter_solutions(numbers, target)
        chosen = list(solutions) if all_traces else [next(solutions)] if count else []
        return SolveResult(solvable=count > 0, count=count,
                           traces=tuple(tuple(self.trace_lines(numbers, moves))
                                        for moves in chosen))


def _state(numbers: Sequence[Number]) -> State:
    return tuple(sorted(numbers))


def solve(numbers: Sequence[Number], target: Number, *,
          rules: CountdownRules = CountdownRules(), all_traces: bool = False) -> SolveResult:
    """One-off solve with a fresh solver; reuse a ``CountdownSolver`` for many problems."""
    return CountdownSolver(rules).solve(numbers, target, all_traces=all_traces)
