"""Run untrusted Python (a generated MBPP program) against its tests, and say if it passed.

Each call starts a fresh interpreter (``python -I``, the caller's own) in its own session,
under bubblewrap where it works (see ``sandbox_isolation``), with limits on address
space, CPU time, file size, open files and processes, a scrubbed environment, stdin from
``/dev/null`` and a scratch working directory deleted afterwards. The whole process tree
is killed on timeout and after every call, and nothing the program started outlives it.
Clean-up that fails after the run (see ``sandbox_cleanup``) is logged, never the verdict.

Limits, plainly: ``memory_mb`` caps each process's address space (RLIMIT_AS), and the
program may run up to ``_PROCESS_LIMIT`` processes and threads, so a run can hold about
that many times ``memory_mb``. Disk: each file is capped at ``_FILE_SIZE_LIMIT``; under
bubblewrap 0.8 or later all the program writes goes to two tmpfs of
``sandbox_isolation.TMPFS_BYTES`` (memory), while with limits alone (or an older
bubblewrap) the number of files, and so the space used, is not capped.

The parent decides pass/fail: the child returns test values as plain literals over a pipe
only its supervisor holds, in nonce-authenticated report lines (``sandbox_harness``), and
the parent compares them with literal expected values, which never enter the sandbox
(``sandbox_checks``). Exiting early, ``sys.exit(0)``, ``os._exit(0)``, always-equal
objects, patched builtins, modules or ``AssertionError``, printed "PASSED" markers and
killing or stopping the supervisor all end as something other than "passed".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Literal

from qstar_jax.tasks.sandbox.sandbox_checks import Check, check_failure, parse_check
from qstar_jax.tasks.sandbox.sandbox_cleanup import make_scratch, remove_files_of, remove_tree
from qstar_jax.tasks.sandbox.sandbox_isolation import (
    HARNESS, SANDBOX_ENV, Identity, bubblewrap_command, bubblewrap_for, kill_processes_of,
    sandbox_identity, threads_of)
from qstar_jax.tasks.sandbox.sandbox_streams import SandboxStreams

logger = logging.getLogger(__name__)

Status = Literal["passed", "failed", "timeout", "error", "memory_exceeded", "killed"]

_PROCESS_LIMIT = 32  # processes and threads the program may run at once
_FILE_SIZE_LIMIT = 16 << 20
_OPEN_FILES_LIMIT = 64
_VALUE_LIMIT = 1 << 20  # characters of one returned value's literal
_OUTPUT_LIMIT = 4096  # bytes of program output kept for the detail
_REPORT_LIMIT = 16 << 20
_DRAIN_GRACE_S = 0.5
_MIN_MEMORY_MB = 64


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExecResult:
    """Outcome of one sandboxed run. ``detail`` says which test failed and why, or what
    stopped the program, followed by its (truncated) output."""

    passed: bool
    status: Status
    detail: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Run:
    """What came back from the child."""

    report: list[dict[str, Any]] | None  # None: corrupted or forged
    report_problem: str
    timed_out: bool
    exit_code: int  # of the process started: the supervisor, or bwrap around it
    bubblewrap: bool
    output: str  # the first _OUTPUT_LIMIT bytes, decoded
    output_bytes: int  # how many the program wrote in all


def run_program(program: str, tests: list[str], *, setup: str = "", timeout_s: float = 5.0,
                memory_mb: int = 512, isolation: str = "auto") -> ExecResult:
    """Run ``program``, then ``setup`` (e.g. an MBPP record's test_imports and
    test_setup_code) in the same namespace, then each test, in a sandbox.

    ``tests`` are Python source strings, usually ``assert CALL == EXPECTED``.
    ``timeout_s`` is wall-clock for the whole run, interpreter start included.
    ``isolation``: "auto" (bubblewrap when it works, else resource limits alone, with a
    one-time warning), "bubblewrap" (required) or "limits".
    """
    _check_arguments(program, tests, setup, timeout_s, memory_mb)
    checks = [parse_check(test, number) for number, test in enumerate(tests, start=1)]
    bwrap = bubblewrap_for(isolation)
    identity = sandbox_identity(bubblewrap=bwrap is not None)
    scratch = make_scratch(identity)
    try:
        run = _run_in_sandbox(program, setup, checks, timeout_s=timeout_s, memory_mb=memory_mb,
                              bwrap=bwrap, identity=identity, scratch=scratch)
    finally:
        _clean_up("removing the scratch directory", remove_tree, scratch)
    return _verdict(checks, run, timeout_s=timeout_s)


def _check_arguments(program: Any, tests: Any, setup: Any, timeout_s: Any, memory_mb: Any) -> None:
    if not isinstance(program, str):
        raise TypeError(f"program must be Python source as str, got {type(program).__name__}")
    if not isinstance(setup, str):
        raise TypeError(f"setup must be Python source as str, got {type(setup).__name__}")
    if isinstance(tests, str) or not isinstance(tests, (list, tuple)):
        raise TypeError(f"tests must be a list of test source strings, got {type(tests).__name__}")
    if not tests:
        raise ValueError("tests is empty: a program with no tests cannot be graded "
                         "(pass at least one, e.g. 'assert True' to only check that it loads)")
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if not (isinstance(memory_mb, int) and memory_mb >= _MIN_MEMORY_MB):
        raise ValueError(f"memory_mb must be an int >= {_MIN_MEMORY_MB} (the interpreter "
                         f"itself needs that much address space), got {memory_mb!r}")


def _run_in_sandbox(program: str, setup: str, checks: list[Check], *, timeout_s: float,
                    memory_mb: int, bwrap: str | None, identity: Identity | None,
                    scratch: str) -> _Run:
    nonce = secrets.token_hex(16)
    job = json.dumps({
        "program": program, "setup": setup, "checks": [c.child_job() for c in checks],
        "limits": _limits(timeout_s, memory_mb, bwrap is not None, identity),
        "identity": None if identity is None else identity.as_job(),
        # Bubblewrap has its own; as root, limits alone can still leave the network.
        "new_network": bwrap is None and identity is not None,
        "value_limit": _VALUE_LIMIT,
    }).encode()
    stdin = len(job).to_bytes(4, "big") + job + nonce.encode("ascii")
    report_fd, report_write_fd = os.pipe()
    command = [sys.executable, "-I", str(HARNESS), str(report_write_fd)]
    if bwrap is not None:
        command = bubblewrap_command(bwrap, scratch=scratch, as_root=identity is not None) + command
    deadline = time.monotonic() + timeout_s
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=(report_write_fd,), cwd=scratch, start_new_session=True,
            env={**SANDBOX_ENV, "HOME": scratch, "TMPDIR": scratch, "PWD": scratch})
    except BaseException:
        os.close(report_fd)
        raise
    finally:
        os.close(report_write_fd)
    streams = SandboxStreams(process, report_fd, stdin, output_limit=_OUTPUT_LIMIT,
                             report_limit=_REPORT_LIMIT)
    try:
        finished = streams.pump_until_report_ends(deadline)
    finally:
        try:
            _kill_everything(process, identity, bwrap is not None, scratch)
            streams.drain_output(_DRAIN_GRACE_S)
        finally:
            streams.close()
    report, problem = _parse_report(bytes(streams.report), nonce, streams.report_overflowed)
    return _Run(report=report, report_problem=problem, timed_out=not finished,
                exit_code=process.returncode, bubblewrap=bwrap is not None,
                output=streams.output.decode(errors="replace"), output_bytes=streams.output_bytes)


def _limits(timeout_s: float, memory_mb: int, bubblewrap: bool,
            identity: Identity | None) -> dict[str, int]:
    processes = _PROCESS_LIMIT
    if identity is None and not bubblewrap:
        # The program runs as the caller, whose threads all count against RLIMIT_NPROC.
        processes += threads_of(os.getuid())
    return {"address_space_bytes": memory_mb << 20, "cpu_seconds": math.ceil(timeout_s) + 1,
            "file_size_bytes": _FILE_SIZE_LIMIT, "open_files": _OPEN_FILES_LIMIT,
            "processes": processes}


def _kill_everything(process: subprocess.Popen, identity: Identity | None, bubblewrap: bool,
                     scratch: str) -> None:
    """SIGKILL the session's process group (with bubblewrap, that takes down its pid
    namespace), then, for a throwaway uid, every process it still has and its files in
    shared directories. Called once: until ``wait`` the group id cannot be reused."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    if identity is not None:
        _clean_up("killing the sandbox user's processes", kill_processes_of, identity.uid)
        if not bubblewrap:
            _clean_up("removing the sandbox user's files", remove_files_of, identity.uid,
                      sparing=scratch)


