"""The sandbox tests' fixtures: the isolation a case runs under, and the marker a hostile
program's daemons carry, looked for in /proc once the case ends."""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tasks.sandbox.programs import ISOLATIONS


@pytest.fixture(params=ISOLATIONS)
def isolation(request: pytest.FixtureRequest) -> str:
    if (request.param == "limits" and os.geteuid() != 0
            and request.node.get_closest_marker("hostile")):
        # sandbox_isolation's documented gaps: without root, limits alone run the program
        # as the caller, so this program could kill the caller's processes (pytest and
        # the shell running it) or leave daemons behind.
        pytest.skip("a hostile program under limits alone needs root to be contained")
    return request.param


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique argument for ``/bin/sleep``: any process still carrying it after a run
    is one the sandbox failed to kill."""
    token = f"{secrets.randbelow(10**9)}.{secrets.randbelow(10**9)}"
    yield token
    survivors = _processes_with(token)
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)  # do not leave them on a shared machine
    assert survivors == []


def _processes_with(argument: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if argument.encode() in argv and state != "Z":
            found.append(int(entry))
    return found
