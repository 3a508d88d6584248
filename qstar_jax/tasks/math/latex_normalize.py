"""One canonical spelling for a LaTeX answer, so equal answers become equal strings.

``normalize_latex`` drops what never changes a value (math delimiters, ``\\left`` and
``\\right``, spacing commands, ``\\displaystyle``, degree signs on an angle, percent
signs, currency signs, units in ``\\text{}`` or after a plain number, a trailing full
stop, thousands separators, whitespace except between two digits) and spells what has
several spellings one way (``\\dfrac`` and ``\\tfrac`` as ``\\frac``, ``\\dbinom``,
``\\tbinom`` and ``{n \\choose k}`` as ``\\binom{n}{k}``, ``\\frac12`` as ``\\frac{1}{2}``,
``\\sqrt2`` as ``\\sqrt{2}``, ``\\le`` as ``\\leq``, ``x^{2}`` as ``x^2``, ``3 1/2`` as
``3\\frac{1}{2}``, ``\\log_2 8`` as ``\\log_{2}8``, ``\\mathbb{R}`` as ``(-\\infty,\\infty)``,
``+\\infty`` as ``\\infty``, ``1.5 million`` as ``1500000.0`` (a magnitude word multiplies;
``dozen`` is 12), answers joined by "or" or "and" as a list: ``x=2 \\text{ or } x=3`` as
``x=2,x=3``). A degree sign in an answer that holds a trigonometric function makes its
angle radians (``\\sin 30^\\circ`` is ``\\sin(30\\cdot\\pi/180)``); anywhere else it goes
(``90^\\circ`` is ``90``). A bare ``\\circ`` (composition, ``f \\circ g``) stays. It keeps
bracket types: ``(1,2]`` stays a half-open interval. Inputs longer than
``MAX_ANSWER_CHARS`` or nested deeper than ``MAX_NESTING`` are refused (None): they are
not answers, and refusing them bounds the work of every later stage.
"""

from __future__ import annotations

import decimal
import re

MAX_ANSWER_CHARS = 1000
MAX_NESTING = 40

_OPENERS, _CLOSERS = "([{", ")]}"
_UNICODE = str.maketrans({"\u2212": "-", "\u00d7": r"\times ", "\u00b7": r"\cdot ",
                          "\u03c0": r"\pi ", "\u221e": r"\infty ", "\u00b0": r"^\circ ",
                          "\u20ac": "", "\u00a3": "", "\u00a5": "", "\u20b9": "",
                          "\u00b1": r"\pm ", "\u2264": r"\leq ", "\u2265": r"\geq "})
# "\\" (a matrix row break) is matched first so its second backslash never starts "\(".
_DELIMITERS = re.compile(r"(\\\\)|\\\$|\$|\\[()\[\]]")
_SIZING = re.compile(r"\\(?:left|right)\.|\\(?:left|right|[bB]igg?[lr]?|displaystyle|textstyle)"
                     r"(?![A-Za-z])")
_SPACING = re.compile(r"(\\\\)|\\[,;: ]|\\q?quad(?![A-Za-z])|~")
_RENAMES = (
    (re.compile(r"\\[dtc]frac(?![A-Za-z])"), r"\\frac"),
    (re.compile(r"\\[dt]binom(?![A-Za-z])"), r"\\binom"),
    # "{n \choose k}", and a whole answer "n \choose k".
    (re.compile(r"\{\s*([^{}]*?)\s*\\choose(?![A-Za-z])\s*([^{}]*?)\s*\}"), r"\\binom{\1}{\2}"),
    (re.compile(r"^\s*([^{}]*?)\s*\\choose(?![A-Za-z])\s*([^{}]*?)\s*$"), r"\\binom{\1}{\2}"),
    (re.compile(r"\\(le|ge)(?![A-Za-z])"), r"\\\1q"),
    (re.compile(r"\\ne(?![A-Za-z])"), r"\\neq"),
    (re.compile(r"<="), r"\\leq "),
    (re.compile(r">="), r"\\geq "),
    (re.compile(r"\\mathbb\s*(?:\{\s*R\s*\}|R(?![A-Za-z]))"), r"(-\\infty,\\infty)"),
    # "\log_2 8", "\log_{2}8": the base braced, so it never runs into the argument.
    (re.compile(r"\\log\s*_\s*(?:\{\s*([^{}]*?)\s*\}|([A-Za-z0-9]))"), r"\\log_{\1\2}"),
    # "x=2 \text{ or } x=3" lists two answers; read as "x=2, x=3" once the text is unwrapped.
    (re.compile(r"\\(?:text|textrm|mbox)\s*\{\s*(or|and)\s*\}"), r" \1 "),
    (re.compile(r"\\lbrace(?![A-Za-z])"), r"\\{"),
    (re.compile(r"\\rbrace(?![A-Za-z])"), r"\\}"),
    (re.compile(r"\\varnothing(?![A-Za-z])|\\\{\s*\\\}"), r"\\emptyset"),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\!"), ""),
    (re.compile(r"(^|[(\[,])\s*\+\s*(?=\\infty(?![A-Za-z]))"), r"\1"),
    (re.compile(r"\\?%"), ""),
)
_TEXT_COMMAND = r"\\(?:text|textbf|textit|textrm|textnormal|mbox|mathrm|mathbf|mathit|" \
                r"boldsymbol|operatorname|boxed|fbox)\s*\{"
