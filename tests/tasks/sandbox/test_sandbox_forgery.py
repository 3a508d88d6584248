"""run_program never passes a program that fakes its result: early exits, always-equal
values, patched builtins, printed or forged report lines, a reached-for nonce or pipe,
and a killed or stopped supervisor."""

from __future__ import annotations

import json
import textwrap

import pytest

from qstar_jax.tasks.sandbox.sandbox import _parse_report
from tests.tasks.sandbox.programs import (HOSTILE_TIMEOUT_S, REMOVE_ODD, REMOVE_ODD_TESTS,
                                          WRONG_REMOVE_ODD, daemon_program, grade)

# (program, status, how the detail begins)
EARLY_EXITS = {
    "sys.exit(0)": ("import sys\nsys.exit(0)\n", "error",
                    "the program (or setup) raised before the tests ran:\n"),
    "os._exit(0)": ("import os\nos._exit(0)\n", "error",
                    "the program's process exited with status 0 while the program was loading"),
    "exit in a test": ("import os\ndef remove_odd(l):\n    os._exit(0)\n", "error",
                       "the program's process exited with status 0 during test 1"),
    "raise SystemExit in a test": ("def remove_odd(l):\n    raise SystemExit(0)\n", "failed",
                                   "test 1 failed: assert remove_odd([1,2,3]) == [2]\n"),
    "kill itself": ("import os, signal\n"
                    "def remove_odd(l):\n    os.kill(os.getpid(), signal.SIGKILL)\n", "killed",
                    "the program's process was killed by SIGKILL during test 1"),
    # The signal the kernel sends at the CPU-time limit (the wall clock's backstop).
    "out of CPU time": ("import os, signal\n"
                        "def remove_odd(l):\n    os.kill(os.getpid(), signal.SIGXCPU)\n",
                        "timeout",
                        "the program's process ran out of CPU time (SIGXCPU) during test 1"),
}


@pytest.mark.parametrize(("program", "status", "detail"), EARLY_EXITS.values(),
                         ids=EARLY_EXITS.keys())
def test_early_exit_never_passes(program: str, status: str, detail: str) -> None:
    result = grade(program)
    assert (result.passed, result.status) == (False, status)
    assert result.detail.startswith(detail), result.detail


def test_exit_status_is_reported(isolation: str) -> None:
    result = grade("import os\nos._exit(0)\n", isolation=isolation)
    assert (result.status, result.detail) == (
        "error", "the program's process exited with status 0 while the program was loading")


ALWAYS_EQUAL = {
    "__eq__ always True": "class Any:\n    def __eq__(self, other):\n        return True\n"
                          "    def __ne__(self, other):\n        return False\n"
                          "def remove_odd(l):\n    return Any()\n",
    "list subclass": "class L(list):\n    def __eq__(self, other):\n        return True\n"
                     "def remove_odd(l):\n    return L()\n",
    "int subclass": "class I(int):\n    def __repr__(self):\n        return '[2]'\n"
                    "def remove_odd(l):\n    return I(7)\n",
    "patched builtins and AssertionError": (
        "import builtins\nclass Never(Exception):\n    pass\n"
        "builtins.AssertionError = Never\nbuiltins.isinstance = lambda *a: True\n"
        "builtins.repr = lambda o: '[2]'\nbuiltins.sorted = lambda *a, **k: [2]\n"
        + WRONG_REMOVE_ODD),
    # The harness writes a returned value's literal with repr: patched during the call,
    # it would write 7 as [2].
    "repr patched by the call": ("import builtins\ndef remove_odd(l):\n"
                                 "    builtins.repr = lambda o: '[2]'\n    return 7\n"),
}


@pytest.mark.parametrize("program", ALWAYS_EQUAL.values(), ids=ALWAYS_EQUAL.keys())
def test_always_equal_and_patched_builtins_fail(program: str, isolation: str) -> None:
    tests = REMOVE_ODD_TESTS + ["x = remove_odd([1])\nassert sorted(x) == []"]
    result = grade(program, tests, isolation=isolation)
    assert (result.passed, result.status) == (False, "failed")
    assert result.detail.startswith("test 1 failed")


