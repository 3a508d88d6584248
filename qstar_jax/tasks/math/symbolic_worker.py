"""The child process behind ``symbolic_check.SymbolicChecker``: LaTeX answers to sympy,
then an exact equality test.

Run as ``python -I symbolic_worker.py MEMORY_LIMIT_BYTES``; it imports only the standard
library and sympy, so it runs without the package on the path. It caps its own address
space, refuses core dumps and file writes, says ``{"ready": true}``, then answers each
request line ``{"pred": ..., "ref": ..., "time_limit_s": ...}`` with ``{"equal": bool}``.
The parent kills it when a reply is late; as a backstop a request arms ``SIGALRM``
(default action: terminate), so an orphaned worker cannot compute for ever.

Model text is parsed by the recursive-descent ``LatexToSympy`` below, which builds sympy
objects directly: nothing is ever passed to ``eval``, ``sympify`` or ``parse_expr``.
Powers and factorials whose values would be astronomically large are refused before
sympy evaluates them. Equality is exact: ``simplify(pred - ref) == 0``, no numeric
tolerance.
"""

from __future__ import annotations

import json
import math
import re
import resource
import signal
import sys

import sympy

MAX_LITERAL_DIGITS = 100
MAX_POWER_DIGITS = 20_000     # |exponent| * log10|base| of an integer power
MAX_SYMBOLIC_EXPONENT = 1_000
MAX_FACTORIAL = 1_000

_TOKEN = re.compile(r"\s*(?:(?P<number>\d+(?:\.\d*)?|\.\d+)|(?P<command>\\[A-Za-z]+|\\[{}|])"
                    r"|(?P<letter>[A-Za-z])|(?P<symbol>[-+*/^_()\[\]{}|!]))")
_CONSTANTS = {"pi": sympy.pi, "infty": sympy.oo}
_GREEK = frozenset({"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta",
                    "theta", "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "rho",
                    "sigma", "tau", "upsilon", "phi", "varphi", "chi", "psi", "omega"})
_FUNCTIONS = {"sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "cot": sympy.cot,
              "sec": sympy.sec, "csc": sympy.csc, "arcsin": sympy.asin, "arccos": sympy.acos,
              "arctan": sympy.atan, "sinh": sympy.sinh, "cosh": sympy.cosh, "tanh": sympy.tanh,
              "ln": sympy.log, "exp": sympy.exp}
_PRODUCT_OPERATORS = {"*": False, "\\cdot": False, "\\times": False, "/": True, "\\div": True}
_LETTER_CONSTANTS = {"e": sympy.E, "i": sympy.I}  # MATH's conventions in answers


class LatexParseError(ValueError):
    """The text is outside the LaTeX subset this parser reads, or its value is too big."""


