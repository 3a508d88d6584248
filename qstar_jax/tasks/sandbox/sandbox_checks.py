"""Which part of a test the sandbox evaluates, and how the parent decides it passed.

A test such as ``assert remove_odd([1, 2, 3]) == [2]`` is split: the child evaluates only
``remove_odd([1, 2, 3])`` and returns its value as a literal of plain data; the parent
reads it back as data (``sandbox_values``) and compares it with ``[2]``, which never
enters the sandbox. A program therefore passes only by computing the right value: an
object whose ``__eq__`` always returns True is not plain data, and patching builtins,
modules, ``AssertionError`` or the child's channel to its supervisor changes nothing the
parent looks at.

Decided in the parent (any operand may be a literal, kept in the parent, an expression,
evaluated in the child, or ``abs``, ``+``, ``-`` of operands, applied by the parent):
  * comparisons: ``==  !=  <  <=  >  >=  in  not in``, chains of them, and ``is`` /
    ``is not`` against ``None``, ``True`` or ``False``; a comparison of one of these
    conditions with ``True`` or ``False`` (``(f(1) == 2) is True``) is that condition;
  * ``math.isclose(a, b, rel_tol=..., abs_tol=...)`` with literal tolerances;
  * ``not X``, ``X and Y``, ``X or Y`` of the above, and the truth of any other
    expression's value.
Python stops at the first part of ``and``/``or`` (and of a comparison chain) that
settles it; the child evaluates every part, so an error of a later part goes to the
parent as that value's error (``lazy``), failing the test only where Python would have
evaluated that part. A later part that does not end, or has side effects, still runs.

A test of several statements runs them in order in the child, which evaluates the
expressions of each top-level assert of these forms where the assert stands (``r =
f(1)`` then ``assert r == 2``: the child returns ``r``, the parent compares it with 2).
A test in HumanEval's shape, a test function called once on the entry point (``def
check(candidate): assert candidate(1) == 2`` then ``check(f)``), is judged the same way:
its body is inlined (``sandbox_inline``) and its asserts are split as top-level ones, in a
namespace of its own (a copy of the program's), as the function's locals would be. What
is left (``is`` between objects, an assert inside a loop, a test with no assert) the
child runs as plain statements and reports only whether they raised. There, and inside
what the child evaluates (``all(f(x) == y for ...)``), the child makes the operands of
comparisons, arithmetic and truth tests pass ``require_plain`` (``sandbox_worker``), so an
object equal to anything raises; but a program can fake a statement's report (it shares
the child's process), so only the parent's comparisons prove a value right. Module
state the program changed is restored before each test.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import operator
from typing import Any, Callable, Union

from qstar_jax.tasks.sandbox.sandbox_inline import inlined_test_function
from qstar_jax.tasks.sandbox.sandbox_values import Unavailable, read_value, shown

_COMPARISONS: dict[type[ast.cmpop], tuple[str, Callable[[Any, Any], bool]]] = {
    ast.Eq: ("==", operator.eq), ast.NotEq: ("!=", operator.ne),
    ast.Lt: ("<", operator.lt), ast.LtE: ("<=", operator.le),
    ast.Gt: (">", operator.gt), ast.GtE: (">=", operator.ge),
    ast.In: ("in", lambda a, b: a in b), ast.NotIn: ("not in", lambda a, b: a not in b),
    ast.Is: ("is", operator.is_), ast.IsNot: ("is not", operator.is_not),
}
_SINGLETONS = (None, True, False)
# Applied by the parent to plain values, so the program never sees the other operand.
_OPERATIONS: dict[str, Callable[..., Any]] = {
    "abs": abs, "+": operator.add, "-": operator.sub, "neg": operator.neg}
_BINARY = {ast.Add: "+", ast.Sub: "-"}


class _Needed(Exception):
    """The condition needs a value the child could not produce."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Operand:
    """A literal held by the parent, the value of child expression ``index``, or
    ``operation`` (a key of ``_OPERATIONS``) applied by the parent to ``arguments``."""

    source: str
    index: int | None = None
    literal: Any = None
    operation: str | None = None
    arguments: tuple[Operand, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Comparison:
    operands: tuple[Operand, ...]
    operators: tuple[type[ast.cmpop], ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class IsClose:
    first: Operand
    second: Operand
    rel_tol: float = 1e-09
    abs_tol: float = 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Truth:
    operand: Operand


@dataclasses.dataclass(frozen=True, kw_only=True)
class Negation:
    inner: Condition


@dataclasses.dataclass(frozen=True, kw_only=True)
class Conjunction:
    parts: tuple[Condition, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Disjunction:
    parts: tuple[Condition, ...]


Condition = Union[Comparison, IsClose, Truth, Negation, Conjunction, Disjunction]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChildStep:
    """Statements the child runs, or (``statement`` None) expressions it evaluates;
    ``lazy``: positions of those Python might not evaluate, whose errors are sent as
    values for the parent to weigh."""

    statement: str | None = None
    expressions: tuple[str, ...] = ()
    lazy: tuple[int, ...] = ()

    def job(self) -> dict[str, Any]:
        if self.statement is not None:
            return {"statement": self.statement}
        job: dict[str, Any] = {"exprs": list(self.expressions)}
        if self.lazy:
            job["lazy"] = list(self.lazy)
        return job


@dataclasses.dataclass(frozen=True, kw_only=True)
class Check:
    """One test: the steps the child takes in order, and the parent's condition on the
    values of every expression they evaluate (None when no step evaluates any: the child
    runs the whole test as statements and the parent learns only whether it raised)."""

    test: str
    condition: Condition | None
    steps: tuple[ChildStep, ...]
    own_scope: bool = False  # run in a copy of the program's namespace (an inlined function)

    @property
    def child_expressions(self) -> tuple[str, ...]:
        return tuple(e for step in self.steps if step.statement is None for e in step.expressions)

    def child_job(self) -> dict[str, Any]:
        """What the child is told; expected values stay out of it."""
        steps = [step.job() for step in self.steps]
        return {"steps": steps, "own_scope": True} if self.own_scope else {"steps": steps}


def parse_check(test: str, number: int) -> Check:
    """The check for test ``number`` (1-based, for messages); a test that is not valid
    Python is a dataset error."""
    if not isinstance(test, str):
        raise TypeError(f"test {number} must be a string of Python code, got {type(test).__name__}")
    try:
        module = ast.parse(test)
    except SyntaxError as error:
        raise ValueError(f"test {number} is not valid Python ({error.msg}): {test!r}; "
                         "fix the dataset record") from None
    builder = _ConditionBuilder(test)
    steps: list[ChildStep] = []
    statements: list[ast.stmt] = []
    conditions: list[Condition] = []

    def flush_statements() -> None:
        if statements:
            steps.append(ChildStep(statement=ast.unparse(ast.Module(statements, []))))
            statements.clear()

    inlined = inlined_test_function(module.body)
    for node in module.body if inlined is None else inlined:
        first = len(builder.expressions)
        condition = builder.condition(node.test) if isinstance(node, ast.Assert) else None
        if condition is None:
            del builder.expressions[first:]  # an undecidable part may have added some
            del builder.lazy[first:]
            statements.append(node)
            continue
        flush_statements()
        lazy = tuple(i for i, flag in enumerate(builder.lazy[first:]) if flag)
        steps.append(ChildStep(expressions=tuple(builder.expressions[first:]), lazy=lazy))
        conditions.append(condition)
    if not conditions:
        return Check(test=test, condition=None, steps=(ChildStep(statement=test),))
    flush_statements()
    condition = conditions[0] if len(conditions) == 1 else Conjunction(parts=tuple(conditions))
    return Check(test=test, condition=condition, steps=tuple(steps),
                 own_scope=inlined is not None)


def check_failure(check: Check, literals: list[str]) -> str | None:
    """Why ``check`` does not hold for the child's values (Python literals, one per child
    expression), or None when it holds."""
    if check.condition is None:
        raise ValueError("a statement check is decided by the child, not by values")
    if len(literals) != len(check.child_expressions):
        return (f"the sandbox returned {len(literals)} values for "
                f"{len(check.child_expressions)} expressions")
    values = [read_value(sent, source) for sent, source in zip(literals, check.child_expressions)]
    try:
        holds = _holds(check.condition, values)
    except _Needed as missing:
        return str(missing)
    except Exception as error:  # noqa: BLE001 - e.g. '<' between str and int, as in Python
        return f"{type(error).__name__}: {error}\n{_shown(check, values)}"
    return None if holds else _shown(check, values)


class _ConditionBuilder:
    """Turns an assert's expression into a Condition, collecting child expressions and
    whether Python evaluates each only depending on earlier ones (``lazy``)."""

    def __init__(self, test: str) -> None:
        self.test = test
        self.expressions: list[str] = []
        self.lazy: list[bool] = []
        self._conditional = 0  # how many short-circuits the node being built sits behind

    def condition(self, node: ast.expr) -> Condition | None:
        if isinstance(node, ast.Compare):
            return self.comparison(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self.condition(node.operand)
            return None if inner is None else Negation(inner=inner)
        if isinstance(node, ast.BoolOp):
            parts = [self.condition(node.values[0]), *self._later(self.condition, node.values[1:])]
            if None in parts:
                return None
            joined = Conjunction if isinstance(node.op, ast.And) else Disjunction
            return joined(parts=tuple(parts))
        if _is_math_isclose(node):
            return self.isclose(node)
        return Truth(operand=self.operand(node))

    def comparison(self, node: ast.Compare) -> Condition | None:
        if any(type(op) not in _COMPARISONS for op in node.ops):
            return None
        against_bool = _compared_with_bool(node)
        if against_bool is not None:  # (f(1) == 2) is True: the inner comparison decides
            inner_node, negated = against_bool
            inner = self.condition(inner_node)
            return Negation(inner=inner) if negated and inner is not None else inner
        nodes = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, nodes, nodes[1:]):
            singleton = _is_singleton(left) or _is_singleton(right)
            if isinstance(op, (ast.Is, ast.IsNot)) and not singleton:
                return None  # identity of objects does not survive the trip out of the sandbox
        operands = [self.operand(n) for n in nodes[:2]] + self._later(self.operand, nodes[2:])
        return Comparison(operands=tuple(operands), operators=tuple(type(op) for op in node.ops))

    def isclose(self, node: ast.Call) -> IsClose | None:
        tolerances = {}
        for keyword in node.keywords:
            value = _literal(keyword.value)
            if keyword.arg not in ("rel_tol", "abs_tol") or value is _NOT_LITERAL:
                return None
            tolerances[keyword.arg] = value
        first, second = (self.operand(arg) for arg in node.args)
        return IsClose(first=first, second=second, **tolerances)

    def operand(self, node: ast.expr) -> Operand:
        source = ast.get_source_segment(self.test, node) or ast.unparse(node)
        value = _literal(node)
        if value is not _NOT_LITERAL:
            return Operand(source=source, literal=value)
        parts = _arithmetic(node)
        if parts is not None:
            operation, arguments = parts
            return Operand(source=source, operation=operation,
                           arguments=tuple(self.operand(a) for a in arguments))
        self.expressions.append(source)
        self.lazy.append(self._conditional > 0)
        return Operand(source=source, index=len(self.expressions) - 1)

    def _later(self, build: Callable[[ast.expr], Any], nodes: list[ast.expr]) -> list[Any]:
        """``build`` for nodes Python evaluates only depending on the ones before."""
        self._conditional += 1
        try:
            return [build(node) for node in nodes]
        finally:
            self._conditional -= 1


_NOT_LITERAL = object()


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL


def _arithmetic(node: ast.expr) -> tuple[str, list[ast.expr]] | None:
    """``abs(x)``, ``x + y``, ``x - y`` and ``-x`` as (operation, operands), else None."""
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)], [node.left, node.right]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return "neg", [node.operand]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "abs"
            and len(node.args) == 1 and not node.keywords
            and not isinstance(node.args[0], ast.Starred)):
        return "abs", list(node.args)
    return None


