"""The arithmetic-chain text format: the question, one computation per line, the answer.

A prompt is the question and a newline, then one step per line, GSM8K's way::

    Left to right: 12 + 7 * 3 - 15
    12 + 7 = 19
    19 * 3 = 57
    57 - 15 = 42
    #### 42

Numbers are non-negative integers without leading zeros or signs. The parsers are
strict (any other spelling is not a step) and return None rather than raising,
whatever the text.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

QUESTION_PREFIX = "Left to right: "
ANSWER_MARK = "#### "
OPERATORS = ("+", "-", "*")
# Far below Python's int-parsing digit limit, so no model text can make a parser stall.
MAX_DIGITS = 12

# Every character a prompt or a trace can contain, for a char-level tokenizer.
ARITHMETIC_ALPHABET = "".join(sorted(set(QUESTION_PREFIX + ANSWER_MARK + "0123456789+-*= \n")))

_NUMBER = rf"(0|[1-9][0-9]{{0,{MAX_DIGITS - 1}}})"
_STEP = re.compile(rf"{_NUMBER} ([+*-]) {_NUMBER} = {_NUMBER}")
_ANSWER = re.compile(rf"#### {_NUMBER}")


@dataclasses.dataclass(frozen=True)
class Operation:
    op: str  # one of OPERATORS
    operand: int

    def apply(self, value: int) -> int:
        if self.op == "+":
            return value + self.operand
        if self.op == "-":
            return value - self.operand
        return value * self.operand


@dataclasses.dataclass(frozen=True)
class Step:
    left: int
    op: str
    right: int
    result: int


def format_question(start: int, operations: Sequence[Operation]) -> str:
    return QUESTION_PREFIX + " ".join([str(start)] + [f"{o.op} {o.operand}" for o in operations])


def format_step(left: int, operation: Operation) -> str:
    return f"{left} {operation.op} {operation.operand} = {operation.apply(left)}"


def format_answer(value: int) -> str:
    return f"{ANSWER_MARK}{value}"


def parse_step(line: str) -> Step | None:
    """A computation line as written (its arithmetic unchecked), or None."""
    match = _STEP.fullmatch(line)
    if match is None:
        return None
    left, op, right, result = match.groups()
    return Step(int(left), op, int(right), int(result))


def parse_answer(line: str) -> int | None:
    """The number of a ``#### N`` line, or None."""
    match = _ANSWER.fullmatch(line)
    return None if match is None else int(match.group(1))
