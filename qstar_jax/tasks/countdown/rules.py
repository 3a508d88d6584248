"""The rules of Countdown: which operations exist and which results are legal.

Every number is an ``int`` or, where fractions are allowed, a ``Fraction`` with a
denominator above 1 (``exact`` turns whole fractions back into ints, so equal values
always compare and hash the same). The solver and the grader both play through
``apply_operation``, so they cannot disagree about what is legal.
"""

from __future__ import annotations

import dataclasses
import enum
from fractions import Fraction
from typing import Sequence

Number = int | Fraction
Move = tuple[Number, str, Number]  # (left operand, operator, right operand)

OPERATIONS = ("+", "-", "*", "/")


class StepError(enum.Enum):
    """Why a step is illegal; the value is a sentence for logs and reports."""

    MALFORMED = "the line does not follow the step grammar"
    AFTER_END = "the trace had already ended"
    DONE_NOT_ALLOWED = "'done' is only written when must_use_all is off"
    OPERATION_NOT_ALLOWED = "the operation is not enabled for this task"
    MISSING_OPERAND = "an operand is not among the numbers left"
    DIVISION_BY_ZERO = "division by zero"
    NOT_AN_INTEGER = "the division is not exact and fractions are off"
    NEGATIVE_RESULT = "the result is negative and negatives are off"
    WRONG_ARITHMETIC = "the written result is not the true result"
    WRONG_LEFT_LIST = "the 'left:' list is not the numbers truly left"
    FALSE_DONE = "'done' is written but the result is not the target"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CountdownRules:
    """The game being played.

    must_use_all: a trace ends when one number is left, correct iff it is the target
        (every trace of n numbers has n-1 steps; Game of 24's rule). Off: the trace may
        end on any step whose result is the target, marked by a trailing `` done``.
    allow_fractions: off, a division must be exact so every value is an integer; on,
        values are exact rationals written like ``8/3``.
    allow_negatives: off (the classic game), a subtraction may not go below zero, which
        keeps values and vocabulary small; on, values like ``-3`` are legal.
    """

    operations: tuple[str, ...] = OPERATIONS
    must_use_all: bool = True
    allow_fractions: bool = False
    allow_negatives: bool = False

    def __post_init__(self):
        operations = tuple(self.operations)
        unknown = [op for op in operations if op not in OPERATIONS]
        if not operations or unknown or len(set(operations)) != len(operations):
            raise ValueError(
                f"CountdownRules.operations={self.operations!r}: give distinct operators "
                f"from {OPERATIONS}, at least one")
        object.__setattr__(self, "operations", operations)


def exact(value: Fraction) -> Number:
    """The canonical form of a value: an int when it is whole."""
    return value.numerator if value.denominator == 1 else value


def apply_operation(left: Number, op: str, right: Number,
                    rules: CountdownRules) -> Number | StepError:
    """The exact result of ``left op right``, or the rule it breaks."""
    if op not in rules.operations:
        return StepError.OPERATION_NOT_ALLOWED
    if op == "+":
        result = left + right
    elif op == "-":
        result = left - right
    elif op == "*":
        result = left * right
    elif right == 0:
        return StepError.DIVISION_BY_ZERO
    elif isinstance(left, int) and isinstance(right, int) and left % right == 0:
        result = left // right
    elif not rules.allow_fractions:
        return StepError.NOT_AN_INTEGER
    else:
        result = Fraction(left) / right
    if isinstance(result, Fraction):
        result = exact(result)
    if result < 0 and not rules.allow_negatives:
        return StepError.NEGATIVE_RESULT
    return result


def take_operands(remaining: Sequence[Number], left: Number,
                  right: Number) -> list[Number] | None:
    """``remaining`` without one occurrence each of the operands (the first ones, order
    kept), or None when an operand is not there."""
    rest = list(remaining)
    for operand in (left, right):
        try:
            rest.remove(operand)
        except ValueError:
            return None
    return rest