def _compared_with_bool(node: ast.Compare) -> tuple[ast.expr, bool] | None:
    """For ``X == True``, ``X is False``, ``True != X``... where X is itself a condition
    (a comparison, ``not``, ``and``/``or`` of them): X, and whether the test negates it."""
    if len(node.ops) != 1 or not isinstance(node.ops[0], (ast.Eq, ast.NotEq, ast.Is, ast.IsNot)):
        return None
    for constant, other in ((node.comparators[0], node.left), (node.left, node.comparators[0])):
        if (isinstance(constant, ast.Constant) and type(constant.value) is bool
                and _is_boolean(other)):
            negated = isinstance(node.ops[0], (ast.NotEq, ast.IsNot)) != (not constant.value)
            return other, negated
    return None


def _is_boolean(node: ast.expr) -> bool:
    """Whether ``node``'s value, on plain data, is always a bool."""
    if isinstance(node, ast.BoolOp):
        return all(map(_is_boolean, node.values))
    return (isinstance(node, ast.Compare) or _is_math_isclose(node)
            or (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)))


def _is_singleton(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and any(node.value is s for s in _SINGLETONS)


def _is_math_isclose(node: ast.expr) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "isclose" and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "math" and len(node.args) == 2)


def _holds(condition: Condition, values: list[Any]) -> bool:
    """Whether ``condition`` holds, evaluated as Python would: ``and``, ``or`` and
    comparison chains stop as soon as the outcome is known."""
    if isinstance(condition, Comparison):
        left = _value(condition.operands[0], values)
        for op, operand in zip(condition.operators, condition.operands[1:]):
            right = _value(operand, values)
            if not _COMPARISONS[op][1](left, right):
                return False
            left = right
        return True
    if isinstance(condition, IsClose):
        return math.isclose(_value(condition.first, values), _value(condition.second, values),
                            rel_tol=condition.rel_tol, abs_tol=condition.abs_tol)
    if isinstance(condition, Truth):
        return bool(_value(condition.operand, values))
    if isinstance(condition, Negation):
        return not _holds(condition.inner, values)
    if isinstance(condition, Conjunction):
        return all(_holds(part, values) for part in condition.parts)
    return any(_holds(part, values) for part in condition.parts)


def _value(operand: Operand, values: list[Any]) -> Any:
    if operand.operation is not None:
        return _OPERATIONS[operand.operation](*(_value(a, values) for a in operand.arguments))
    if operand.index is None:
        return operand.literal
    value = values[operand.index]
    if isinstance(value, Unavailable):
        raise _Needed(value.reason)
    return value


def _shown(check: Check, values: list[Any]) -> str:
    lines = [shown(source, value) for source, value in zip(check.child_expressions, values)]
    return "\n".join(lines) if lines else "  (no expression to evaluate)"
