"""Exact graders for GSM8K numbers and MATH answers, plus the answer extractors.

Both graders take model text and never raise on it: anything they cannot read is False.
Verdicts are exact, with no float tolerance, and the known false positives of popular
graders do not happen: ``100000`` vs ``100001``, ``50`` vs ``0.5``, ``1/2`` vs ``2``,
``(1,2)`` vs ``[1,2]``, ``a+b`` vs ``c+b`` are all False.

``math_equal`` stages, cheapest and most exact first (each on normalised LaTeX, see
``latex_normalize``):

1. equal canonical strings;
2. multiple-choice letters: ``(A)``, ``A`` and ``\\text{(A)}`` agree, and a letter only
   ever equals the same letter; against a letter, ``(D) 4`` is its choice ``D``;
3. ``x = 3`` / ``AB = 5`` / ``f^{-1}(x) = x^2`` / ``(x,y) = (3,4)`` / ``x \\in [1,2)``
   against ``3`` / ``5`` / ``x^2`` / ``(3,4)`` / ``[1,2)`` when the other answer has no
   ``=``, and an inequality as its interval (``x \\geq 2`` is ``[2,\\infty)``,
   ``answer_forms``); two different names on the two sides do not agree;
4. structures (``math_structures``), compared item by item with these same stages:
   tuples and intervals keep their brackets and order; sets, bare lists (also answers
   joined by "or" or "and") and unions of intervals compare as multisets, in any order
   but item for item (``1,1,2`` is not ``1,2,2``); ``a \\pm b`` is its two values,
   also as an item of a set or list; matrices entry by entry with the same shape;
5. equations ``lhs = rhs`` side by side, else (sympy) ``lhs - rhs`` equal up to sign,
   as Qwen2.5-Math's grader does (``y = 2x + 3`` is ``2x - y + 3 = 0``; a multiple,
   ``2y = 4x + 6``, is not);
6. plain numbers as exact rationals (``exact_numbers``): every spelling of ``1/2``;
7. text answers (a word of three or more letters): only a single word matches, and
   case-insensitively (``Monday`` = ``monday``);
8. sympy, last, in a child process with a time limit (``symbolic_check``): ``2\\sqrt2``
   vs ``\\sqrt8``, ``\\frac{\\sqrt3}{3}`` vs ``1/\\sqrt3``, ``(x+1)^2`` vs ``x^2+2x+1``.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Hashable

from qstar_jax.tasks.math.answer_extraction import (extract_boxed, extract_display_answer,
                                                    extract_final_answer,
                                                    extract_gsm8k_reference)
from qstar_jax.tasks.math.answer_forms import named_value, plus_minus_values
from qstar_jax.tasks.math.exact_numbers import parse_latex_number
from qstar_jax.tasks.math.gsm8k_numbers import gsm8k_number
from qstar_jax.tasks.math.latex_normalize import matching_close, normalize_latex
from qstar_jax.tasks.math.math_structures import (MAX_ITEMS, AnswerStructure, StructureKind,
                                                  TooManyItemsError, parse_structure,
                                                  same_multiset)
from qstar_jax.tasks.math.symbolic_check import (SymbolicCheckConfig, SymbolicChecker,
                                                 SymbolicWorkerError, shared_checker)

__all__ = ["SymbolicCheckConfig", "SymbolicChecker", "SymbolicWorkerError", "extract_boxed",
           "extract_display_answer", "extract_final_answer", "extract_gsm8k_reference",
           "gsm8k_number", "math_answer_value", "math_equal", "number_equal"]

_CHOICE = re.compile(r"\(?([A-E])\)?")
# "(D) 4": the choice, then what it says; not one of several choices ("(A), (C)").
_CHOICE_FIRST = re.compile(r"\(([A-E])\)(?![,;(]|\\cup)")
_SEPARATE_NUMBERS = re.compile(r"\d \d")  # kept apart by normalize_latex
_WORD = re.compile(r"(?<![A-Za-z\\])[A-Za-z]{3,}")


def number_equal(pred: str, ref: str) -> bool:
    """Whether two GSM8K-style answers are the same number, exactly.

    How an answer is read: ``gsm8k_numbers.gsm8k_number``. Anything it cannot read,
    e.g. ``2.5e3``, ``five`` or ``18 or 19``, is not a number: False.
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


