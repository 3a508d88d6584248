"""The Countdown text format: the question, one step line, and the symbols they use.

A prompt is the question and a newline, then one step per line::

    Use 2 3 5 8 to make 24.
    8 - 5 = 3 (left: 2 3 3)
    3 * 3 = 9 (left: 2 9)
    ...

A step is ``A op B = R (left: N N ...)``, single spaces exactly as shown, with a
trailing `` done`` on the step that reaches the target when must_use_all is off.
Numbers are canonical: no leading zeros or ``+``, ``-0`` never, fractions reduced with a
denominator above 1 (``8/3``, ``-8/3``). The parser is strict (any other spelling is not
a step) and returns None rather than raising, whatever the text.
"""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction
from typing import Sequence

from qstar_jax.tasks.countdown.rules import Number, exact

# Keeps every number far below Python's int-parsing digit limit, so no model text can
# make the parser raise or stall; configs are checked against it (problems.py).
MAX_DIGITS = 30

QUESTION_TEMPLATE = "Use {numbers} to make {target}."
LEFT_OPEN = "(left: "
DONE_MARK = " done"

# Every character a prompt or a trace can contain, for building a char-level tokenizer.
COUNTDOWN_ALPHABET = "".join(sorted(
    set(QUESTION_TEMPLATE.format(numbers="", target="") + LEFT_OPEN + DONE_MARK)
    | set("0123456789+-*/=()\n")))

_NUMBER = rf"-?[0-9]{{1,{MAX_DIGITS}}}(?:/[0-9]{{1,{MAX_DIGITS}}})?"
_STEP = re.compile(
    rf"({_NUMBER}) ([-+*/]) ({_NUMBER}) = ({_NUMBER}) "
    rf"{re.escape(LEFT_OPEN)}({_NUMBER}(?: {_NUMBER})*)\)({re.escape(DONE_MARK)})?")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Step:
    """One step as written: ``left op right = result (left: remaining)`` [done]."""

    left: Number
    op: str
    right: Number
    result: Number
    remaining: tuple[Number, ...]
    done: bool = False


def format_number(value: Number) -> str:
    if isinstance(value, Fraction):
        value = exact(value)
        if isinstance(value, Fraction):
            return f"{value.numerator}/{value.denominator}"
    return str(value)


def parse_number(text: str) -> Number | None:
    """The value of a canonically written number, else None."""
    if re.fullmatch(_NUMBER, text) is None:
        return None
    numerator, _, denominator = text.partition("/")
    if denominator and int(denominator) == 0:
        return None
    value = exact(Fraction(int(numerator), int(denominator or 1)))
    return value if format_number(value) == text else None


def format_numbers(values: Sequence[Number]) -> str:
    return " ".join(format_number(value) for value in values)


def format_step(step: Step) -> str:
    return (f"{format_number(step.left)} {step.op} {format_number(step.right)} = "
            f"{format_number(step.result)} {LEFT_OPEN}{format_numbers(step.remaining)})"
            + (DONE_MARK if step.done else ""))


def parse_step(line: str) -> Step | None:
    """The step a line spells, or None when it is not exactly in the step grammar.
    Says nothing about legality (see grader.py)."""
    match = _STEP.fullmatch(line)
    if match is None:
        return None
    left, op, right, result, remaining, done = match.groups()
    values = [parse_number(text) for text in (left, right, result, *remaining.split(" "))]
    if any(value is None for value in values):
        return None
    return Step(left=values[0], op=op, right=values[1], result=values[2],
                remaining=tuple(values[3:]), done=done is not None)


def format_question(numbers: Sequence[int], target: int) -> str:
    return QUESTION_TEMPLATE.format(numbers=format_numbers(numbers),
                                    target=format_number(target))
