"""A value the program returned, written as a literal the parent reads back with
``sandbox_checks.read_plain``: plain data only, read with the base types' own methods.

Stdlib only and free of qstar_jax imports (the sandbox's worker loads it). Accepted:
  * ``None``, bool, int, float, complex, str, bytes, list, tuple, set, frozenset, dict;
  * subclasses of these whose classes (metaclass ``type``) define none of the methods that
    decide comparison, hashing, iteration or arithmetic (namedtuples, ``class L(list):
    pass``), written as their base type's content;
  * ``collections.Counter``, ``OrderedDict`` and ``defaultdict`` (as a dict: a test's
    expected value is a dict literal, which compares with them as a dict does),
    ``fractions.Fraction`` (as ``Fraction(n, d)``) and numpy's scalars (as the builtin
    scalar their ``item()`` gives), recognised by identity or, for numpy, as C types;
  * NaN, as ``nan``; infinities, as ``1e999`` and ``-1e999``.
Anything else, a class defining ``__eq__`` included, is not plain: the parent could not
compare it as Python would without running the program's code. The trusted types are
looked up when this module loads, before the program runs.
"""

from __future__ import annotations

import collections
import fractions
import math

_DEPTH_LIMIT = 64
_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made at run time, not by C code
_SCALARS = (int, float, complex, str, bytes)
_CONTAINERS = (list, tuple, set, frozenset, dict)
_AS_DICT = (collections.Counter, collections.OrderedDict, collections.defaultdict)
_FLAGS = vars(type)["__flags__"].__get__
_FRACTION = fractions.Fraction
_NUMERATOR = vars(_FRACTION)["_numerator"].__get__
_DENOMINATOR = vars(_FRACTION)["_denominator"].__get__
# What a subclass of a builtin may not define for its instances to count as its content.
_DECIDING_METHODS = frozenset("""
    __eq__ __ne__ __lt__ __le__ __gt__ __ge__ __hash__ __bool__ __len__ __iter__
    __contains__ __getitem__ __add__ __radd__ __sub__ __rsub__ __mul__ __rmul__
    __truediv__ __rtruediv__ __floordiv__ __rfloordiv__ __mod__ __rmod__ __pow__ __rpow__
    __neg__ __pos__ __abs__ __round__ __float__ __int__ __index__ __complex__
    __and__ __rand__ __or__ __ror__ __xor__ __rxor__""".split())


class NotPlain(Exception):
    """A value that is not plain data."""


def plain_literal(value: object, limit: int) -> str:
    """``value`` as a literal of at most ``limit`` characters."""
    parts: list[str] = []
    budget = [limit]

    def emit(text: str) -> None:
        budget[0] -= len(text)
        if budget[0] < 0:
            raise NotPlain(f"returned a value whose literal exceeds {limit} characters")
        parts.append(text)

    def sequence(opening: str, items, closing: str, depth: int) -> None:
        emit(opening)
        for position, item in enumerate(items):
            if position:
                emit(", ")
            walk(item, depth + 1)
        emit(closing)

    def walk(item: object, depth: int) -> None:
        if depth > _DEPTH_LIMIT:
            raise NotPlain(f"returned a value nested deeper than {_DEPTH_LIMIT}")
        kind, item = _plain_kind(item)
        if item is None or kind is bool:
            emit(repr(item))
        elif kind is int:
            try:
                emit(int.__repr__(item))
            except ValueError as error:  # past sys.get_int_max_str_digits()
                raise NotPlain(f"returned an int too long to print: {error}") from None
        elif kind is float:
            emit(_float_literal(item))
        elif kind is complex:
            if not all(map(math.isfinite, (complex.real.__get__(item),
                                           complex.imag.__get__(item)))):
                raise NotPlain("returned a non-finite complex number")
            emit(complex.__repr__(item))
        elif kind is str or kind is bytes:
            emit(kind.__repr__(item))
        elif kind is _FRACTION:
            emit(f"Fraction({int.__repr__(item[0])}, {int.__repr__(item[1])})")
        elif kind is list:
            sequence("[", list.__iter__(item), "]", depth)
        elif kind is tuple:
            single = tuple.__len__(item) == 1
            sequence("(", tuple.__iter__(item), ",)" if single else ")", depth)
        elif not kind.__len__(item) and kind is not dict:  # set or frozenset
            emit(f"{kind.__name__}()")
        elif kind is set:
            sequence("{", set.__iter__(item), "}", depth)
        elif kind is frozenset:
            sequence("frozenset({", frozenset.__iter__(item), "})", depth)
        else:  # dict
            emit("{")
            for position, (key, element) in enumerate(dict.items(item)):
                if position:
                    emit(", ")
                walk(key, depth + 1)
                emit(": ")
                walk(element, depth + 1)
            emit("}")

    walk(value, 0)
    return "".join(parts)