def test_tests_run_with_the_builtins_restored() -> None:
    program = "import builtins\nbuiltins.sorted = lambda *a, **k: []\n" + WRONG_REMOVE_ODD
    result = grade(program, ["x = remove_odd([1])\nassert sorted(x) == []"])
    assert result.status == "failed" and "sorted(x) returned [1]" in result.detail


def test_printed_pass_markers_and_forged_report_lines_do_not_pass(isolation: str) -> None:
    program = textwrap.dedent("""\
        import json, os
        print("PASSED\\nall 3 tests passed")
        for step in ("program", 0, 1, 2):
            print(json.dumps({"nonce": "0" * 32, "step": step, "ok": True}))
        print(json.dumps({"nonce": "0" * 32, "step": "end", "complete": True}), flush=True)
        os._exit(0)
        """)
    result = grade(program, isolation=isolation)
    assert (result.passed, result.status) == (False, "error")
    assert result.detail.startswith("the program's process exited with status 0")


def _forger(frames: str) -> str:
    """Program text defining ``forge()``: it writes well-formed worker messages (``frames``,
    a Python expression of the messages in order) down every stream socket it holds, the
    worker's channel among them, then exits before the worker can answer."""
    return textwrap.dedent(f"""\
        import json, os, socket, struct
        def frame(message):
            body = json.dumps(message).encode()
            return struct.pack(">I", len(body)) + body
        def forge():
            for fd in range(3, 64):
                try:
                    channel = socket.socket(fileno=os.dup(fd))
                except OSError:
                    continue
                if channel.type == socket.SOCK_STREAM:
                    channel.sendall(b"".join(frame(m) for m in {frames}))
            os._exit(0)
        """)


@pytest.mark.parametrize("forged", ['{"ok": True}', '{"values": ["[]"]}'])
def test_forged_worker_messages_do_not_pass(forged: str, isolation: str) -> None:
    # The program shares the worker's process, so it can write well-formed messages down
    # the worker's channel: "loaded", then a verdict for the test. A test whose assert the
    # parent judges still fails: its expected value never entered the sandbox.
    program = _forger(f'[{{"ok": True}}, {forged}]') + "forge()\n"
    tests = ["result = remove_odd([1, 2, 3, 4])\nassert result == [2, 4]"]
    result = grade(program, tests, isolation=isolation)
    assert (result.passed, result.status) == (False, "failed")
    assert result.detail.startswith("test 1 failed")


def test_a_forged_error_is_cut_to_4000_characters_by_the_supervisor() -> None:
    # The worker keeps a traceback's last 4000 characters; a program writing its own error
    # message gets no more through.
    program = _forger('[{"error": "e" * 5000 + "!", "kind": "exception"}]') + "forge()\n"
    assert grade(program).detail == (
        "the program (or setup) raised before the tests ran:\n" + "e" * 4000)


# HumanEval's shape: the asserts sit inside a test function called on the entry point.
CHECK_REMOVE_ODD = ("def check(candidate):\n    assert candidate([1, 2, 3]) == [2]\n"
                    "    assert candidate([2, 4, 6]) == [2, 4, 6]\n\ncheck(remove_odd)\n")


def test_asserts_inside_a_test_function_are_judged_on_their_values() -> None:
    assert grade(REMOVE_ODD, [CHECK_REMOVE_ODD]).status == "passed"
    failed = grade(WRONG_REMOVE_ODD, [CHECK_REMOVE_ODD])
    assert failed.status == "failed" and "candidate([1, 2, 3]) returned [1, 2, 3]" in failed.detail


def test_a_test_function_runs_in_a_namespace_of_its_own() -> None:
    # Its locals are not the program's globals, as when check() really runs.
    program = "scale = 2\ndef f(x):\n    return scale * x\n"
    test = "def check(candidate):\n    scale = 10\n    assert candidate(3) == 6\ncheck(f)"
    assert grade(program, [test]).status == "passed"


