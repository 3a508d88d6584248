"""The parent's reading of the values a sandboxed check sent back.

Each value is a literal written by ``sandbox_literals`` in the child, which the program
could have forged, so it is read as data only: Python literals of builtin scalars and
containers, plus ``frozenset({...})``, ``Fraction(n, d)`` and ``nan``, built here from
their parts; nothing is evaluated. A value the child could not produce (an expression
that raised where Python might not have evaluated it) arrives as its error and is
``Unavailable``: the condition fails with that error only if it needs the value.
"""

from __future__ import annotations

import ast
import dataclasses
import fractions
from typing import Any

SHOWN_VALUE_CHARS = 300
_DEPTH_LIMIT = 100
_SCALARS = (type(None), bool, int, float, complex, str, bytes)


class NotPlain(Exception):
    """A child value that is not a literal of plain data."""


@dataclasses.dataclass(frozen=True)
class Unavailable:
    """A lazy expression's value that the child could not produce, and why."""

    reason: str


def read_value(sent: object, source: str) -> Any:
    """The value the child sent for expression ``source``: data, or Unavailable."""
    if isinstance(sent, dict):
        return Unavailable(str(sent.get("error")))
    try:
        return read_plain(sent, source)
    except NotPlain as reason:
        return Unavailable(str(reason))


def read_plain(text: object, source: str) -> Any:
    """A child's literal back as data, refusing anything but plain data."""
    try:
        if not isinstance(text, str):
            raise ValueError("not text")
        return _built(ast.parse(text, mode="eval").body, 0)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        shown = text[:SHOWN_VALUE_CHARS] if isinstance(text, str) else text
        raise NotPlain(f"{source} returned something that is not a plain literal: "
                       f"{shown!r}") from None


def _built(node: ast.expr, depth: int) -> Any:
    if depth > _DEPTH_LIMIT:
        raise ValueError("nested too deep")
    if isinstance(node, (ast.Constant, ast.UnaryOp, ast.BinOp)):
        value = ast.literal_eval(node)  # numbers, signed numbers and complex, strings
        if type(value) not in _SCALARS:
            raise ValueError("not a scalar")
        return value
    if isinstance(node, ast.Name) and node.id == "nan":
        return float("nan")
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_built(element, depth + 1) for element in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict):
        if None in node.keys:
            raise ValueError("** in a dict")
        return {_built(key, depth + 1): _built(value, depth + 1)
                for key, value in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        arguments = [_built(argument, depth + 1) for argument in node.args]
        if node.func.id in ("set", "frozenset") and not arguments:
            return {"set": set, "frozenset": frozenset}[node.func.id]()
        if node.func.id == "frozenset" and len(arguments) == 1 and type(arguments[0]) is set:
            return frozenset(arguments[0])
        if (node.func.id == "Fraction" and len(arguments) == 2
                and all(type(part) is int for part in arguments) and arguments[1] > 0):
            return fractions.Fraction(*arguments)
    raise ValueError(f"{type(node).__name__} is not plain data")


def shown(source: str, value: Any) -> str:
    """One line of a failure message: what ``source`` gave."""
    failed = isinstance(value, Unavailable)
    text = value.reason if failed else repr(value)
    if len(text) > SHOWN_VALUE_CHARS:
        text = text[:SHOWN_VALUE_CHARS] + "..."
    return f"  {source} failed: {text}" if failed else f"  {source} returned {text}"
