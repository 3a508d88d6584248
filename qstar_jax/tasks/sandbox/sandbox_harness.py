"""Child side of the code sandbox: a supervisor, and the worker that runs the program.

``sandbox.py`` starts this file as ``python -I sandbox_harness.py REPORT_FD`` and writes to
its stdin a length-prefixed JSON job, then a nonce. It is stdlib only and imports nothing
from qstar_jax: inside bubblewrap only the interpreter is visible, not the repository.

Trust split. The supervisor (this process) reads the job, applies resource limits, drops to
the sandbox's user, then forks the worker. Only after the fork does it read the nonce, and
the worker closes the report pipe before any program code runs; the supervisor is not
dumpable, so the worker cannot ptrace it or open its ``/proc`` files. Program code
therefore can neither learn the nonce nor write to the report: all it can do is return
values for the test expressions, which the supervisor relays and the parent judges
against expected values that never enter the sandbox.

Worker -> supervisor messages (4-byte big-endian length + JSON), one for the program (and
setup), then one per check, in order::

    {"ok": true}                                  program/setup ran; a check of statements only ran
    {"values": ["<literal>", ...]}                the check's expressions, as Python literals
    {"error": "<text>", "kind": "exception" | "memory" | "not_plain"}

Supervisor -> parent report lines (JSON, each with the nonce)::

    {"nonce": N, "step": "program" | <check index>, ...one worker message...}
    {"nonce": N, "step": "end", "complete": bool, "worker_exit": int | null,
     "worker_signal": int | null, "protocol_error": str | null}
"""

from __future__ import annotations

import builtins
import ctypes
import json
import linecache
import math
import os
import resource
import signal
import socket
import struct
import sys
import traceback
import types

_LENGTH = struct.Struct(">I")
_NONCE_CHARS = 32
_MESSAGE_LIMIT = 4 << 20
_ERROR_TEXT_LIMIT = 4000
_PLAIN_DEPTH_LIMIT = 64
_ERROR_KINDS = ("exception", "memory", "not_plain")

_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38
_CAP_DAC_READ_SEARCH = 2
_CAPABILITY_VERSION_3 = 0x20080522


class _CapabilityHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapabilitySet(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class _NotPlain(Exception):
    """A value that is not plain data (builtin scalars and containers only)."""


def main(argv: list[str]) -> None:
    report_fd = int(argv[1])
    (length,) = _LENGTH.unpack(_read_exact(0, _LENGTH.size))
    job = json.loads(_read_exact(0, length))
    libc = ctypes.CDLL(None, use_errno=True)
    _apply_limits(job["limits"])
    if job["new_network"]:
        _leave_the_network(libc)
    if job["identity"] is not None:
        _drop_privileges(libc, **job["identity"])
    _prctl(libc, _PR_SET_NO_NEW_PRIVS, 1)
    _prctl(libc, _PR_SET_DUMPABLE, 0)
    _die_with_parent(libc)
    supervisor_end, worker_end = socket.socketpair()
    worker_pid = os.fork()
    if worker_pid == 0:
        os.close(report_fd)
        supervisor_end.close()
        _die_with_parent(libc)
        # Dumpable again: the program may read its own /proc files (they hold nothing of
        # the supervisor's), while the supervisor's stay closed to it.
        _prctl(libc, _PR_SET_DUMPABLE, 1)
        try:
            _run_worker(job, worker_end)
        finally:
            os._exit(1)  # never fall through into the supervisor's code
    worker_end.close()
    nonce = _read_exact(0, _NONCE_CHARS).decode("ascii")
    os.close(0)
    _supervise(supervisor_end, report_fd, nonce, worker_pid, len(job["checks"]))


# ---------------------------------------------------------------- confinement (as root)

def _apply_limits(limits: dict[str, int]) -> None:
    """Soft and hard limits alike, set before dropping privileges so they cannot be raised."""
    for name, value in (("RLIMIT_AS", limits["address_space_bytes"]),
                        ("RLIMIT_FSIZE", limits["file_size_bytes"]),
                        ("RLIMIT_NOFILE", limits["open_files"]),
                        ("RLIMIT_NPROC", limits["processes"]),
                        ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
    # SIGXCPU at the soft limit, SIGKILL a second later: a backstop for the wall clock.
    cpu = limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))


def _leave_the_network(libc: ctypes.CDLL) -> None:
    """A network namespace of our own, holding only a loopback that is down: no route to
    anything. Needs CAP_SYS_ADMIN (root outside a container that withholds it); without
    it the network stays reachable, the gap ``sandbox_isolation`` documents for limits."""
    libc.unshare(_CLONE_NEWNET)


def _drop_privileges(libc: ctypes.CDLL, *, uid: int, gid: int, keep_read_search: bool) -> None:
    """Become ``uid``/``gid`` with no supplementary groups and no capabilities, except
    CAP_DAC_READ_SEARCH when the interpreter lives where that user cannot read it."""
    if keep_read_search:
        _prctl(libc, _PR_SET_KEEPCAPS, 1)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if keep_read_search:
        header = _CapabilityHeader(_CAPABILITY_VERSION_3, 0)
        sets = (_CapabilitySet * 2)()
        sets[0].effective = sets[0].permitted = 1 << _CAP_DAC_READ_SEARCH
        if libc.capset(ctypes.byref(header), sets) != 0:
            raise OSError(ctypes.get_errno(), "capset(CAP_DAC_READ_SEARCH) failed")
        _prctl(libc, _PR_SET_KEEPCAPS, 0)


