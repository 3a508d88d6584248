"""Exact rational values of numeric answers, read by small regex recognisers.

Model text never reaches ``eval`` or sympy here: a numeral is matched whole by a regular
expression and handed to ``Fraction``, and numerals longer than ``MAX_NUMERAL_CHARS``
are refused, so ``10**10**10`` written out costs nothing. Values compare exactly:
``100000`` and ``100001`` differ, ``0.5`` and ``1/2`` agree.
"""

from __future__ import annotations

import re
from fractions import Fraction

# Longer numerals are not answers any dataset here has; refusing them bounds the work.
MAX_NUMERAL_CHARS = 100

_SIGN = r"[-+\u2212]"
_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+"  # thousands commas allowed
_NUMERAL = rf"{_SIGN}?(?:{_UNSIGNED})"
_DECIMAL = re.compile(rf"(?P<sign>{_SIGN})?(?P<digits>{_UNSIGNED})")
_RATIO = re.compile(rf"(?P<num>{_NUMERAL})/(?P<den>{_NUMERAL})")
_FRAC = re.compile(rf"(?P<sign>{_SIGN})?\\frac\{{(?P<num>{_NUMERAL})\}}\{{(?P<den>{_NUMERAL})\}}")
# "0.1\overline{6}" is 0.1666..., 1/6: digits under the bar repeat for ever.
_REPEATING = re.compile(rf"(?P<sign>{_SIGN})?(?P<whole>\d*)\.(?P<fixed>\d*)"
                        r"\\overline\{(?P<repeat>\d+)\}")
# "2\frac{1}{3}" is a mixed number, 7/3; the sign applies to the whole of it.
_MIXED = re.compile(rf"(?P<sign>{_SIGN})?(?P<whole>\d+)\\frac\{{(?P<num>\d+)\}}\{{(?P<den>\d+)\}}")


def parse_decimal(text: str) -> Fraction | None:
    """``"-1,234.50"`` -> ``Fraction(-2469, 2)``; None unless all of ``text`` is one
    decimal numeral (optional sign, digits with optional thousands commas, optional
    decimal part)."""
    if len(text) > MAX_NUMERAL_CHARS:
        return None
    match = _DECIMAL.fullmatch(text)
    if match is None:
        return None
    value = Fraction(match["digits"].replace(",", ""))
    return -value if match["sign"] in ("-", "\u2212") else value


def parse_latex_number(text: str) -> Fraction | None:
    """The exact value of a normalised LaTeX answer that is a plain number, else None.

    Accepted spellings (after ``latex_normalize.normalize_latex``, so ``\\frac12`` and
    ``\\dfrac`` are already ``\\frac{1}{2}``): ``3``, ``-0.75``, ``1,000``, ``3/4``,
    ``-1/2``, ``\\frac{3}{4}``, ``-\\frac{1}{2}``, ``\\frac{-1}{2}``, ``\\frac{1.5}{3}``,
    mixed numbers ``2\\frac{1}{3}`` (7/3) and ``-2\\frac{1}{3}`` (-7/3), repeating decimals
    ``0.\\overline{3}`` (1/3) and ``0.1\\overline{6}`` (1/6). A zero denominator is not a
    number.
    """
    if len(text) > 3 * MAX_NUMERAL_CHARS:
        return None
    value = parse_decimal(text)
    if value is not None:
        return value
    for pattern in (_RATIO, _FRAC, _MIXED):
        match = pattern.fullmatch(text)
        if match is not None:
            return _value_of(match)
    repeating = _REPEATING.fullmatch(text)
    return None if repeating is None else _repeating_value(repeating)


def _repeating_value(match: re.Match[str]) -> Fraction:
    """whole.fixed(repeat)(repeat)... exactly: the repeating part is repeat / (10^r - 1),
    shifted past the fixed digits."""
    fixed, repeat = match["fixed"], match["repeat"]
    value = Fraction(int(match["whole"] or "0")) + Fraction(int(fixed or "0"), 10 ** len(fixed))
    value += Fraction(int(repeat), (10 ** len(repeat) - 1) * 10 ** len(fixed))
    return -value if match["sign"] in ("-", "\u2212") else value


def _value_of(match: re.Match[str]) -> Fraction | None:
    numerator, denominator = parse_decimal(match["num"]), parse_decimal(match["den"])
    if numerator is None or denominator is None or denominator == 0:
        return None
    value = numerator / denominator
    if "whole" in match.groupdict():
        whole = parse_decimal(match["whole"])
        if whole is None:
            return None
        value += whole
    sign = match.groupdict().get("sign")
    return -value if sign in ("-", "\u2212") else value
