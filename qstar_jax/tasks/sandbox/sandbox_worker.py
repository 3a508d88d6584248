"""The sandbox's worker: runs the program, its setup and each check's steps, in the process
the program shares, and answers its supervisor with each check's values as literals.

Stdlib only and free of qstar_jax imports (``sandbox_harness`` loads it inside the
sandbox). Nothing here is trusted by the parent: the program shares this process and can
change any of it. It keeps honest programs judged as Python would judge them and makes
forgery take deliberate work: what the program rebound in modules loaded before it
(builtins, math, ...) is put back before each check and before values are written out;
values are written with the base types' own methods (``plain_literal``); and test code
takes the operands of its comparisons, arithmetic and truth tests through
``require_plain`` (``_Guarded``). The program runs as module ``__program__``.
"""

from __future__ import annotations

import ast
import json
import linecache
import os
import socket
import struct
import sys
import traceback
import types

from sandbox_literals import NotPlain, plain_literal, require_plain

LENGTH = struct.Struct(">I")
ERROR_KINDS = ("exception", "memory", "not_plain")
ERROR_TEXT_LIMIT = 4000
# The program's module name: not "__main__", so its ``if __name__ == "__main__":`` block
# does not run, as under exec in a plain namespace.
_PROGRAM_MODULE = "__program__"
_GUARD = "__sandbox_require_plain__"


class _Raised:
    """An expression that raised where Python might not have evaluated it (a later part
    of ``and``/``or``/a comparison chain): its error goes to the parent, which decides."""

    def __init__(self, message: dict) -> None:
        self.message = message


