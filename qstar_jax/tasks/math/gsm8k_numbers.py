"""GSM8K answers as exact numbers: which words of an answer are its number, and the
units, counts and magnitudes written around it (``grading.number_equal``).

An answer (what follows "The answer is") is read in three steps:

1. its first clause: a remark after it goes (``18, which is the total``, ``20, since
   9 + 9 = 18``, ``20 because ...``, ``20; ...``), so does a parenthetical of words or of
   working (``18 (dollars)``, ``18 (3 * 6 = 18)``), and parentheses around all of it
   (``(18)``);
2. of an equation, the side that is the answer: the last side of a chain worked from an
   expression or a name (``5 + 13 = 18``, ``3 * 4 = 12 + 6 = 18``, ``x = 18``), or the
   first side when it is a number the rest works out (``18 = 3 * 6``);
3. the number, with what GSM8K answers write around one: currency signs, thousands
   commas, a percent sign (``50%`` is 50), LaTeX (``\\frac{3}{4}``, ``\\text{ dollars}``),
   a magnitude word that multiplies it (``1.5 million``, ``3 dozen``), and a unit after
   it, spaced or attached (``18 dollars!``, ``18 m``, ``18m``, ``18cm``, ``18 ft²``,
   ``18 m^2``, ``18 °F``, ``$18/hour``, ``4 times``).

Two numbers (``18 or 19``, ``18 and 19``, ``18, 19``, ``18 19``, ``3 x 6``), a time
(``7:30``), words before the number (``about 18``), a question mark and a word of maths
after it (``2 pi``) are no number: None.
"""

from __future__ import annotations

import re
from fractions import Fraction

from qstar_jax.tasks.math.exact_numbers import parse_latex_number
from qstar_jax.tasks.math.latex_normalize import (MAGNITUDES, MAX_ANSWER_CHARS,
                                                  normalize_latex)

_MARKS = "*_`"
# A remark after the answer: a comma before a word (not "and" / "or", which join two
# answers), a semicolon, or a word that starts a reason.
_CLAUSE = re.compile(r"\s*;|,\s*(?!(?:and|or)(?![A-Za-z]))(?=[A-Za-z])"
                     r"|\s+(?:since|because|as|so|which|where|given|thus|hence|therefore"
                     r"|i\.e\.|that is)(?![A-Za-z])", re.IGNORECASE)
_LAST_PARENTHETICAL = re.compile(r"(?<=\S)\s*\((?P<inside>[^()]*)\)$")
_WRAPPED = re.compile(r"\((?P<inside>[^()]*)\)")
# Two answers side by side: "18, 19" (a thousands comma has no space after it), "18 or 19".
_TWO_ANSWERS = re.compile(r",\s|(?<![A-Za-z])(?:or|and)(?![A-Za-z])", re.IGNORECASE)
_OPERATOR = re.compile(r"[-+\u2212*/\u00d7\u00f7\u00b7^]|\\(?:times|cdot|div|frac)(?![A-Za-z])")
_DIGIT = re.compile(r"\d")
# The numeral (up to its last digit before any letter) and what follows it.
_NUMBER_THEN_REST = re.compile(r"(?P<number>[^A-Za-z\u00b0]*\d)(?P<rest>.*)", re.DOTALL)
_POWER = r"(?:\u00b2|\u00b3|\^\{?[23]\}?)?"
# After the numeral: a magnitude word, then a unit written against it ("18m"), a degree
# sign, a rate ("/hour") or a word, each unit word with an optional square or cube.
_UNITS = re.compile(
    r"(?:\s*(?P<magnitude>dozen|hundred|thousand|million|billion)(?![A-Za-z]))?"
    r"(?:(?P<attached>[A-Za-z]+)|\s*\u00b0\s*[CFK]?|\s*/\s*[A-Za-z]+|\s+(?P<word>[A-Za-z]+))?"
    rf"{_POWER}(?P<more>(?:[\s.\-/]+[A-Za-z]+{_POWER})*)[\s.!]*", re.IGNORECASE)