_TEXT_OPENER = re.compile(_TEXT_COMMAND)
# "5\text{ cm}^2": a unit in text after some maths; the maths is the answer.
_TRAILING_UNIT = re.compile(_TEXT_COMMAND + r"\s*[A-Za-z][A-Za-z .,/]*\}(?:\^\{?\d\}?)?\s*$")
_NUMBER = r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)"
# A magnitude word multiplies the number before it: "1.5 million", "3 dozen".
MAGNITUDES = {"dozen": 12, "hundred": 100, "thousand": 1000, "million": 10**6,
              "billion": 10**9}
_MAGNITUDE = r"(?:dozen|hundred|thousand|million|billion)(?![A-Za-z])"
# "12 square feet", "18 dollars.": words after a plain number are its unit.
_NUMBER_WITH_UNIT = re.compile(rf"(?P<number>{_NUMBER})(?:\s+(?P<magnitude>{_MAGNITUDE}))?"
                               r"(?:\s+(?P<first>[A-Za-z]{2,})(?P<more>(?:[\s.\-/]+[A-Za-z]+)*))?"
                               r"\.?", re.IGNORECASE)
# Words that are maths, not units, when written after a number ("2 pi"), and the words
# that join two answers ("18 or 19").
_MATH_WORDS = frozenset({"pi", "sqrt", "sin", "cos", "tan", "log", "ln", "exp", "times",
                         "cdot", "over", "plus", "minus"})
_JOINING_WORDS = frozenset({"or", "and"})
_TRIG = re.compile(r"\\(?:sin|cos|tan|cot|sec|csc)(?![A-Za-z])")
_DEGREE = r"(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|\\degree(?![A-Za-z]))"
# The angle a degree sign follows: a numeral, a letter, a command (``\theta``) or a
# braced group.
_DEGREES = re.compile(rf"(\d+(?:\.\d+)?|\.\d+|(?<![A-Za-z\\])[A-Za-z]|\\[A-Za-z]+|\{{[^{{}}]*\}})"
                      rf"\s*{_DEGREE}")
_DEGREE_SIGN = re.compile(_DEGREE)
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# "1 000 000": digits grouped by spaces, as SI writes thousands.
_SPACED_THOUSANDS = re.compile(r"(?<![\d.])\d{1,3}(?: \d{3})+(?!\d)")
# "3 1/2": a mixed number, read like "3\frac{1}{2}".
_PLAIN_MIXED_NUMBER = re.compile(r"([-+]?\d+) (\d+)/(\d+)")
# Whitespace goes, except after a command before a letter ("\pi r") and between digits:
# "18 19" is two numbers, never 1819.
_WHITESPACE = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])|(?<=\d)(\s+)(?=\d)|\s+")
_OR = re.compile(r",?\s+(?:or|and)\s+")
# A log's base keeps its braces: "\log_{2}8" must not become "\log_28".
_SINGLE_TOKEN_SCRIPT = re.compile(r"(?<!\\log)([\^_])\{([A-Za-z0-9])\}")
_ARGUMENT_COMMANDS = re.compile(r"\\(frac|sqrt|binom|overline)(?![A-Za-z])")
_ONE_ARGUMENT = ("sqrt", "overline")


