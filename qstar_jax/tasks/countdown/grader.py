"""Exact grading of Countdown traces, step by step.

Every line is checked against the true state: the operands must be among the numbers
left, the arithmetic exact and legal under the rules, and the ``left:`` list the true
remaining multiset (in any order; the next step plays from the order written). A trace
is correct when every step is legal and the last one finishes: one number left equal
to the target (must_use_all), or a result equal to the target (must_use_all off).
Nothing here raises on model text.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from qstar_jax.tasks.base import last_line
from qstar_jax.tasks.countdown.rules import (
    CountdownRules, Number, StepError, apply_operation, take_operands)
from qstar_jax.tasks.countdown.solver import CountdownSolver
from qstar_jax.tasks.countdown.steps import Step, parse_step


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepCheck:
    """The verdict on one line: ``error`` is None when it is legal; ``step`` is the
    parsed step, None when the line is malformed."""

    error: StepError | None
    step: Step | None

    @property
    def legal(self) -> bool:
        return self.error is None


def is_final(step: Step) -> bool:
    """Whether a step ends its trace: it leaves one number or says ``done``."""
    return len(step.remaining) == 1 or step.done


def check_step(remaining: Sequence[Number], target: Number, line: str,
               rules: CountdownRules) -> StepCheck:
    """Check one line played from the numbers ``remaining``."""
    step = parse_step(line)
    if step is None:
        return StepCheck(error=StepError.MALFORMED, step=None)
    if step.done and rules.must_use_all:
        error = StepError.DONE_NOT_ALLOWED
    elif (rest := take_operands(remaining, step.left, step.right)) is None:
        error = StepError.MISSING_OPERAND
    elif isinstance(result := apply_operation(step.left, step.op, step.right, rules),
                    StepError):
        error = result
    elif result != step.result:
        error = StepError.WRONG_ARITHMETIC
    elif sorted(rest + [result]) != sorted(step.remaining):
        error = StepError.WRONG_LEFT_LIST
    elif step.done and result != target:
        error = StepError.FALSE_DONE
    else:
        error = None
    return StepCheck(error=error, step=step)


def check_trace(numbers: Sequence[int], target: int, steps: Sequence[str],
                rules: CountdownRules) -> list[StepCheck]:
    """One verdict per step, read from its last line (blank lines before it joined the
    step: ``decoding.line_tables``). Once a step is illegal the state is unknown, so every
    later step gets that same error; a step after the trace ended gets AFTER_END."""
    checks, remaining, ended = [], tuple(numbers), False
    for line in map(last_line, steps):
        if checks and not checks[-1].legal:
            checks.append(StepCheck(error=checks[-1].error, step=parse_step(line)))
        elif ended:
            checks.append(StepCheck(error=StepError.AFTER_END, step=parse_step(line)))
        else:
            check = check_step(remaining, target, line, rules)
            checks.append(check)
            if check.legal:
                remaining, ended = check.step.remaining, is_final(check.step)
    return checks


def step_legality(numbers: Sequence[int], target: int, steps: Sequence[str],
                  rules: CountdownRules) -> list[bool]:
    """Per-step legality of a (possibly partial) trace: a rule-based process utility."""
    return [check.legal for check in check_trace(numbers, target, steps, rules)]


def step_reward(numbers: Sequence[int], target: int, steps: Sequence[str],
                rules: CountdownRules) -> float:
    """The game's rule as the process reward of the last of ``steps``: −1 when it is
    illegal or ends the game off the target, +1 when it ends the game on the target
    (the question states the target, so this needs no answer key), else 0."""
    last = check_trace(numbers, target, steps, rules)[-1]
    if not last.legal:
        return -1.0
    if not is_final(last.step):
        return 0.0
    return 1.0 if _finishes_correctly(last.step, target, rules) else -1.0


def grade_trace(numbers: Sequence[int], target: int, steps: Sequence[str],
                rules: CountdownRules) -> bool:
    checks = check_trace(numbers, target, steps, rules)
    return bool(checks) and all(check.legal for check in checks) and _finishes_correctly(
        checks[-1].step, target, rules)


def can_still_succeed(numbers: Sequence[int], target: int, steps: Sequence[str],
                      solver: CountdownSolver) -> bool:
    """The oracle for a partial trace: correct already, or every step legal so far and
    some legal continuation still finishes correctly."""
    checks = check_trace(numbers, target, steps, solver.rules)
    if not all(check.legal for check in checks):
        return False
    if not checks:
        return solver.solvable_from(numbers, target)
    last = checks[-1].step
    if _finishes_correctly(last, target, solver.rules):
        return True
    return not is_final(last) and solver.solvable_from(last.remaining, target)


def _finishes_correctly(step: Step, target: Number, rules: CountdownRules) -> bool:
    if rules.must_use_all:
        return step.remaining == (target,)
    return step.result == target
