"""Which part of a test the sandbox evaluates, and how the parent decides it passed.

A test such as ``assert remove_odd([1, 2, 3]) == [2]`` is split: the child evaluates only
``remove_odd([1, 2, 3])`` and returns its value as a Python literal of builtin types; the
parent reads it back with ``ast.literal_eval``, checks the types, and compares it with
``[2]``, which never enters the sandbox. A program therefore passes only by computing the
right value: an object whose ``__eq__`` always returns True is not plain data, and
patching builtins, ``AssertionError`` or the child's channel to its supervisor changes
nothing the parent looks at.

Decided in the parent (any operand may be a literal, kept in the parent, or an
expression, evaluated in the child):
  * comparisons: ``==  !=  <  <=  >  >=  in  not in``, chains of them, and ``is`` /
    ``is not`` against ``None``, ``True`` or ``False``;
  * ``math.isclose(a, b, rel_tol=..., abs_tol=...)`` with literal tolerances;
  * ``not X``, ``X and Y`` of the above, and the truth of any other expression's value.
A test of several statements runs them in order in the child, which evaluates the
expressions of each top-level assert of these forms where the assert stands (``r =
f(1)`` then ``assert r == 2``: the child returns ``r``, the parent compares it with 2).
A test in HumanEval's shape, a test function called once on the entry point (``def
check(candidate): assert candidate(1) == 2`` then ``check(f)``), is judged the same way:
its body is inlined (``candidate = f``, then the body's statements) and its asserts are
split as top-level ones, in a namespace of its own (a copy of the program's), as the
function's locals would be. What is left (``is`` between objects, an assert inside a
loop, a test with no assert) the child runs as plain statements and reports only
whether they raised: a program can fake that report (it shares the child's process), so
only the parent's comparisons prove a value right. Builtins are restored before each test.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import operator
from typing import Any, Callable, Union

_COMPARISONS: dict[type[ast.cmpop], tuple[str, Callable[[Any, Any], bool]]] = {
    ast.Eq: ("==", operator.eq), ast.NotEq: ("!=", operator.ne),
    ast.Lt: ("<", operator.lt), ast.LtE: ("<=", operator.le),
    ast.Gt: (">", operator.gt), ast.GtE: (">=", operator.ge),
    ast.In: ("in", lambda a, b: a in b), ast.NotIn: ("not in", lambda a, b: a not in b),
    ast.Is: ("is", operator.is_), ast.IsNot: ("is not", operator.is_not),
}
_SINGLETONS = (None, True, False)
_PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_SHOWN_VALUE_CHARS = 300


class _NotPlain(Exception):
    """A child value that is not a literal of builtin scalars and containers."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Operand:
    """A literal held by the parent, or the value of child expression ``index``."""

    source: str
    index: int | None = None
    literal: Any = None


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


Condition = Union[Comparison, IsClose, Truth, Negation, Conjunction]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChildStep:
    """Statements the child runs, or (``statement`` None) expressions it evaluates."""

    statement: str | None = None
    expressions: tuple[str, ...] = ()


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
        steps = [{"statement": step.statement} if step.statement is not None
                 else {"exprs": list(step.expressions)} for step in self.steps]
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

    inlined = _inlined_test_function(module.body)
    for node in module.body if inlined is None else inlined:
        first = len(builder.expressions)
        condition = builder.condition(node.test) if isinstance(node, ast.Assert) else None
        if condition is None:
            del builder.expressions[first:]  # an undecidable part may have added some
            statements.append(node)
            continue
        flush_statements()
        steps.append(ChildStep(expressions=tuple(builder.expressions[first:])))
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
    try:
        values = [_read_plain(text, source)
                  for text, source in zip(literals, check.child_expressions)]
    except _NotPlain as reason:
        return str(reason)
    try:
        holds = _holds(check.condition, values)
    except Exception as error:  # noqa: BLE001 - e.g. '<' between str and int, as in Python
        return f"{type(error).__name__}: {error}\n{_shown(check, values)}"
    return None if holds else _shown(check, values)