# Units written against the number ("18m", "18kg"); "18x" and "2.5e3" are not units.
_ATTACHED_UNITS = frozenset({"m", "cm", "mm", "km", "g", "kg", "mg", "lb", "lbs", "oz", "ft",
                             "in", "yd", "yds", "mi", "h", "hr", "hrs", "min", "mins", "s",
                             "sec", "secs", "l", "ml", "mph", "kph", "kmh", "am", "pm"})
# One-letter units written after a space ("18 m"); "3 x" is a product.
_LETTER_UNITS = frozenset({"m", "h", "s", "g", "l", "f", "c", "k"})
# Words after a number that make it something else than a count of units.
_NOT_UNITS = frozenset({"pi", "sqrt", "sin", "cos", "tan", "log", "ln", "exp", "cdot",
                        "over", "plus", "minus", "or", "and", "to", "x", "e"})


def gsm8k_number(text: str) -> Fraction | None:
    """The number a GSM8K-style answer holds (see the module docstring); None for
    anything else."""
    if not isinstance(text, str) or len(text := text.strip()) > MAX_ANSWER_CHARS:
        return None  # not an answer (``normalize_latex`` refuses it too); bounds the work
    side = _answer_side(_first_clause(text))
    return None if side is None else _quantity(side)


def _first_clause(text: str) -> str:
    text = _unmarked(text.replace("**", "").replace("`", ""))  # Markdown bold, code
    clause = _CLAUSE.search(text)
    if clause is not None:
        text = text[:clause.start()]
    text = _unmarked(text).rstrip(".!").strip()
    remark = _LAST_PARENTHETICAL.search(text)
    if remark is not None and ("=" in remark["inside"] or not _DIGIT.search(remark["inside"])):
        text = text[:remark.start()].strip()
    wrapped = _WRAPPED.fullmatch(text)
    return wrapped["inside"].strip() if wrapped is not None else text


def _answer_side(phrase: str) -> str | None:
    """The side of an equation that is the answer (the phrase itself when it has no
    ``=``), or None when no side is."""
    sides = [side.strip() for side in phrase.split("=")]
    if len(sides) == 1:
        return sides[0]
    first, *middle, last = sides
    worked = all(_is_expression(side) or _quantity(side) is not None for side in middle)
    if worked and (_is_expression(first) or _is_name(first)) and _quantity(last) is not None:
        return last
    if _quantity(first) is not None and all(_is_expression(side) for side in sides[1:]):
        return first
    return None


def _is_expression(side: str) -> bool:
    """``5 + 13``, ``3 apples * 6``: working, not two answers."""
    return bool(_DIGIT.search(side) and _OPERATOR.search(side)
                and not _TWO_ANSWERS.search(side))


def _is_name(side: str) -> bool:
    """``x``, ``Total cost``, ``\\text{total}``: words without digits."""
    return bool(side) and not _DIGIT.search(side) and re.search(r"[A-Za-z]", side) is not None


def _quantity(text: str) -> Fraction | None:
    """The number ``text`` is, with its unit, magnitude or LaTeX; None for anything else."""
    if _TWO_ANSWERS.search(text):
        return None
    normalized = normalize_latex(text)
    value = None if normalized is None else parse_latex_number(normalized)
    if value is not None:
        return value
    parts = _NUMBER_THEN_REST.fullmatch(text)
    units = None if parts is None else _UNITS.fullmatch(parts["rest"])
    if units is None or not _units_say_a_count(units):
        return None
    normalized = normalize_latex(parts["number"])
    value = None if normalized is None else parse_latex_number(normalized)
    if value is None or units["magnitude"] is None:
        return value
    return value * MAGNITUDES[units["magnitude"].lower()]


def _units_say_a_count(units: re.Match[str]) -> bool:
    attached, word = units["attached"], units["word"]
    if attached is not None and attached.lower() not in _ATTACHED_UNITS:
        return False
    if word is not None and len(word) == 1 and word.lower() not in _LETTER_UNITS:
        return False
    words = {word or "", *re.findall(r"[A-Za-z]+", units["more"])}
    return not {w.lower() for w in words} & _NOT_UNITS


def _unmarked(text: str) -> str:
    """``text`` without spaces and Markdown marks at its ends."""
    return text.strip().strip(_MARKS).strip()
