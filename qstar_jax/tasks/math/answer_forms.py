"""Answer forms that say what a structure says: ``a \\pm b`` is the two values ``a + b``
and ``a - b``; an inequality in one variable is an interval (``x \\geq 2`` is
``[2, \\infty)``, ``1 < x \\leq 3`` is ``(1, 3]``); a value given a name
(``x = 3``, ``AB = 5``, ``f^{-1}(x) = \\frac{x-1}{2}``, ``(x,y) = (3,4)``,
``x \\in [1,2)``) is the value under that name.

Both read normalised answers (``latex_normalize.normalize_latex``) and return normalised
answers, so the grader compares what they give with its usual stages.
"""

from __future__ import annotations

import dataclasses
import re

from qstar_jax.tasks.math.latex_normalize import normalize_latex

# More than this many \pm signs (2**n values) is not an answer.
MAX_PLUS_MINUS = 3

_PLUS_MINUS = re.compile(r"\\pm(?![A-Za-z])")
_NAME = r"[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?"
# normalize_latex keeps one space after a command before a letter: "2\\leq x".
_LESS = r"(?:<|\\leq(?![A-Za-z])) ?"
_GREATER = r"(?:>|\\geq(?![A-Za-z])) ?"
_BOUND = r"(?:(?!\\[lg]eq(?![A-Za-z]))[^<>=])+"
_ONE_SIDED = (
    re.compile(rf"(?P<name>{_NAME})(?P<op>{_LESS}|{_GREATER})(?P<bound>{_BOUND})"),
    re.compile(rf"(?P<bound>{_BOUND})(?P<op>{_LESS}|{_GREATER})(?P<name>{_NAME})"),
)
# A name: one or two letters or a command (``x``, ``AB``, ``\\theta``) with an optional
# subscript and primes; a function of letters (``f(x)``, ``f^{-1}(x)``, ``g'(t)``); or a
# tuple of names (``(x,y)``). Qwen2.5-Math's grader strips a left side of up to two
# characters; a longer name, or a left side that is an expression, is an equation.
_SCRIPT = r"(?:_\{?[A-Za-z0-9]+\}?)?"
_VARIABLE = rf"(?:[A-Za-z]{{1,2}}|\\[A-Za-z]+){_SCRIPT}(?:'+|\^\{{?\\prime\}}?)?"
_FUNCTION = rf"[A-Za-z]{_SCRIPT}(?:'+|\^\{{?-1\}}?)?\([A-Za-z](?:,[A-Za-z])*\)"
_ASSIGNMENT = re.compile(rf"(?P<name>{_FUNCTION}|\({_VARIABLE}(?:,{_VARIABLE})+\)|{_VARIABLE})"
                         r"(?:=|\\in(?![A-Za-z]))(?P<value>[^=]+)")
_BETWEEN = re.compile(rf"(?P<low>{_BOUND})(?P<low_op>{_LESS})(?P<name>{_NAME})"
                      rf"(?P<high_op>{_LESS})(?P<high>{_BOUND})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class NamedValue:
    """``name`` (normalised, e.g. ``x`` or ``f(x)``) stands for ``value``."""

    name: str
    value: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class NamedInterval:
    """``name`` lies in ``interval`` (a normalised interval such as ``[2,\\infty)``)."""

    name: str
    interval: str


def named_value(text: str) -> NamedValue | None:
    """The name and value of ``x = 3``, ``x \\in [1,2)`` or an inequality (its interval),
    or None for any other text."""
    assignment = _ASSIGNMENT.fullmatch(text)
    if assignment is not None:
        return NamedValue(name=assignment["name"], value=assignment["value"])
    inequality = inequality_interval(text)
    return None if inequality is None else NamedValue(name=inequality.name,
                                                      value=inequality.interval)


def plus_minus_values(text: str) -> tuple[str, ...] | None:
    """The values ``text`` stands for when it holds ``\\pm`` (each sign taken both ways,
    normalised), or None when it holds none or more than ``MAX_PLUS_MINUS``."""
    pieces = _PLUS_MINUS.split(text)
    if not 1 < len(pieces) <= MAX_PLUS_MINUS + 1:
        return None
    values = [pieces[0]]
    for piece in pieces[1:]:
        values = [value + sign + piece for value in values for sign in "+-"]
    normalised = tuple(normalize_latex(value) for value in values)
    return None if None in normalised else normalised


def inequality_interval(text: str) -> NamedInterval | None:
    """The interval an inequality in one variable says its variable lies in, or None for
    any other text. Bounds are kept as written; ``\\leq`` and ``\\geq`` close the end."""
    between = _BETWEEN.fullmatch(text)
    if between is not None:
        opening = "(" if between["low_op"].strip() == "<" else "["
        closing = ")" if between["high_op"].strip() == "<" else "]"
        return NamedInterval(name=between["name"],
                             interval=f"{opening}{between['low']},{between['high']}{closing}")
    for number, pattern in enumerate(_ONE_SIDED):
        match = pattern.fullmatch(text)
        if match is None:
            continue
        # "x > 2" and "2 < x" both bound x from below.
        operator = match["op"].strip()
        below = (operator in (">", "\\geq")) == (number == 0)
        closed = operator not in ("<", ">")
        if below:
            interval = f"{'[' if closed else '('}{match['bound']},\\infty)"
        else:
            interval = f"(-\\infty,{match['bound']}{']' if closed else ')'}"
        return NamedInterval(name=match["name"], interval=interval)
    return None