class LatexToSympy:
    """Recursive descent over one normalised LaTeX expression (``latex_normalize``):
    sums, products (explicit and implicit), signs, powers, subscripts, factorials,
    ``\\frac``, ``\\sqrt[n]``, ``\\binom``, ``|x|``, brackets, common functions,
    ``\\pi``, ``\\infty``, Greek letters, ``e`` and ``i``."""

    def __init__(self, text: str):
        self._tokens: list[tuple[str, str]] = []
        position = 0
        text = text.rstrip()
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None:
                raise LatexParseError(f"unexpected character {text[position]!r}")
            kind = match.lastgroup
            self._tokens.append((kind, match[kind]))
            position = match.end()
        self._index = 0
        self._abs_depth = 0

    def parse(self) -> sympy.Expr:
        value = self._sum()
        if self._index != len(self._tokens):
            raise LatexParseError(f"unexpected {self._peek()!r}")
        return value

    def _peek(self) -> str | None:
        return self._tokens[self._index][1] if self._index < len(self._tokens) else None

    def _take(self, expected: str | None = None) -> str:
        token = self._peek()
        if token is None or (expected is not None and token != expected):
            raise LatexParseError(f"expected {expected or 'more'}, got {token!r}")
        self._index += 1
        return token

    def _sum(self) -> sympy.Expr:
        value = self._product()
        while self._peek() in ("+", "-"):
            sign = self._take()
            term = self._product()
            value = value + term if sign == "+" else value - term
        return value

    def _product(self) -> sympy.Expr:
        value = self._signed()
        while True:
            token = self._peek()
            if token in _PRODUCT_OPERATORS:
                self._take()
                factor = self._signed()
                value = value / factor if _PRODUCT_OPERATORS[token] else value * factor
            elif self._starts_factor():
                value = value * self._power()
            else:
                return value

    def _starts_factor(self) -> bool:
        if self._index >= len(self._tokens):
            return False
        kind, token = self._tokens[self._index]
        if token == "|":
            return self._abs_depth == 0
        return kind in ("number", "letter") or token in ("(", "[", "{") or (
            kind == "command" and token not in _PRODUCT_OPERATORS)

    def _signed(self) -> sympy.Expr:
        if self._peek() == "-":
            self._take()
            return -self._signed()
        if self._peek() == "+":
            self._take()
            return self._signed()
        return self._power()

    def _power(self) -> sympy.Expr:
        base = self._postfix(self._atom())
        if self._peek() != "^":
            return base
        self._take()
        if self._peek() == "-":
            self._take()
            return checked_power(base, -self._postfix(self._atom()))
        return checked_power(base, self._postfix(self._atom()))

    def _postfix(self, value: sympy.Expr) -> sympy.Expr:
        while self._peek() == "!":
            self._take()
            if not (value.is_Integer and 0 <= value <= MAX_FACTORIAL):
                raise LatexParseError("factorial of a large or non-integer value")
            value = sympy.factorial(value)
        return value

    def _group(self) -> sympy.Expr:
        """A braced argument, or a single atom when the braces were left out."""
        if self._peek() != "{":
            return self._atom()
        self._take("{")
        value = self._sum()
        self._take("}")
        return value

    def _atom(self) -> sympy.Expr:
        kind, token = self._tokens[self._index] if self._index < len(self._tokens) else ("", "")
        if kind == "number":
            self._take()
            if len(token) > MAX_LITERAL_DIGITS:
                raise LatexParseError("numeral too long")
            return sympy.Rational(token)
        if kind == "letter":
            self._take()
            return self._subscripted(token)
        for opener, closer in (("(", ")"), ("[", "]"), ("{", "}")):
            if token == opener:
                self._take()
                value = self._sum()
                self._take(closer)
                return value
        if token == "|":
            self._take()
            self._abs_depth += 1
            value = self._sum()
            self._abs_depth -= 1
            self._take("|")
            return sympy.Abs(value)
        if kind == "command":
            self._take()
            return self._command(token[1:])
        raise LatexParseError(f"unexpected {token or 'end of input'!r}")

    def _subscripted(self, name: str) -> sympy.Expr:
        if self._peek() != "_":
            return _LETTER_CONSTANTS[name] if name in _LETTER_CONSTANTS else sympy.Symbol(name)
        self._take()
        if self._peek() == "{":
            self._take()
            subscript = []
            while self._peek() not in ("}", None):
                subscript.append(self._take())
            self._take("}")
        else:
            subscript = [self._take()]
        return sympy.Symbol(f"{name}_{''.join(subscript)}")

    def _command(self, name: str) -> sympy.Expr:
        if name in _CONSTANTS:
            return _CONSTANTS[name]
        if name in _GREEK:
            return self._subscripted(name)
        if name == "frac":
            numerator = self._group()
            return numerator / self._group()
        if name == "binom":
            n, k = self._group(), self._group()
            if not (n.is_Integer and k.is_Integer and 0 <= n <= MAX_FACTORIAL):
                raise LatexParseError("binomial of a large or non-integer value")
            return sympy.binomial(n, k)
        if name == "sqrt":
            index = sympy.Integer(2)
            if self._peek() == "[":
                self._take()
                index = self._sum()
                self._take("]")
            return checked_power(self._group(), 1 / index)
        if name in _FUNCTIONS or name == "log":
            return self._function(name)
        raise LatexParseError(f"unsupported command \\{name}")

    def _function(self, name: str) -> sympy.Expr:
        base = None
        if name == "log" and self._peek() == "_":
            self._take()
            base = self._group()
        exponent = None
        if self._peek() == "^":
            self._take()
            exponent = self._group()
        argument = self._power()
        value = sympy.log(argument, base) if name == "log" and base is not None else (
            _FUNCTIONS.get(name, sympy.log)(argument))
        return value if exponent is None else checked_power(value, exponent)


def checked_power(base: sympy.Expr, exponent: sympy.Expr) -> sympy.Expr:
    """``base ** exponent``, refused when the value would be too big to compute."""
    if exponent.is_Number and not exponent.is_zero:
        magnitude = float(abs(exponent))
        if base.is_Rational:
            # Digits of the larger of numerator and denominator of the result.
            digits = magnitude * max(base.p.bit_length(), base.q.bit_length()) * math.log10(2)
            if digits > MAX_POWER_DIGITS:
                raise LatexParseError("power too large")
        elif magnitude > MAX_SYMBOLIC_EXPONENT:
            raise LatexParseError("exponent too large")
    elif not exponent.is_Number and exponent.has(sympy.oo, sympy.zoo):
        raise LatexParseError("infinite exponent")
    return base ** exponent


def answers_equal(pred: str, ref: str) -> bool:
    """Exact symbolic equality of two normalised LaTeX expressions."""
    difference = LatexToSympy(pred).parse() - LatexToSympy(ref).parse()
    if difference.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo):
        return False
    return difference == 0 or sympy.simplify(difference) == 0


def _reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    memory_limit = int(argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    _reply({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        signal.setitimer(signal.ITIMER_REAL, float(request["time_limit_s"]) + 1.0)
        try:
            verdict = answers_equal(request["pred"], request["ref"])
        # Anything sympy raises on odd input (parse errors, MemoryError at the address
        # space cap, NotImplementedError, PolynomialError...) means "not shown equal".
        except Exception:  # noqa: BLE001
            verdict = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        _reply({"equal": bool(verdict)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