def math_answer_value(text: str) -> Hashable | None:
    """A MATH answer in one spelling, for votes: the value under a name (``x = 5`` is
    ``5``, as ``math_equal`` reads it against a bare answer); the exact value of a plain
    number (``0.5``, ``\\frac12`` and ``\\dfrac{1}{2}`` are one); a set or list as the
    sorted tuple of its items' values (``1,2`` and ``\\{2,1\\}`` are one, ``1,1,2`` is
    another; one item is that item's value); else the normalised LaTeX
    (``latex_normalize``). None for text that is no answer. Cheaper and coarser than
    ``math_equal``: ``2\\sqrt2`` and ``\\sqrt8`` stay two, and ``x = 3`` and
    ``y = 3`` are one."""
    if not isinstance(text, str):
        return None
    normalized = normalize_latex(text)
    return _value_key(normalized) if normalized else None


def _value_key(text: str) -> Hashable:
    named = named_value(text)
    if named is not None:
        text = named.value
    try:
        structure = parse_structure(text)
    except TooManyItemsError:
        return text
    if structure is not None and structure.kind is StructureKind.UNORDERED:
        keys = sorted((_value_key(item) for item in structure.items),
                      key=lambda key: (type(key).__name__, str(key)))
        return keys[0] if len(keys) == 1 else tuple(keys)
    number = parse_latex_number(text)
    return text if number is None else number


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
            pred_choice = pred_choice or _CHOICE_FIRST.match(pred)
            ref_choice = ref_choice or _CHOICE_FIRST.match(ref)
            return bool(pred_choice and ref_choice and pred_choice[1] == ref_choice[1])
        pred_named, ref_named = named_value(pred), named_value(ref)
        if pred_named and ref_named:
            return pred_named.name == ref_named.name and self.equal(pred_named.value,
                                                                    ref_named.value)
        if pred_named and "=" not in ref:
            return self.equal(pred_named.value, ref)
        if ref_named and "=" not in pred:
            return self.equal(pred, ref_named.value)
        pred_structure = _plus_minus_structure(pred) or parse_structure(pred)
        ref_structure = _plus_minus_structure(ref) or parse_structure(ref)
        if pred_structure or ref_structure:
            return self._structures_equal(pred_structure or _as_singleton(pred),
                                          ref_structure or _as_singleton(ref))
        return self._expressions_equal(_strip_parentheses(pred), _strip_parentheses(ref))

    def _expressions_equal(self, pred: str, ref: str) -> bool:
        if pred == ref:
            return True
        if _SEPARATE_NUMBERS.search(pred) or _SEPARATE_NUMBERS.search(ref):
            return False  # "18 19" is two numbers; no parser may read it as one
        if "=" in pred or "=" in ref:
            return self._equations_equal(pred.split("="), ref.split("="))
        pred_number, ref_number = parse_latex_number(pred), parse_latex_number(ref)
        if pred_number is not None and ref_number is not None:
            return pred_number == ref_number
        if _WORD.search(pred) or _WORD.search(ref):
            return pred.isalpha() and ref.isalpha() and pred.casefold() == ref.casefold()
        return self.checker.equal(pred, ref, deadline=self.deadline)

    def _equations_equal(self, pred: list[str], ref: list[str]) -> bool:
        """Two equations: side by side, else ``lhs - rhs`` equal up to sign (sympy)."""
        if not len(pred) == len(ref) == 2 or not all(pred + ref):
            return False
        if all(self.equal(a, b) for a, b in zip(pred, ref)):
            return True
        if any(_WORD.search(side) for side in pred + ref):
            return False
        # One sympy call: (l - r)^2 equal means l - r equal up to sign.
        return self.checker.equal(f"({pred[0]}-({pred[1]}))^2", f"({ref[0]}-({ref[1]}))^2",
                                  deadline=self.deadline)

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
        return same_multiset(pred.items, ref.items, self.equal)


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