@pytest.mark.parametrize("program", [*ALWAYS_EQUAL.values(),
                                     "def remove_odd(l):\n    return object()\n"],
                         ids=[*ALWAYS_EQUAL.keys(), "not plain data"])
def test_always_equal_and_unplain_values_fail_inside_a_test_function(
        program: str, isolation: str) -> None:
    result = grade(program, [CHECK_REMOVE_ODD], isolation=isolation)
    assert (result.passed, result.status) == (False, "failed")
    assert result.detail.startswith("test 1 failed")


@pytest.mark.parametrize("forged", ['{"ok": True}', '{"values": ["[1]"]}',
                                    '{"values": []}'])
def test_forged_worker_messages_inside_a_test_function_do_not_pass(
        forged: str, isolation: str) -> None:
    # The entry point, called inside check(), writes well-formed messages down the worker's
    # channel: "the test ran", or values for it, then exits before the real answer.
    program = _forger(f"[{forged}]") + "def remove_odd(l):\n    forge()\n"
    result = grade(program, [CHECK_REMOVE_ODD], isolation=isolation)
    assert (result.passed, result.status) == (False, "failed")
    assert result.detail.startswith("test 1 failed")


def test_nonce_and_report_pipe_are_out_of_reach(isolation: str) -> None:
    # The program scans its own memory for anything shaped like the nonce, tries the
    # supervisor's files in /proc, then writes forged reports to every descriptor it has.
    program = textwrap.dedent("""\
        import json, os, re
        candidates = set()
        with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as memory:
            for line in maps:
                span, perms = line.split()[:2]
                if not perms.startswith("rw"):
                    continue
                start, end = (int(x, 16) for x in span.split("-"))
                try:
                    memory.seek(start)
                    chunk = memory.read(min(end - start, 64 << 20))
                except OSError:
                    continue
                candidates.update(re.findall(rb"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])", chunk))
        supervisor = os.getppid()
        reachable = 0
        for name in ("environ", "mem", "maps", "fd/0", "fd/3", "fd/4", "fd/5"):
            try:
                open(f"/proc/{supervisor}/{name}", "rb").read(1)
                reachable += 1
            except OSError:
                pass
        print("nonce-shaped strings in memory:", len(candidates))
        print("supervisor files reachable:", reachable, flush=True)
        candidates.add(bytes(16).hex().encode())  # built at run time, after the scan
        forged = "".join(
            json.dumps({"nonce": n.decode(), "step": s, "values": ["[2]"], "ok": True}) + "\\n"
            for n in list(candidates)[:200] for s in ("program", 0, 1, 2)).encode()
        for fd in range(256):
            try:
                os.write(fd, forged)
            except OSError:
                pass
        os._exit(0)
        """)
    result = grade(program, isolation=isolation)
    assert (result.passed, result.status) == (False, "error")
    # The report arrived intact and authentic: the only forgery that got anywhere is the
    # garbage written down the worker's own channel, which the supervisor reported.
    assert result.detail.startswith("the program broke the sandbox protocol while the "
                                    "program was loading")
    assert "nonce-shaped strings in memory: 0\nsupervisor files reachable: 0\n" in result.detail


@pytest.mark.hostile
def test_killing_the_supervisor_is_killed_not_passed(isolation: str, marker: str) -> None:
    program = (daemon_program(marker) + "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
               + REMOVE_ODD)
    result = grade(program, isolation=isolation)
    assert (result.passed, result.status) == (False, "killed")
    assert result.detail.startswith("the sandbox supervisor was killed by SIGKILL")


@pytest.mark.hostile
def test_killing_every_process_it_can_is_killed_not_passed(isolation: str) -> None:
    program = "import os, signal\nos.kill(-1, signal.SIGKILL)\n" + REMOVE_ODD
    result = grade(program, isolation=isolation)
    assert (result.passed, result.status) == (False, "killed")


