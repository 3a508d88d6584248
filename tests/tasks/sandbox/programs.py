"""What the sandbox tests share: the programs and tests they grade, the timeouts, and
the isolations each case runs under (bubblewrap where it works here, resource limits
alone)."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

from qstar_jax.tasks.sandbox.sandbox import ExecResult, run_program
from qstar_jax.tasks.sandbox.sandbox_isolation import probe_bubblewrap

BUBBLEWRAP_WORKS = probe_bubblewrap(sys.executable, os.geteuid() == 0).works
ISOLATIONS = [
    pytest.param("bubblewrap", marks=pytest.mark.skipif(not BUBBLEWRAP_WORKS,
                                                          reason="bubblewrap unusable here")),
    "limits",
]
HOSTILE_TIMEOUT_S = 1.0  # for programs that never finish
HONEST_TIMEOUT_S = 20.0  # generous: the machine is shared

REMOVE_ODD = "def remove_odd(l):\n    return [x for x in l if x % 2 == 0]\n"
REMOVE_ODD_TESTS = [
    "assert remove_odd([1,2,3]) == [2]",
    "assert remove_odd([2,4,6]) == [2,4,6]",
    "assert remove_odd([10,20,3]) == [10,20]",
]
WRONG_REMOVE_ODD = "def remove_odd(l):\n    return l\n"


def daemon_program(token: str) -> str:
    """Program text that leaves a daemon: double fork, new session, SIGTERM ignored."""
    return textwrap.dedent(f"""\
        import os, signal
        if os.fork() == 0:
            os.setsid()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if os.fork() == 0:
                os.execv("/bin/sleep", ["sleep", "{token}"])
            os._exit(0)
        os.wait()
        """)


def grade(program: str, tests: list[str] = REMOVE_ODD_TESTS, **options) -> ExecResult:
    options.setdefault("timeout_s", HONEST_TIMEOUT_S)
    return run_program(program, tests, **options)