def require_plain(value: object, depth: int = 0) -> object:
    """``value`` itself when it is plain data all through, or of a type made by C code (a
    generator, a numpy array: what such an object holds is not looked into); TypeError
    otherwise, such as for an object whose class defines ``__eq__``."""
    if depth > _DEPTH_LIMIT:
        raise TypeError(f"a value nested deeper than {_DEPTH_LIMIT}")
    try:
        kind, item = _plain_kind(value)
    except NotPlain:
        if _made_by_c(type(value)):
            return value
        raise TypeError(f"the test compared or computed with an object of type "
                        f"{type(value).__name__}, which is not plain data") from None
    if kind is dict:
        for key, element in dict.items(item):
            require_plain(key, depth + 1)
            require_plain(element, depth + 1)
    elif _one_of(kind, (list, tuple, set, frozenset)):
        for element in kind.__iter__(item):
            require_plain(element, depth + 1)
    return value


def _made_by_c(kind: type) -> bool:
    # Read through type's own descriptor: a metaclass could answer ``__flags__`` itself.
    return not _FLAGS(kind) & _HEAP_TYPE


def _float_literal(number: float) -> str:
    if math.isnan(number):
        return "nan"
    if math.isinf(number):
        return "1e999" if number > 0 else "-1e999"
    return float.__repr__(number)


def _plain_kind(value: object) -> tuple[type | None, object]:
    """The plain type ``value`` is written as, and the value to write (a numpy scalar's
    builtin value, a fraction's numerator and denominator), or NotPlain. Types are
    compared by identity: a metaclass's ``__eq__`` could make ``in`` say anything."""
    kind = type(value)
    if value is None or kind is bool or _one_of(kind, _SCALARS + _CONTAINERS):
        return kind, value
    if _one_of(kind, _AS_DICT):
        return dict, value
    if kind is _FRACTION:
        numerator, denominator = _NUMERATOR(value), _DENOMINATOR(value)
        if type(numerator) is int and type(denominator) is int:
            return _FRACTION, (numerator, denominator)
    elif type(kind) is type and _made_by_c(kind) and kind.__module__ == "numpy":
        item = kind.item(value)
        if item is None or type(item) is bool or _one_of(type(item), _SCALARS):
            return type(item), item
    else:
        base = _builtin_base(kind)
        if base is not None:
            return base, value
    raise NotPlain(f"returned an object of type {kind.__name__}, which is not plain data "
                   "(builtin scalars and containers, and subclasses of them that keep "
                   "their comparisons and arithmetic)")


def _builtin_base(kind: type) -> type | None:
    """The builtin scalar or container ``kind`` subclasses, when no class on the way
    defines a method that decides comparison, iteration or arithmetic."""
    if type(kind) is not type:
        return None  # a metaclass could answer the questions below as it likes
    for klass in kind.__mro__:
        if _one_of(klass, _SCALARS + _CONTAINERS):
            return klass
        if _DECIDING_METHODS & vars(klass).keys():
            return None
    return None


def _one_of(kind: type, kinds: tuple[type, ...]) -> bool:
    return any(kind is candidate for candidate in kinds)
