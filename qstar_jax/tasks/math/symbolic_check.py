"""Sympy equality checks in a child process that the caller can always outwait.

sympy is the grader's last resort (``2\\sqrt2`` vs ``\\sqrt8``) and the one stage that
could hang or exhaust memory on hostile input, so it never runs in the grading process:
``SymbolicChecker`` keeps one warm worker (``symbolic_worker.py`` under ``python -I``,
its own session, an address-space cap), sends it one pair at a time, and kills it when
a reply is late; the next check starts a fresh one. The start-up (a Python start and a
sympy import, about a second; a warm check takes about a millisecond) is paid once per
process and thread: ``shared_checker`` keeps that one warm checker, which ``math_equal``
uses unless it is handed its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import selectors
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

_WORKER_SCRIPT = Path(__file__).with_name("symbolic_worker.py")
_MAX_REPLY_BYTES = 4096


@dataclasses.dataclass(frozen=True, kw_only=True)
class SymbolicCheckConfig:
    """``timeout_s``: wall clock for one check; ``budget_s``: for all the checks of one
    grading call together; ``memory_limit_mb``: the worker's address space (a sympy
    worker peaks near 60 MiB); ``startup_timeout_s``: Python start plus sympy import on
    a loaded machine."""

    timeout_s: float = 3.0
    budget_s: float = 10.0
    memory_limit_mb: int = 512
    startup_timeout_s: float = 60.0

    def __post_init__(self):
        for name in ("timeout_s", "budget_s", "memory_limit_mb", "startup_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SymbolicCheckConfig.{name} must be positive, got "
                                 f"{getattr(self, name)!r}")


# The one piece of module state: a warm worker per process and thread, so grading
# thousands of answers does not start thousands of interpreters.
_PER_THREAD = threading.local()


def shared_checker() -> SymbolicChecker:
    """This process's and thread's warm checker, made on first use. A process forked
    from one that had a checker makes its own: the parent's worker pipes are not its to
    use, nor its worker to stop."""
    checker = getattr(_PER_THREAD, "checker", None)
    if checker is None or _PER_THREAD.pid != os.getpid():
        if checker is not None:
            checker.disown()
        _PER_THREAD.checker, _PER_THREAD.pid = SymbolicChecker(), os.getpid()
    return _PER_THREAD.checker


class SymbolicWorkerError(RuntimeError):
    """The worker could not start: the environment is broken, not the answer."""


class _WorkerGoneError(Exception):
    """The worker exited; it is replaced, the request asked again."""


class SymbolicChecker:
    """A restartable sympy worker; use as a context manager or call ``close()``.

    ``equal`` answers True only when the worker proved the two normalised answers equal
    in time; a timeout, a crash or an unparseable answer is False. Not thread-safe:
    give each thread its own checker.
    """

    def __init__(self, config: SymbolicCheckConfig = SymbolicCheckConfig()):
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None
        self._selector: selectors.BaseSelector | None = None
        self._finalizer: weakref.finalize | None = None

    def __enter__(self) -> SymbolicChecker:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def worker_pid(self) -> int | None:
        """The running worker's process id, or None when none is running."""
        return None if self._process is None else self._process.pid

    def equal(self, pred: str, ref: str, *, deadline: float | None = None) -> bool:
        """Whether sympy shows ``pred == ref`` (normalised LaTeX) within the per-check
        timeout and, if given, before ``deadline`` (a ``time.monotonic()`` value). A
        worker found dead when asked is replaced and asked once more.

        Raises:
            SymbolicWorkerError: the worker cannot start at all (e.g. sympy missing).
        """
        for _ in range(2):
            limit = self.config.timeout_s
            if deadline is not None:
                limit = min(limit, deadline - time.monotonic())
            if limit <= 0:
                return False
            self._ensure_started()
            request = json.dumps({"pred": pred, "ref": ref, "time_limit_s": limit}) + "\n"
            try:
                self._process.stdin.write(request.encode())
                self._process.stdin.flush()
                reply = self._read_reply(time.monotonic() + limit)
            except (OSError, _WorkerGoneError):
                self.close()
                continue
            if reply is None:  # late or garbled: the worker is killed, the answer unproven
                self.close()
                return False
            return reply.get("equal") is True
        return False

    def close(self) -> None:
        """Stops the worker (if any); the next check starts a new one."""
        if self._finalizer is not None:
            self._finalizer()
        self._process = self._selector = self._finalizer = None

    def disown(self) -> None:
        """Forgets the worker without stopping it: in a forked child, the worker is the
        parent's."""
        if self._finalizer is not None:
            self._finalizer.detach()
        self._process = self._selector = self._finalizer = None

    def _ensure_started(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self.close()
        memory_limit = self.config.memory_limit_mb * 1024 * 1024
        self._process = subprocess.Popen(
            [sys.executable, "-I", str(_WORKER_SCRIPT), str(memory_limit)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._process.stdout, selectors.EVENT_READ)
        self._finalizer = weakref.finalize(self, _stop, self._process, self._selector)
        try:
            ready = self._read_reply(time.monotonic() + self.config.startup_timeout_s)
        except _WorkerGoneError:
            ready = None
        if ready is None or ready.get("ready") is not True:
            try:
                exit_code = self._process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                exit_code = None
            self.close()
            how = (f"exited with code {exit_code}" if exit_code is not None else
                   f"was not ready within {self.config.startup_timeout_s} s")
            raise SymbolicWorkerError(
                f"the sympy worker ({sys.executable} -I {_WORKER_SCRIPT}) {how}; check "
                f"that `{sys.executable} -c 'import sympy'` works, or raise "
                f"SymbolicCheckConfig.startup_timeout_s on a slow machine")

    def _read_reply(self, deadline: float) -> dict | None:
        """One JSON line from the worker, or None on timeout or garbage.

        Raises:
            _WorkerGoneError: the worker closed its output (it died).
        """
        received = b""
        descriptor = self._process.stdout.fileno()
        while not received.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(received) > _MAX_REPLY_BYTES:
                return None
            if not self._selector.select(timeout=remaining):
                continue
            chunk = os.read(descriptor, _MAX_REPLY_BYTES)
            if not chunk:
                raise _WorkerGoneError
            received += chunk
        try:
            reply = json.loads(received)
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None


def _stop(process: subprocess.Popen[bytes], selector: selectors.BaseSelector) -> None:
    """Kills and reaps the worker; also run at garbage collection and interpreter exit."""
    selector.close()
    if process.poll() is None:
        process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout):
        with contextlib.suppress(OSError):  # unflushed bytes to a dead worker
            stream.close()