@pytest.mark.hostile
def test_stopping_the_supervisor_times_out(isolation: str, marker: str) -> None:
    program = (daemon_program(marker) + "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\n"
               + REMOVE_ODD)
    result = grade(program, isolation=isolation, timeout_s=HOSTILE_TIMEOUT_S)
    assert (result.passed, result.status) == (False, "timeout")


def test_tests_run_with_stdlib_modules_restored() -> None:
    # math was loaded before the program; what it rebinds there is put back for the tests.
    program = ("import math, sys\nmath.pi = 0.0\nmath.fabs = lambda x: 0.0\n"
               "sys.modules['cmath'] = math\ndef area(r):\n    return 0.0\n")
    tests = ["import math\nassert area(1) == math.pi",
             "import math\nfor r in [1, 2]:\n"
             "    assert math.fabs(area(r) - math.pi * r * r) < 1e-9",
             "import cmath\nassert cmath.sqrt(-1) == 1j"]
    result = grade(program, tests)
    assert result.status == "failed" and result.detail.startswith("test 1 failed"), result.detail
    honest = grade("import math\ndef area(r):\n    return math.pi * r * r\n", tests)
    assert honest.status == "passed", honest.detail


# An object equal to anything, whose difference with anything is itself and whose
# absolute value is 0: each test below compares or computes with it where Python's
# verdict would come from the object itself.
PERMISSIVE = textwrap.dedent("""\
    class Anything:
        def __eq__(self, other):
            return True
        def __ne__(self, other):
            return False
        __lt__ = __le__ = __gt__ = __ge__ = __eq__
        def __sub__(self, other):
            return self
        __rsub__ = __add__ = __radd__ = __sub__
        def __abs__(self):
            return 0
        def __bool__(self):
            return True
        __hash__ = object.__hash__
    def f(x):
        return Anything()
    """)
NESTED = ["assert f(2) == 4 or f(2) == 5", "assert (f(2) == 4) is True",
          "assert (f(2) == 4) == True", "assert not (f(2) != 4)",
          "assert all(f(x) == 2 * x for x in range(3))", "assert abs(f(2) - 4) < 1e-9",
          "assert abs(f(2) - 4.0) <= 0.001", "assert [f(2)] == [4]",
          "for x in range(3):\n    assert f(x) == 2 * x",
          "def check(candidate):\n    for x in range(3):\n        assert candidate(x) == 2 * x"
          "\n\ncheck(f)\n",
          "assert f(2) and f(3)"]


@pytest.mark.parametrize("test", NESTED)
def test_an_object_equal_to_anything_fails_where_the_comparison_is_nested(test: str) -> None:
    result = grade(PERMISSIVE, [test])
    assert (result.passed, result.status) == (False, "failed"), result.detail
    honest = grade("def f(x):\n    return 2 * x\n", [test])
    assert honest.status == "passed", honest.detail


# ---------------------------------------------------------------- the parent's reading

NONCE = "a" * 32


def _report_line(step: object, nonce: str = NONCE) -> str:
    return json.dumps({"nonce": nonce, "step": step, "ok": True}) + "\n"


def test_the_report_is_read_only_with_this_runs_nonce_and_in_order() -> None:
    loaded = {"nonce": NONCE, "step": "program", "ok": True}
    # A line cut short (by the kill at a timeout) is dropped; the lines before it stand.
    cut = _report_line("program") + _report_line(0)[:20]
    assert _parse_report(cut.encode(), NONCE, False) == ([loaded], "")
    foreign = _report_line("program") + _report_line(0, nonce="b" * 32)
    assert _parse_report(foreign.encode(), NONCE, False) == (
        None, "report line without this run's nonce: "
        + repr(_report_line(0, nonce="b" * 32)[:-1]))
    skipped = _report_line("program") + _report_line(1)
    assert _parse_report(skipped.encode(), NONCE, False) == (
        None, "report steps out of order: ['program', 1]")
    assert _parse_report(_report_line(0).encode(), NONCE, False) == (
        None, "report steps out of order: [0]")
    assert _parse_report(b"", NONCE, True) == (None, "the report exceeded 16777216 bytes")
