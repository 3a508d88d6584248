"""``CountdownTask``: the Countdown game behind the ``Task`` protocol.

Problems are generated, not read: ``load`` is a pure function of the config, the split
and the seed. The prompt is the bare question line (``Use 2 3 5 8 to make 24.``) and a
newline, compact so a tiny policy trained from scratch on it needs only
``COUNTDOWN_ALPHABET``.
"""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

from qstar_jax.tasks.base import STEP_SEPARATOR, ChatFormatter, Problem, split_steps
from qstar_jax.tasks.countdown.grader import (
    StepCheck, can_still_succeed, check_trace, grade_trace, is_final, step_legality,
    step_reward)
from qstar_jax.tasks.countdown.problems import (
    CountdownConfig, canonical_key, from_fields, generate_problems)
from qstar_jax.tasks.countdown.solver import CountdownSolver
from qstar_jax.tasks.countdown.steps import (COUNTDOWN_ALPHABET, format_number, format_question,
                                            parse_step)
from qstar_jax.values import is_integer


class CountdownTask:
    name = "countdown"
    alphabet = COUNTDOWN_ALPHABET  # a from-scratch policy's char-level vocabulary

    def __init__(self, config: CountdownConfig | Mapping[str, Any] | None = None):
        """``config`` may be a mapping of CountdownConfig's fields (from YAML), its
        ``rules`` a mapping of CountdownRules' fields."""
        self.config = CountdownConfig() if config is None else from_fields(CountdownConfig,
                                                                           config)
        # Memoised over states for every problem this task generates or grades.
        self.solver = CountdownSolver(self.config.rules)

    def problem(self, numbers: Sequence[int], target: int) -> Problem:
        """A problem from given numbers and target (solvable or not), as ``load`` makes."""
        if not numbers or not all(is_integer(n) and n > 0 for n in numbers) \
                or not is_integer(target):
            raise ValueError(f"Countdown problem {list(numbers)} -> {target!r}: give "
                             "positive integer numbers and an integer target")
        numbers = tuple(sorted(numbers))
        return Problem(id=f"countdown/{canonical_key(numbers, target)}",
                       question=format_question(numbers, target),
                       reference=format_number(target),
                       metadata={"numbers": numbers, "target": target})

    def load(self, split: str, *, limit: int | None = None, seed: int = 0,
             skip_malformed: bool = False) -> list[Problem]:
        """``limit`` (default: the config's size for the split) distinct solvable
        problems of the split, a fixed sequence per seed; generated problems are never
        malformed, so ``skip_malformed`` changes nothing."""
        count = self.config.split_size(split) if limit is None else limit
        if count < 0:
            raise ValueError(f"CountdownTask.load: limit={limit} must be >= 0")
        return [self.problem(numbers, target) for numbers, target in generate_problems(
            self.config, split, count, seed=seed, solver=self.solver)]

    def prompt(self, problem: Problem, chat: ChatFormatter | None = None) -> str:
        if chat is None:
            return problem.question + STEP_SEPARATOR
        return chat([{"role": "user", "content": problem.question}])

    def is_terminal_step(self, step: str) -> bool:
        """True for a well-formed step that leaves one number or says ``done``; the step
        may keep its trailing newline."""
        parsed = parse_step(step.removesuffix(STEP_SEPARATOR))
        return parsed is not None and is_final(parsed)

    def extract_answer(self, completion: str) -> str | None:
        """The result of the last step when that step ends the trace, else None."""
        steps = split_steps(completion)
        last = parse_step(steps[-1]) if steps else None
        return format_number(last.result) if last is not None and is_final(last) else None

    def grade(self, problem: Problem, completion: str) -> bool:
        numbers, target = _numbers_and_target(problem)
        return grade_trace(numbers, target, split_steps(completion), self.config.rules)

    def check_steps(self, problem: Problem, steps: Sequence[str]) -> list[StepCheck]:
        """Each step's verdict with the reason it is illegal, for reports and tests."""
        numbers, target = _numbers_and_target(problem)
        return check_trace(numbers, target, steps, self.config.rules)

    def step_legality(self, problem: Problem, steps: Sequence[str]) -> list[bool]:
        """Per-step legality of a partial trace (a rule-based process utility)."""
        numbers, target = _numbers_and_target(problem)
        return step_legality(numbers, target, steps, self.config.rules)

    def step_reward(self, problem: Problem, steps: Sequence[str]) -> float:
        """The rule's process reward of the last step: −1 illegal or off the target at the
        end, +1 ends on the target, else 0."""
        numbers, target = _numbers_and_target(problem)
        return step_reward(numbers, target, steps, self.config.rules)

    def can_still_succeed(self, problem: Problem, steps: Sequence[str]) -> bool:
        """Exact oracle: is this partial trace correct, or still completable?"""
        numbers, target = _numbers_and_target(problem)
        return can_still_succeed(numbers, target, steps, self.solver)

    def solution_steps(self, problem: Problem, rng: random.Random) -> list[str]:
        """One solution trace, drawn uniformly from all of them, as step lines (for
        supervised training of the policy)."""
        numbers, target = _numbers_and_target(problem)
        return self.solver.trace_lines(numbers,
                                       self.solver.sample_solution(numbers, target, rng))


def _numbers_and_target(problem: Problem) -> tuple[tuple[int, ...], int]:
    try:
        return tuple(problem.metadata["numbers"]), problem.metadata["target"]
    except KeyError as missing:
        raise ValueError(f"Problem {problem.id!r} has no Countdown {missing} in its "
                         "metadata; make problems with CountdownTask.load or "
                         "CountdownTask.problem") from None