def _inlined_test_function(statements: list[ast.stmt]) -> list[ast.stmt] | None:
    """The statements of a test that ends by calling, once, a test function it defines
    with one parameter (``def check(candidate): ...`` then ``check(f)``), with that call
    replaced by ``candidate = f`` and the function's body; None for any other shape, or
    when the body could not run inlined (``return``, ``yield``, ``global``, ``nonlocal``
    at its level, or the function referred to anywhere but the call)."""
    if not statements:
        return None
    call = statements[-1]
    if not (isinstance(call, ast.Expr) and isinstance(call.value, ast.Call)
            and isinstance(call.value.func, ast.Name) and len(call.value.args) == 1
            and not call.value.keywords and not isinstance(call.value.args[0], ast.Starred)):
        return None
    name = call.value.func.id
    definitions = [node for node in statements[:-1]
                   if isinstance(node, ast.FunctionDef) and node.name == name]
    if len(definitions) != 1:
        return None
    function = definitions[0]
    arguments = function.args
    if (function.decorator_list or arguments.posonlyargs or arguments.kwonlyargs
            or arguments.vararg or arguments.kwarg or arguments.defaults
            or len(arguments.args) != 1):
        return None
    rest = [node for node in statements[:-1] if node is not function]
    uses = sum(isinstance(node, ast.Name) and node.id == name
               for statement in [*rest, *function.body] for node in ast.walk(statement))
    if uses or any(isinstance(node, _NOT_INLINABLE) for node in _own_level(function.body)):
        return None
    binding = ast.Assign(targets=[ast.Name(arguments.args[0].arg, ast.Store())],
                         value=call.value.args[0], lineno=call.lineno)
    return [*rest, ast.fix_missing_locations(binding), *function.body]


_NOT_INLINABLE = (ast.Return, ast.Yield, ast.YieldFrom, ast.Await, ast.Global, ast.Nonlocal)
_NEW_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _own_level(statements: list[ast.stmt]):
    """Every node of ``statements`` outside nested functions, lambdas and classes."""
    pending: list[ast.AST] = list(statements)
    while pending:
        node = pending.pop()
        yield node
        if not isinstance(node, _NEW_SCOPES):
            pending.extend(ast.iter_child_nodes(node))


class _ConditionBuilder:
    """Turns an assert's expression into a Condition, collecting child expressions."""

    def __init__(self, test: str) -> None:
        self.test = test
        self.expressions: list[str] = []

    def condition(self, node: ast.expr) -> Condition | None:
        if isinstance(node, ast.Compare):
            return self.comparison(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self.condition(node.operand)
            return None if inner is None else Negation(inner=inner)
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
            # Exact without short-circuiting: if an earlier part is false the test fails
            # whatever a later part does.
            parts = [self.condition(value) for value in node.values]
            return None if None in parts else Conjunction(parts=tuple(parts))
        if _is_math_isclose(node):
            return self.isclose(node)
        return Truth(operand=self.operand(node))

    def comparison(self, node: ast.Compare) -> Comparison | None:
        if any(type(op) not in _COMPARISONS for op in node.ops):
            return None
        nodes = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, nodes, nodes[1:]):
            singleton = _is_singleton(left) or _is_singleton(right)
            if isinstance(op, (ast.Is, ast.IsNot)) and not singleton:
                return None  # identity of objects does not survive the trip out of the sandbox
        return Comparison(operands=tuple(self.operand(n) for n in nodes),
                          operators=tuple(type(op) for op in node.ops))

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
        self.expressions.append(source)
        return Operand(source=source, index=len(self.expressions) - 1)


_NOT_LITERAL = object()


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL


def _is_singleton(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and any(node.value is s for s in _SINGLETONS)


def _is_math_isclose(node: ast.expr) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "isclose" and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "math" and len(node.args) == 2)


def _holds(condition: Condition, values: list[Any]) -> bool:
    if isinstance(condition, Comparison):
        operands = [_value(o, values) for o in condition.operands]
        return all(_COMPARISONS[op][1](a, b)
                   for op, a, b in zip(condition.operators, operands, operands[1:]))
    if isinstance(condition, IsClose):
        return math.isclose(_value(condition.first, values), _value(condition.second, values),
                            rel_tol=condition.rel_tol, abs_tol=condition.abs_tol)
    if isinstance(condition, Truth):
        return bool(_value(condition.operand, values))
    if isinstance(condition, Negation):
        return not _holds(condition.inner, values)
    return all(_holds(part, values) for part in condition.parts)


def _value(operand: Operand, values: list[Any]) -> Any:
    return operand.literal if operand.index is None else values[operand.index]


def _read_plain(text: str, source: str) -> Any:
    """A child's literal back as data, refusing anything but builtin scalars/containers."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise _NotPlain(f"{source} returned something that is not a plain literal: "
                          f"{text[:_SHOWN_VALUE_CHARS]!r}") from None
    if not _is_plain(value):
        raise _NotPlain(f"{source} returned a non-plain value: {text[:_SHOWN_VALUE_CHARS]!r}")
    return value


def _is_plain(value: Any) -> bool:
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return True
    if kind in (list, tuple, set):
        return all(_is_plain(item) for item in value)
    if kind is dict:
        return all(_is_plain(k) and _is_plain(v) for k, v in value.items())
    return False


def _shown(check: Check, values: list[Any]) -> str:
    lines = []
    for source, value in zip(check.child_expressions, values):
        text = repr(value)
        if len(text) > _SHOWN_VALUE_CHARS:
            text = text[:_SHOWN_VALUE_CHARS] + "..."
        lines.append(f"  {source} returned {text}")
    return "\n".join(lines) if lines else "  (no expression to evaluate)"
