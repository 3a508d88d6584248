"""Exact graders for GSM8K numbers and MATH answers, plus the answer extractors.

Both graders take model text and never raise on it: anything they cannot read is False.
Verdicts are exact, with no float tolerance, and the known false positives of popular
graders do not happen: ``100000`` vs ``100001``, ``50`` vs ``0.5``, ``1/2`` vs ``2``,
``(1,2)`` vs ``[1,2]``, ``a+b`` vs ``c+b`` are all False.

``math_equal`` stages, cheapest and most exact first (each on normalised LaTeX, see
``latex_normalize``):

1. equal canonical strings;
2. multiple-choice letters: ``(A)``, ``A`` and ``\\text{(A)}`` agree, and a letter only
   ever equals the same letter;
3. ``x = 3`` / ``f(x) = x^2`` / ``x \\in [1,2)`` against ``3`` / ``x^2`` / ``[1,2)``, and an
   inequality as its interval (``x \\geq 2`` is ``[2,\\infty)``, ``answer_forms``); two
   different names on the two sides do not agree;
4. structures (``math_structures``), compared item by item with these same stages:
   tuples and intervals keep their brackets and order; sets, bare lists (also answers
   joined by "or") and unions of intervals compare as sets; ``a \\pm b`` is the set of
   its two values, also as an item of a set or list; matrices entry by entry with the
   same shape;
5. equations ``lhs = rhs`` side by side;
6. plain numbers as exact rationals (``exact_numbers``): every spelling of ``1/2``;
7. text answers (a word of three or more letters): only a single word matches, and
   case-insensitively (``Monday`` = ``monday``);
8. sympy, last, in a child process with a time limit (``symbolic_check``): ``2\\sqrt2``
   vs ``\\sqrt8``, ``\\frac{\\sqrt3}{3}`` vs ``1/\\sqrt3``, ``(x+1)^2`` vs ``x^2+2x+1``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from fractions import Fraction

from qstar_jax.tasks.math.answer_extraction import (extract_boxed, extract_final_answer,
                                                    extract_gsm8k_reference)
from qstar_jax.tasks.math.answer_forms import inequality_interval, plus_minus_values
from qstar_jax.tasks.math.exact_numbers import parse_latex_number
from qstar_jax.tasks.math.latex_normalize import matching_close, normalize_latex
from qstar_jax.tasks.math.math_structures import (MAX_ITEMS, AnswerStructure, StructureKind,
                                                  TooManyItemsError, parse_structure)
from qstar_jax.tasks.math.symbolic_check import (SymbolicCheckConfig, SymbolicChecker,
                                                 SymbolicWorkerError, shared_checker)

__all__ = ["SymbolicCheckConfig", "SymbolicChecker", "SymbolicWorkerError", "extract_boxed",
           "extract_final_answer", "extract_gsm8k_reference", "math_answer_value", "math_equal",
           "number_equal"]

_CHOICE = re.compile(r"\(?([A-E])\)?")
_ASSIGNMENT = re.compile(r"(?P<name>[A-Za-z](?:_\{?[A-Za-z0-9]+\}?|\([A-Za-z,]+\))?|\\[A-Za-z]+)"
                         r"(?:=|\\in(?![A-Za-z]))(?P<value>[^=]+)")
_SEPARATE_NUMBERS = re.compile(r"\d \d")  # kept apart by normalize_latex
_WORD = re.compile(r"(?<![A-Za-z\\])[A-Za-z]{3,}")


def number_equal(pred: str, ref: str) -> bool:
    """Whether two GSM8K-style answers are the same number, exactly.

    Read: thousands commas (``1,000``), currency signs (``$``, ``\\$``, ``€``, ``£``),
    a trailing full stop, decimals (``5.00`` is 5), signs (``-``, ``−``), fractions
    (``3/4``, ``\\frac{3}{4}``), unit words after the number (``18 dollars``), and
    the right-hand side of ``x = 18``. A percent sign is read as a unit, so ``50%``
    equals ``50`` but not ``0.5`` (GSM8K writes percentages as the bare number).
    Anything else, e.g. ``2.5e3`` or ``five``, is not a number: False.
    """
    pred_value, ref_value = gsm8k_number(pred), gsm8k_number(ref)
    return pred_value is not None and pred_value == ref_value


def math_equal(pred: str, ref: str, *, symbolic: SymbolicChecker | None = None) -> bool:
    """Whether a MATH answer ``pred`` equals the reference ``ref`` (stages in the module
    docstring). ``symbolic`` is the sympy checker to use; without one, the process's
    shared warm checker (``symbolic_check.shared_checker``), started the first time the
    sympy stage is reached.

    Raises:
        SymbolicWorkerError: only when the sympy worker cannot start at all (a broken
            environment); never because of what ``pred`` or ``ref`` say.
    """
    if not isinstance(pred, str) or not isinstance(ref, str):
        return False
    pred_norm, ref_norm = normalize_latex(pred), normalize_latex(ref)
    if not pred_norm or not ref_norm:
        return False
    checker = symbolic if symbolic is not None else shared_checker()
    comparison = _Comparison(checker=checker, deadline=time.monotonic() + checker.config.budget_s)
    try:
        return comparison.equal(pred_norm, ref_norm)
    except TooManyItemsError:
        return False


def gsm8k_number(text: str) -> Fraction | None:
    """The number a GSM8K-style answer holds, as ``number_equal`` reads it; None for
    anything else."""
    if not isinstance(text, str):
        return None
    normalized = normalize_latex(text.rpartition("=")[2])
    return None if normalized is None else parse_latex_number(normalized)


def math_answer_value(text: str) -> Fraction | str | None:
    """A MATH answer in one spelling, for votes: the exact value of a plain number
    (``0.5``, ``\\frac12`` and ``\\dfrac{1}{2}`` are one), else the normalised LaTeX
    (``latex_normalize``); None for text that is no answer. Cheaper and coarser than
    ``math_equal``: ``2\\sqrt2`` and ``\\sqrt8`` stay two."""
    if not isinstance(text, str):
        return None
    normalized = normalize_latex(text)
    if not normalized:
        return None
    number = parse_latex_number(normalized)
    return normalized if number is None else number


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Comparison:
    """One grading call's comparisons, sharing its sympy checker and time budget."""

    checker: SymbolicChecker
    deadline: float

    def equal(self, pred: str, ref: str) -> bool:
        if pred == ref:
            return True
        if not pred or not ref:
            return False
        pred_choice, ref_choice = _CHOICE.fullmatch(pred), _CHOICE.fullmatch(ref)
        if pred_choice or ref_choice:
            return bool(pred_choice and ref_choice and pred_choice[1] == ref_choice[1])
        pred_named, ref_named = _named_value(pred), _named_value(ref)
        if pred_named or ref_named:
            if pred_named and ref_named and pred_named[0] != ref_named[0]:
                return False
            return self.equal(pred_named[1] if pred_named else pred,
                              ref_named[1] if ref_named else ref)
        pred_structure = _plus_minus_structure(pred) or parse_structure(pred)
        ref_structure = _plus_minus_structure(ref) or parse_structure(ref)
        if pred_structure or ref_structure:
            return self._structures_equal(pred_structure or _as_singleton(pred),
                                          ref_structure or _as_singleton(ref))
        return self._expressions_equal(_strip_parentheses(pred), _strip_parentheses(ref))

    def _expressions_equal(self, pred: str, ref: str) -> bool:
        if pred == ref:
            return True
        if "=" in pred or "=" in ref:
            pred_sides, ref_sides = pred.split("="), ref.split("=")
            return len(pred_sides) == len(ref_sides) == 2 and all(
                self.equal(a, b) for a, b in zip(pred_sides, ref_sides))
        if _SEPARATE_NUMBERS.search(pred) or _SEPARATE_NUMBERS.search(ref):
            return False  # "18 19" is two numbers; no parser may read it as one
        pred_number, ref_number = parse_latex_number(pred), parse_latex_number(ref)
        if pred_number is not None and ref_number is not None:
            return pred_number == ref_number
        if _WORD.search(pred) or _WORD.search(ref):
            return pred.isalpha() and ref.isalpha() and pred.casefold() == ref.casefold()
        return self.checker.equal(pred, ref, deadline=self.deadline)

    def _structures_equal(self, pred: AnswerStructure, ref: AnswerStructure) -> bool:
        if pred.kind != ref.kind:
            return False
        if pred.kind is StructureKind.UNORDERED:
            pred, ref = _plus_minus_items(pred), _plus_minus_items(ref)
        if pred.kind is StructureKind.MATRIX:
            return [len(row) for row in pred.rows] == [len(row) for row in ref.rows] and all(
                self.equal(a, b) for pred_row, ref_row in zip(pred.rows, ref.rows)
                for a, b in zip(pred_row, ref_row))
        if pred.kind is StructureKind.ORDERED:
            return pred.brackets == ref.brackets and len(pred.items) == len(ref.items) and all(
                self.equal(a, b) for a, b in zip(pred.items, ref.items))
        items_equal = functools.cache(lambda i, j: self.equal(pred.items[i], ref.items[j]))
        pred_range, ref_range = range(len(pred.items)), range(len(ref.items))
        return all(any(items_equal(i, j) for j in ref_range) for i in pred_range) and all(
            any(items_equal(i, j) for i in pred_range) for j in ref_range)