def _die_with_parent(libc: ctypes.CDLL) -> None:
    # Cleared by fork and by credential changes, so set after both.
    parent = os.getppid()
    _prctl(libc, _PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _prctl(libc: ctypes.CDLL, option: int, value: int) -> None:
    if libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


# ---------------------------------------------------------------- supervisor

def _supervise(channel: socket.socket, report_fd: int, nonce: str, worker_pid: int,
               check_count: int) -> None:
    def report(step: object, fields: dict) -> None:
        line = json.dumps({"nonce": nonce, "step": step, **fields}) + "\n"
        _write_all(report_fd, line.encode())

    steps: list[object] = ["program", *range(check_count)]
    received = 0
    protocol_error = None
    try:
        for step in steps:
            message = _receive(channel)
            if message is None:
                break
            fields = _validated(message)
            report(step, fields)
            received += 1
            if step == "program" and "ok" not in fields:
                break
    except (ValueError, OSError, RecursionError) as error:
        protocol_error = f"{type(error).__name__}: {error}"[:_ERROR_TEXT_LIMIT]
    complete = received == len(steps)
    if complete or protocol_error is not None:
        os.kill(worker_pid, signal.SIGKILL)
    _, status = os.waitpid(worker_pid, 0)
    report("end", {
        "complete": complete,
        "worker_exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "worker_signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "protocol_error": protocol_error,
    })
    os.close(report_fd)


def _receive(channel: socket.socket) -> dict | None:
    header = _receive_exact(channel, _LENGTH.size)
    if header is None:
        return None
    (length,) = _LENGTH.unpack(header)
    if length > _MESSAGE_LIMIT:
        raise ValueError(f"worker message of {length} bytes exceeds {_MESSAGE_LIMIT}")
    body = _receive_exact(channel, length)
    if body is None:
        raise ValueError("worker channel closed inside a message")
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ValueError("worker message is not an object")
    return message


def _validated(message: dict) -> dict:
    """The worker is untrusted: pass on only well-formed fields of one message shape."""
    if message == {"ok": True}:
        return {"ok": True}
    if set(message) == {"values"}:
        values = message["values"]
        if isinstance(values, list) and all(isinstance(v, str) for v in values):
            return {"values": values}
    if set(message) == {"error", "kind"}:
        error, kind = message["error"], message["kind"]
        if isinstance(error, str) and kind in _ERROR_KINDS:
            return {"error": error[:_ERROR_TEXT_LIMIT], "kind": kind}
    raise ValueError(f"malformed worker message with keys {sorted(message)[:5]}")


# ---------------------------------------------------------------- worker

def _run_worker(job: dict, channel: socket.socket) -> None:
    """Run program, setup and checks, answer over ``channel``, then exit. Never returns."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # Built now: once memory is exhausted there may be none left to build it.
    memory_message = _frame({"error": "MemoryError", "kind": "memory"})
    restore_builtins = _builtins_restorer()
    program = types.ModuleType("__main__")
    sys.modules["__main__"] = program
    namespace = program.__dict__

    def send(message: dict) -> None:
        try:
            frame = _frame(message)
        except MemoryError:
            frame = memory_message
        _flush_output()  # the supervisor may kill this process as soon as it has the answer
        channel.sendall(frame)

    outcome = _execute(job["program"], "<program>", namespace)
    if outcome == {"ok": True} and job["setup"]:
        outcome = _execute(job["setup"], "<setup>", namespace)
    restore_builtins()
    send(outcome)
    if outcome == {"ok": True}:
        for index, check in enumerate(job["checks"]):
            # An inlined test function gets a namespace of its own, as its locals were.
            scope = dict(namespace) if check.get("own_scope") else namespace
            outcome = _run_check(check["steps"], f"<test {index + 1}>", scope)
            restore_builtins()
            if "values" in outcome:
                outcome = _encoded(outcome["values"], outcome["exprs"], job["value_limit"])
            send(outcome)
            restore_builtins()
    os._exit(0)


def _run_check(steps: list[dict], filename: str, namespace: dict) -> dict:
    """Run a test's steps in order: ``{"ok": True}`` when they are all statements,
    ``{"values": [objects], "exprs": [...]}`` of every evaluated expression otherwise, or
    the first error."""
    values, expressions = [], []
    for step in steps:
        if "statement" in step:
            outcome = _execute(step["statement"], filename, namespace)
        else:
            outcome = _evaluate(step["exprs"], filename, namespace)
        if "error" in outcome:
            return outcome
        if "values" in outcome:
            values += outcome["values"]
            expressions += step["exprs"]
    if all("statement" in step for step in steps):
        return {"ok": True}
    return {"values": values, "exprs": expressions}


def _builtins_restorer():
    """A function that undoes whatever the program did to the builtins module, so that
    tests and the harness's own code (json, socket) see the real ones."""
    pristine = dict(vars(builtins))
    current = vars(builtins)

    def restore() -> None:
        for name in current.keys() - pristine.keys():
            del current[name]
        current.update(pristine)

    return restore


def _execute(source: str, filename: str, namespace: dict) -> dict:
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        exec(compile(source, filename, "exec"), namespace)
    except MemoryError:
        return {"error": "MemoryError", "kind": "memory"}
    except BaseException as error:  # noqa: BLE001 - SystemExit too: exiting is a failure
        return {"error": _describe(error), "kind": "exception"}
    return {"ok": True}


def _evaluate(expressions: list[str], filename: str, namespace: dict) -> dict:
    """``{"values": [objects]}``, or the error an expression raised."""
    values = []
    try:
        for expression in expressions:
            linecache.cache[filename] = (len(expression), None, [expression], filename)
            values.append(eval(compile(expression, filename, "eval"), namespace))
    except MemoryError:
        return {"error": "MemoryError", "kind": "memory"}
    except BaseException as error:  # noqa: BLE001
        return {"error": _describe(error), "kind": "exception"}
    return {"values": values}


def _encoded(values: list[object], expressions: list[str], limit: int) -> dict:
    """The values as literals, or which one is not plain data."""
    literals = []
    for expression, value in zip(expressions, values):
        try:
            literals.append(_plain_literal(value, limit))
        except _NotPlain as reason:
            return {"error": f"{expression} {reason}", "kind": "not_plain"}
        except MemoryError:
            return {"error": "MemoryError", "kind": "memory"}
    return {"values": literals}


def _plain_literal(value: object, limit: int) -> str:
    """``value`` as a Python literal that ``ast.literal_eval`` reads back to an equal value.

    Only exact builtin types (no subclasses, so no program-defined ``__eq__`` or
    ``__repr__``) are accepted; ``frozenset`` and NaN have no literal form.
    """
    parts: list[str] = []
    budget = [limit]

    def emit(text: str) -> None:
        budget[0] -= len(text)
        if budget[0] < 0:
            raise _NotPlain(f"returned a value whose literal exceeds {limit} characters")
        parts.append(text)

    def walk(item: object, depth: int) -> None:
        kind = type(item)
        if depth > _PLAIN_DEPTH_LIMIT:
            raise _NotPlain(f"returned a value nested deeper than {_PLAIN_DEPTH_LIMIT}")
        if item is None or kind in (bool, int, str, bytes):
            try:
                emit(repr(item))
            except ValueError as error:  # an int past sys.get_int_max_str_digits()
                raise _NotPlain(f"returned an int too long to print: {error}") from None
        elif kind is float:
            if math.isnan(item):
                raise _NotPlain("returned NaN, which has no literal form")
            emit(repr(item) if math.isfinite(item) else ("1e999" if item > 0 else "-1e999"))
        elif kind is complex:
            if not (math.isfinite(item.real) and math.isfinite(item.imag)):
                raise _NotPlain("returned a non-finite complex number")
            emit(repr(item))
        elif kind in (list, tuple, set):
            if kind is set and not item:
                emit("set()")
                return
            emit({list: "[", tuple: "(", set: "{"}[kind])
            for position, element in enumerate(item):
                if position:
                    emit(", ")
                walk(element, depth + 1)
            emit({list: "]", tuple: ",)" if len(item) == 1 else ")", set: "}"}[kind])
        elif kind is dict:
            emit("{")
            for position, (key, element) in enumerate(item.items()):
                if position:
                    emit(", ")
                walk(key, depth + 1)
                emit(": ")
                walk(element, depth + 1)
            emit("}")
        else:
            raise _NotPlain(f"returned an object of type {kind.__name__}, which is not plain "
                            "data (builtin scalars and list/tuple/set/dict only)")

    walk(value, 0)
    return "".join(parts)


def _describe(error: BaseException) -> str:
    try:
        # Without the harness's own frame, where exec/eval was called.
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__.tb_next))
    except BaseException:  # noqa: BLE001 - a hostile __str__ must not take the worker down
        text = type(error).__name__
    return text[-_ERROR_TEXT_LIMIT:]


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - the program may have replaced or closed them
            pass


# ---------------------------------------------------------------- framing

def _frame(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return _LENGTH.pack(len(body)) + body


def _read_exact(fd: int, count: int) -> bytes:
    """Exactly ``count`` bytes, never more: what follows in the pipe stays in the pipe."""
    chunks = []
    while count:
        chunk = os.read(fd, count)
        if not chunk:
            raise EOFError("the parent closed the job stream early")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def _receive_exact(channel: socket.socket, count: int) -> bytes | None:
    chunks = []
    while count:
        chunk = channel.recv(min(count, 1 << 16))
        if not chunk:
            if chunks:
                raise ValueError("worker channel closed inside a message")
            return None
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


if __name__ == "__main__":
    main(sys.argv)
