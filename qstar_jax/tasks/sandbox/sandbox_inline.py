"""HumanEval's test shape, a test function called once on the entry point (``def
check(candidate): assert ...`` then ``check(f)``), turned into top-level statements so
that ``sandbox_checks`` can split its asserts like any other."""

from __future__ import annotations

import ast


def inlined_test_function(statements: list[ast.stmt]) -> list[ast.stmt] | None:
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