def run_worker(job: dict, channel: socket.socket) -> None:
    """Run program, setup and checks, answer over ``channel``, then exit. Never returns."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # Built now: once memory is exhausted there may be none left to build it.
    memory_message = frame({"error": "MemoryError", "kind": "memory"})
    restore_modules = _module_state_restorer()
    program = types.ModuleType(_PROGRAM_MODULE)
    sys.modules[_PROGRAM_MODULE] = program
    namespace = program.__dict__

    def send(message: dict) -> None:
        try:
            data = frame(message)
        except MemoryError:
            data = memory_message
        _flush_output()  # the supervisor may kill this process as soon as it has the answer
        channel.sendall(data)

    outcome = _execute(job["program"], "<program>", namespace)
    if outcome == {"ok": True} and job["setup"]:
        outcome = _execute(job["setup"], "<setup>", namespace)
    restore_modules()
    send(outcome)
    if outcome == {"ok": True}:
        for index, check in enumerate(job["checks"]):
            # An inlined test function gets a namespace of its own, as its locals were.
            scope = dict(namespace) if check.get("own_scope") else namespace
            scope[_GUARD] = require_plain
            outcome = _run_check(check["steps"], f"<test {index + 1}>", scope, restore_modules)
            # Before the values are written out; the next check's steps restore again.
            restore_modules()
            if "values" in outcome:
                outcome = _encoded(outcome, job["value_limit"])
            send(outcome)
    os._exit(0)


def _module_state_restorer():
    """A function that puts back what the program rebound in the modules loaded before it
    (``math.pi = 0``, ``builtins.sorted = ...``, ``sys.modules['math'] = fake``), so that
    tests and this file's own code see the real ones. Objects mutated in place, and
    modules the program imported itself, are not restored."""
    modules = dict(sys.modules)
    saved = [(vars(module), dict(vars(module))) for module in modules.values()
             if isinstance(getattr(module, "__dict__", None), dict)]

    def restore() -> None:
        for current, pristine in saved:
            current.update(pristine)
            if len(current) != len(pristine):  # then it holds names the program added
                for name in current.keys() - pristine.keys():
                    del current[name]
        sys.modules.update(modules)

    return restore


def _run_check(steps: list[dict], filename: str, namespace: dict, restore) -> dict:
    """Run a test's steps in order: ``{"ok": True}`` when they are all statements,
    ``{"values": [...], "exprs": [...], "lazy": [...]}`` of every evaluated expression
    otherwise, or the first error of an expression Python would have evaluated. Module
    state is ``restore``d before each step and expression: a program function a test
    calls cannot patch ``math.pi`` for the expected value evaluated after it."""
    values, expressions, lazy = [], [], []
    for step in steps:
        restore()
        if "statement" in step:
            outcome = _execute(step["statement"], filename, namespace, guarded=True)
        else:
            outcome = _evaluate(step["exprs"], set(step.get("lazy", ())), filename, namespace,
                                restore)
        if "error" in outcome:
            return outcome
        if "values" in outcome:
            values += outcome["values"]
            expressions += step["exprs"]
            lazy += [i in step.get("lazy", ()) for i in range(len(step["exprs"]))]
    if all("statement" in step for step in steps):
        return {"ok": True}
    return {"values": values, "exprs": expressions, "lazy": lazy}


def _execute(source: str, filename: str, namespace: dict, *, guarded: bool = False) -> dict:
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        exec(_compiled(source, filename, "exec", guarded), namespace)
    except MemoryError:
        return {"error": "MemoryError", "kind": "memory"}
    except BaseException as error:  # noqa: BLE001 - SystemExit too: exiting is a failure
        return {"error": _describe(error), "kind": "exception"}
    return {"ok": True}


def _evaluate(expressions: list[str], lazy: set[int], filename: str, namespace: dict,
              restore) -> dict:
    """``{"values": [objects]}``, where a lazy expression's error stands in for its value,
    or the error of an expression that is not lazy."""
    values = []
    for index, expression in enumerate(expressions):
        restore()
        try:
            linecache.cache[filename] = (len(expression), None, [expression], filename)
            values.append(eval(_compiled(expression, filename, "eval", True), namespace))
        except MemoryError:
            error = {"error": "MemoryError", "kind": "memory"}
        except BaseException as raised:  # noqa: BLE001
            error = {"error": _describe(raised), "kind": "exception"}
        else:
            continue
        if index not in lazy:
            return error
        values.append(_Raised(error))
    return {"values": values}


def _compiled(source: str, filename: str, mode: str, guarded: bool) -> types.CodeType:
    if not guarded:
        return compile(source, filename, mode)
    tree = _Guarded().visit(ast.parse(source, filename, mode))
    return compile(ast.fix_missing_locations(tree), filename, mode)


class _Guarded(ast.NodeTransformer):
    """Test code whose comparisons, arithmetic, ``not``/``and``/``or`` and asserts take
    their operands through ``require_plain``: inside what the parent cannot split (an
    assert in a loop, ``all(f(x) == y for ...)``), an object that makes itself equal to
    anything, or whose ``__sub__``/``__abs__`` fake a small error, raises instead.
    ``is`` keeps its operands: identity calls no method of theirs."""

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if not all(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
            node.left = _guard(node.left)
            node.comparators = [_guard(c) for c in node.comparators]
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        node.left, node.right = _guard(node.left), _guard(node.right)
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        node.operand = _guard(node.operand)
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        node.values = [_guard(value) for value in node.values]
        return node

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        self.generic_visit(node)
        node.test = _guard(node.test)
        return node


def _guard(node: ast.expr) -> ast.expr:
    return ast.copy_location(ast.Call(ast.Name(_GUARD, ast.Load()), [node], []), node)


def _encoded(outcome: dict, limit: int) -> dict:
    """The values as literals (a lazy one's failure as its error message), or the first
    failure of one that is not lazy."""
    items: list[object] = []
    for expression, value, lazy in zip(outcome["exprs"], outcome["values"], outcome["lazy"]):
        try:
            if type(value) is _Raised:
                item = value.message
            else:
                try:
                    item = plain_literal(value, limit)
                except NotPlain as reason:
                    item = {"error": f"{expression} {reason}", "kind": "not_plain"}
        except MemoryError:
            return {"error": "MemoryError", "kind": "memory"}
        if type(item) is dict and not lazy:
            return item
        items.append(item)
    return {"values": items}


def _describe(error: BaseException) -> str:
    try:
        # Without this file's own frame, where exec/eval was called.
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__.tb_next))
    except BaseException:  # noqa: BLE001 - a hostile __str__ must not take the worker down
        text = type(error).__name__
    return text[-ERROR_TEXT_LIMIT:]


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - the program may have replaced or closed them
            pass


def frame(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return LENGTH.pack(len(body)) + body