def _named_value(text: str) -> tuple[str, str] | None:
    """(name, value) of ``x = 3``, ``x \\in [1,2)`` or an inequality (its interval)."""
    assignment = _ASSIGNMENT.fullmatch(text)
    if assignment is not None:
        return assignment["name"], assignment["value"]
    inequality = inequality_interval(text)
    return None if inequality is None else (inequality.name, inequality.interval)


def _plus_minus_structure(text: str) -> AnswerStructure | None:
    """``1 \\pm \\sqrt{2}`` as the set of its two values; None for a structure (a set's
    or list's items are expanded by ``_plus_minus_items``, a tuple's compared one by one)
    or text without ``\\pm``."""
    values = plus_minus_values(text) if parse_structure(text) is None else None
    return None if values is None else AnswerStructure(kind=StructureKind.UNORDERED,
                                                       items=values)


def _plus_minus_items(structure: AnswerStructure) -> AnswerStructure:
    """A set or list with each ``a \\pm b`` item as its two values: ``\\{1 \\pm 2\\}`` is
    ``\\{3, -1\\}``, and ``1 \\pm 2, 5`` holds three values.

    Raises:
        TooManyItemsError: more than ``MAX_ITEMS`` values in all.
    """
    items = []
    for item in structure.items:
        values = _plus_minus_structure(item)
        items.extend(values.items if values is not None else (item,))
    if len(items) > MAX_ITEMS:
        raise TooManyItemsError(f"an answer has more than {MAX_ITEMS} parts")
    return dataclasses.replace(structure, items=tuple(items))


def _as_singleton(text: str) -> AnswerStructure:
    """A lone answer as a one-item set, so ``5`` can equal ``\\{5\\}``; it equals no
    tuple or matrix."""
    return AnswerStructure(kind=StructureKind.UNORDERED, items=(text,))


def _strip_parentheses(text: str) -> str:
    """``((5))`` -> ``5``: parentheses around a whole expression only group."""
    while text.startswith("(") and text.endswith(")") and matching_close(text, 0) == len(text) - 1:
        text = text[1:-1]
    return text