def _clean_up(what: str, action: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """One clean-up step after the run: its failure is logged, and never the verdict."""
    try:
        action(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - the run itself is over and judged
        logger.error("code sandbox: %s failed: %s: %s", what, type(error).__name__, error)


def _parse_report(raw: bytes, nonce: str, overflowed: bool) -> tuple[list[dict] | None, str]:
    """The supervisor's records in order, or None with the reason they cannot be trusted."""
    if overflowed:
        return None, f"the report exceeded {_REPORT_LIMIT} bytes"
    records = []
    # A line cut short by the kill at a timeout is not part of the report.
    for line in raw.decode(errors="replace").split("\n")[:-1]:
        try:
            record = json.loads(line)
        except ValueError:
            return None, f"unreadable report line {line[:200]!r}"
        if not isinstance(record, dict) or record.get("nonce") != nonce:
            return None, f"report line without this run's nonce: {line[:200]!r}"
        records.append(record)
    steps = [record["step"] for record in records]
    expected = ["program", *range(len(steps))][:len(steps)]
    if steps and steps[-1] == "end":
        expected[-1] = "end"
    if steps != expected:
        return None, f"report steps out of order: {steps[:10]}"
    return records, ""


def _verdict(checks: list[Check], run: _Run, *, timeout_s: float) -> ExecResult:
    status, summary = _decide(checks, run, timeout_s=timeout_s)
    detail = summary
    if run.output_bytes > _OUTPUT_LIMIT:
        detail += (f"\n--- program output (truncated to its first {_OUTPUT_LIMIT} of "
                   f"{run.output_bytes} bytes) ---\n{run.output}")
    elif run.output_bytes:
        detail += f"\n--- program output ---\n{run.output}"
    return ExecResult(passed=status == "passed", status=status, detail=detail)


def _decide(checks: list[Check], run: _Run, *, timeout_s: float) -> tuple[Status, str]:
    if run.report is None:
        return "error", f"the sandbox report cannot be trusted: {run.report_problem}"
    by_step = {record["step"]: record for record in run.report}
    program = by_step.get("program")
    if program is None:
        return _unfinished(run, by_step.get("end"), "while the program was loading", timeout_s)
    if "error" in program:
        status = "memory_exceeded" if program["kind"] == "memory" else "error"
        return status, f"the program (or setup) raised before the tests ran:\n{program['error']}"
    for number, check in enumerate(checks, start=1):
        record = by_step.get(number - 1)
        if record is None:
            return _unfinished(run, by_step.get("end"), f"during test {number}", timeout_s)
        failure = _check_failure(check, record)
        if failure is not None:
            status = "memory_exceeded" if record.get("kind") == "memory" else "failed"
            return status, f"test {number} failed: {check.test}\n{failure}"
    return "passed", f"all {len(checks)} tests passed"


def _check_failure(check: Check, record: dict[str, Any]) -> str | None:
    if "error" in record:
        return record["error"]
    if check.condition is None:
        if record.get("ok") is True:
            return None
        return "the sandbox sent no verdict for this statement"
    if "values" not in record:
        return "the sandbox sent no values for this test"
    return check_failure(check, record["values"])


def _unfinished(run: _Run, end: dict[str, Any] | None, where: str,
                timeout_s: float) -> tuple[Status, str]:
    """Why the report stops short of a verdict."""
    if run.timed_out:
        return "timeout", f"timed out after {timeout_s:g} s {where}"
    if end is not None:
        if end["protocol_error"]:
            return "error", (f"the program broke the sandbox protocol {where}: "
                             f"{end['protocol_error']}")
        if end["worker_signal"] is not None:
            return _signalled(end["worker_signal"], "the program's process", where)
        return "error", f"the program's process exited with status {end['worker_exit']} {where}"
    code = run.exit_code
    if code < 0 or (run.bubblewrap and code > 128):  # bwrap exits 128 + signal
        return _signalled(-code if code < 0 else code - 128, "the sandbox supervisor", where)
    return "error", f"the sandbox supervisor exited with status {code} {where}"


def _signalled(number: int, who: str, where: str) -> tuple[Status, str]:
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    if number == signal.SIGXCPU:
        return "timeout", f"{who} ran out of CPU time ({name}) {where}"
    return "killed", f"{who} was killed by {name} {where}"
