"""Child side of the code sandbox: a supervisor, and (``sandbox_worker``) the worker that
runs the program.

``sandbox.py`` starts this file as ``python -I sandbox_harness.py REPORT_FD`` and writes to
its stdin a length-prefixed JSON job, then a nonce. It and the worker's modules beside it
(``sandbox_worker``, ``sandbox_literals``) are stdlib only and import nothing from
qstar_jax: inside bubblewrap only the interpreter and these files are visible.

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
    {"values": ["<literal>" | ERROR, ...]}        the check's expressions, as literals
                                                  (``sandbox_literals``); ERROR for a lazy
                                                  one (see ``sandbox_checks``) that failed
    ERROR = {"error": "<text>", "kind": "exception" | "memory" | "not_plain"}

Supervisor -> parent report lines (JSON, each with the nonce)::

    {"nonce": N, "step": "program" | <check index>, ...one worker message...}
    {"nonce": N, "step": "end", "complete": bool, "worker_exit": int | null,
     "worker_signal": int | null, "protocol_error": str | null}
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import socket
import sys

# The worker's modules sit beside this file; ``-I`` leaves this folder off sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sandbox_worker import ERROR_KINDS, ERROR_TEXT_LIMIT, LENGTH, run_worker  # noqa: E402

del sys.path[0]
_NONCE_CHARS = 32
_MESSAGE_LIMIT = 4 << 20

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


def main(argv: list[str]) -> None:
    report_fd = int(argv[1])
    (length,) = LENGTH.unpack(_read_exact(0, LENGTH.size))
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
            run_worker(job, worker_end)
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
        protocol_error = f"{type(error).__name__}: {error}"[:ERROR_TEXT_LIMIT]
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
    header = _receive_exact(channel, LENGTH.size)
    if header is None:
        return None
    (length,) = LENGTH.unpack(header)
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
    if set(message) == {"values"} and isinstance(message["values"], list):
        values = [value if isinstance(value, str) else _error(value)
                  for value in message["values"]]
        if None not in values:
            return {"values": values}
    error = _error(message)
    if error is not None:
        return error
    raise ValueError(f"malformed worker message with keys {sorted(message)[:5]}")


def _error(message: object) -> dict | None:
    if isinstance(message, dict) and set(message) == {"error", "kind"}:
        error, kind = message["error"], message["kind"]
        if isinstance(error, str) and kind in ERROR_KINDS:
            return {"error": error[:ERROR_TEXT_LIMIT], "kind": kind}
    return None


# ---------------------------------------------------------------- framing

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
