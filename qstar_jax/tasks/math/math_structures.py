"""Composite MATH answers: tuples and intervals, sets and lists, unions, matrices.

``parse_structure`` reads a normalised answer (``latex_normalize.normalize_latex``) into
an ``AnswerStructure`` whose items are themselves normalised answers, so the grader can
compare them item by item with the same rules. Bracket types are kept: ``(1,2)``,
``[1,2]``, ``(1,2]`` and ``[1,2)`` are four different answers.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import re
from typing import Callable, Sequence

from qstar_jax.tasks.math.latex_normalize import matching_close

# Answers with more parts than this are not MATH answers; refusing them bounds the
# pairwise comparisons of unordered collections.
MAX_ITEMS = 64

_MATRIX = re.compile(r"\\begin\{(?P<env>[pbB]?matrix)\}(?P<body>.*)\\end\{(?P=env)\}", re.DOTALL)
_OPENERS, _CLOSERS = "([{", ")]}"


class StructureKind(enum.Enum):
    ORDERED = "ordered"      # a tuple, point, interval or \langle vector\rangle
    UNORDERED = "unordered"  # a set \{...\}, a bare list "1,2", a union of intervals
    MATRIX = "matrix"        # rows of entries; pmatrix, bmatrix, Bmatrix and matrix alike


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnswerStructure:
    """``items`` are normalised answers; for a matrix, ``rows`` holds them row by row.
    ``brackets`` is the opening and closing bracket of an ordered answer, e.g. ``"(]"``."""

    kind: StructureKind
    items: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    brackets: str = ""


class TooManyItemsError(ValueError):
    """The answer has more than ``MAX_ITEMS`` parts."""


def parse_structure(text: str) -> AnswerStructure | None:
    """The structure of a normalised answer, or None for a single expression.

    Raises:
        TooManyItemsError: more than ``MAX_ITEMS`` parts.
    """
    matrix = _MATRIX.fullmatch(text)
    if matrix is not None:
        rows = [row for row in split_top_level(matrix["body"], "\\\\") if row]
        return AnswerStructure(kind=StructureKind.MATRIX, rows=tuple(
            tuple(split_top_level(row, "&")) for row in rows))
    union = split_top_level(text, "\\cup")
    if len(union) > 1:
        return AnswerStructure(kind=StructureKind.UNORDERED, items=tuple(union))
    if text.startswith("\\{") and text.endswith("\\}") and _closes_at_end(text, 1):
        return AnswerStructure(kind=StructureKind.UNORDERED,
                               items=tuple(split_top_level(text[2:-2], ",")))
    if text.startswith("\\langle") and text.endswith("\\rangle"):
        items = split_top_level(text[len("\\langle"):-len("\\rangle")], ",")
        return AnswerStructure(kind=StructureKind.ORDERED, items=tuple(items), brackets="<>")
    if text[:1] in "([" and text[-1:] in ")]" and _closes_at_end(text, 0):
        items = split_top_level(text[1:-1], ",")
        if len(items) > 1:
            return AnswerStructure(kind=StructureKind.ORDERED, items=tuple(items),
                                   brackets=text[0] + text[-1])
        return None
    items = split_top_level(text, ",")
    if len(items) > 1:
        return AnswerStructure(kind=StructureKind.UNORDERED, items=tuple(items))
    return None


def split_top_level(text: str, separator: str) -> list[str]:
    """``text`` split at each ``separator`` outside brackets; ``"(1,2),3"`` at ``","``
    gives ``["(1,2)", "3"]``.

    Raises:
        TooManyItemsError: more than ``MAX_ITEMS`` parts.
    """
    parts, depth, start, index = [], 0, 0, 0
    while index < len(text):
        char = text[index]
        if char in _OPENERS:
            depth += 1
        elif char in _CLOSERS:
            depth -= 1
        elif depth == 0 and text.startswith(separator, index):
            parts.append(text[start:index])
            if len(parts) >= MAX_ITEMS:
                raise TooManyItemsError(f"an answer has more than {MAX_ITEMS} parts")
            index += len(separator)
            start = index
            continue
        index += 1
    parts.append(text[start:])
    return parts


def same_multiset(pred: Sequence[str], ref: Sequence[str],
                  equal: Callable[[str, str], bool]) -> bool:
    """Whether the items of ``pred`` and ``ref`` pair off one to one, each pair ``equal``:
    ``1,1,2`` is not ``1,2,2``. ``equal`` is asked once per pair of distinct strings
    (at most ``MAX_ITEMS`` squared), a maximum matching (augmenting paths) does the rest."""
    if len(pred) != len(ref):
        return False
    if collections.Counter(pred) == collections.Counter(ref):
        return True
    items_equal = functools.cache(equal)
    owner: list[int | None] = [None] * len(ref)  # the pred item each ref item is paired with

    def pair(i: int, tried: set[int]) -> bool:
        for j in range(len(ref)):
            if j not in tried and items_equal(pred[i], ref[j]):
                tried.add(j)
                if owner[j] is None or pair(owner[j], tried):
                    owner[j] = i
                    return True
        return False

    return all(pair(i, set()) for i in range(len(pred)))


def _closes_at_end(text: str, open_index: int) -> bool:
    return matching_close(text, open_index) == len(text) - 1