def normalize_latex(text: str) -> str | None:
    """The canonical spelling of a LaTeX answer (see the module docstring), or None when
    it is too long or too deeply nested to be an answer."""
    text = text.strip()
    if len(text) > MAX_ANSWER_CHARS or nesting_depth(text) > MAX_NESTING:
        return None
    text = _DELIMITERS.sub(_keep_row_breaks, text.translate(_UNICODE))
    text = _SIZING.sub("", text)
    text = _SPACING.sub(lambda m: _keep_row_breaks(m) or " ", text)
    for pattern, replacement in _RENAMES:
        text = pattern.sub(replacement, text)
    text = _read_degrees(text)
    text = _drop_trailing_unit(text)
    text = _unwrap_text_commands(text).strip().rstrip(".").strip()
    text = _drop_plain_unit(text)
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    text = _OR.sub(",", text)
    text = _SPACED_THOUSANDS.sub(lambda m: m[0].replace(" ", ""), re.sub(r"\s+", " ", text))
    mixed = _PLAIN_MIXED_NUMBER.fullmatch(text)
    if mixed is not None:
        text = rf"{mixed[1]}\frac{{{mixed[2]}}}{{{mixed[3]}}}"
    text = _WHITESPACE.sub(lambda m: m[1] + " " if m[1] else " " if m[2] else "", text)
    text = _SINGLE_TOKEN_SCRIPT.sub(r"\1\2", _brace_arguments(text))
    return _strip_outer_braces(text)


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting in ``text``, counting ``( [ {`` alike."""
    depth = deepest = 0
    for char in text:
        if char in _OPENERS:
            depth += 1
            deepest = max(deepest, depth)
        elif char in _CLOSERS:
            depth -= 1
    return deepest


def matching_close(text: str, open_index: int) -> int | None:
    """Index of the bracket closing the one at ``open_index`` (any of ``([{`` closes with
    any of ``)]}``, so half-open intervals balance), or None when it never closes."""
    depth = 0
    for index in range(open_index, len(text)):
        if text[index] in _OPENERS:
            depth += 1
        elif text[index] in _CLOSERS:
            depth -= 1
            if depth == 0:
                return index
    return None


def _keep_row_breaks(match: re.Match[str]) -> str:
    """Replacement that keeps a matched ``\\\\`` (group 1) and deletes anything else."""
    return match[1] or ""


def _read_degrees(text: str) -> str:
    """Degree signs as radians inside an answer with a trigonometric function, else gone;
    see the module docstring."""
    if _TRIG.search(text):
        text = _DEGREES.sub(r"(\1\\cdot\\pi/180)", text)
    return _DEGREE_SIGN.sub("", text)


def _drop_plain_unit(text: str) -> str:
    """``18 dollars`` -> ``18``, ``1.5 million`` -> ``1500000.0``: the unit words after a
    plain number go and a magnitude word multiplies it. Words of maths (``2 pi``) and
    joining words (``18 or``) are no unit."""
    match = _NUMBER_WITH_UNIT.fullmatch(text)
    if match is None or not (match["magnitude"] or match["first"]):
        return text
    words = {match["first"] or "", *re.findall(r"[A-Za-z]+", match["more"] or "")}
    if {word.lower() for word in words} & (_MATH_WORDS | _JOINING_WORDS):
        return text
    number = match["number"]
    if match["magnitude"] is not None:
        if not _THOUSANDS.fullmatch(number) and "," in number:
            return text
        digits = number.replace(",", "")
        exact = decimal.Context(prec=len(digits) + 12)  # room for every digit: no rounding
        number = format(exact.multiply(decimal.Decimal(digits),
                                       MAGNITUDES[match["magnitude"].lower()]), "f")
    return number


def _drop_trailing_unit(text: str) -> str:
    match = _TRAILING_UNIT.search(text)
    if match is None or not text[:match.start()].strip():
        return text
    return text[:match.start()]


def _unwrap_text_commands(text: str) -> str:
    """``\\text{(A)}`` -> ``(A)``: the command goes, its braced content stays."""
    while (opener := _TEXT_OPENER.search(text)) is not None:
        close = matching_close(text, opener.end() - 1)
        if close is None:
            return text[:opener.start()] + text[opener.end():]
        text = text[:opener.start()] + text[opener.end():close] + text[close + 1:]
    return text


def _brace_arguments(text: str) -> str:
    """Braces every argument of ``\\frac``, ``\\sqrt``, ``\\binom`` and ``\\overline``:
    ``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt\\pi`` -> ``\\sqrt{\\pi}``, ``\\sqrt[3]8`` ->
    ``\\sqrt[3]{8}``, ``0.\\overline3`` -> ``0.\\overline{3}``."""
    pieces, position = [], 0
    while (command := _ARGUMENT_COMMANDS.search(text, position)) is not None:
        pieces.append(text[position:command.end()])
        position = command.end()
        if command[1] == "sqrt" and text.startswith("[", position):
            close = matching_close(text, position)
            if close is None:
                break
            pieces.append("[" + _brace_arguments(text[position + 1:close]) + "]")
            position = close + 1
        for _ in range(1 if command[1] in _ONE_ARGUMENT else 2):
            argument, position = _read_argument(text, position)
            if argument is None:
                break
            pieces.append("{" + _brace_arguments(argument) + "}")
    pieces.append(text[position:])
    return "".join(pieces)


def _read_argument(text: str, position: int) -> tuple[str | None, int]:
    """(the argument starting at ``position``, where it ends): a braced group, a command
    name, or one character; (None, position) at the end or at a closing bracket."""
    while position < len(text) and text[position] == " ":
        position += 1
    if position >= len(text) or text[position] in _CLOSERS:
        return None, position
    if text[position] == "{":
        close = matching_close(text, position)
        if close is None:
            return None, position
        return text[position + 1:close], close + 1
    command = re.match(r"\\[A-Za-z]+", text[position:])
    end = position + (command.end() if command else 1)
    return text[position:end], end


def _strip_outer_braces(text: str) -> str:
    while text.startswith("{") and matching_close(text, 0) == len(text) - 1:
        text = text[1:-1]
    return text
