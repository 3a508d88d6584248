"""The sympy stage: the worker's LaTeX reader and its size guards (run here on our own
strings), and the checker's process handling: limits, timeouts, restarts, clean-up."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sympy

from qstar_jax.tasks.math import symbolic_check
from qstar_jax.tasks.math.grading import (SymbolicCheckConfig, SymbolicChecker, SymbolicWorkerError,
                                          math_equal)
from qstar_jax.tasks.math.symbolic_worker import LatexParseError, LatexToSympy, answers_equal

x, r = sympy.Symbol("x"), sympy.Symbol("r")

# A pair sympy needs tens of seconds to decide: expanding two 60th powers.
SLOW_PAIR = ("(x+y+1)^{60}", "(x+y+2)^{60}")


@pytest.mark.parametrize(("latex", "value"), [
    ("2\\sqrt{2}", 2 * sympy.sqrt(2)),
    ("\\frac{\\sqrt{3}}{3}", sympy.sqrt(3) / 3),
    ("1/\\sqrt{3}", sympy.sqrt(3) / 3),
    ("2\\pi r", 2 * sympy.pi * r),
    ("x^2+2x+1", x**2 + 2 * x + 1),
    ("-x^2", -x**2),
    ("10^{-2}", sympy.Rational(1, 100)),
    ("0.5x", x / 2),
    ("6\\div4", sympy.Rational(3, 2)),
    ("2\\cdot3\\times4", sympy.Integer(24)),
    ("\\sqrt[3]{27}", sympy.Integer(3)),
    ("|x-1|", sympy.Abs(x - 1)),
    ("3+4i", 3 + 4 * sympy.I),
    ("e^{i\\pi}", sympy.Integer(-1)),
    ("\\log_2 8", sympy.Integer(3)),
    ("\\binom{5}{2}", sympy.Integer(10)),
    ("5!", sympy.Integer(120)),
    ("x_1+x_{12}", sympy.Symbol("x_1") + sympy.Symbol("x_12")),
    ("\\sin^2x", sympy.sin(x)**2),
    ("x^-2", x**-2),
    ("2^-1", sympy.Rational(1, 2)),
    ("5-x-2", 3 - x),
    ("+3-x", 3 - x),
    ("9" * 100, sympy.Integer(10**100 - 1)),  # the longest numeral read
    ("1000!", sympy.factorial(1000)),  # the largest factorial
    ("\\binom{1000}{2}", sympy.Integer(499500)),
])
def test_reader_builds_exact_values(latex, value):
    assert LatexToSympy(latex).parse() == value


@pytest.mark.parametrize(("command", "function"), [
    ("sin", sympy.sin), ("cos", sympy.cos), ("tan", sympy.tan), ("cot", sympy.cot),
    ("sec", sympy.sec), ("csc", sympy.csc), ("arcsin", sympy.asin), ("arccos", sympy.acos),
    ("arctan", sympy.atan), ("sinh", sympy.sinh), ("cosh", sympy.cosh), ("tanh", sympy.tanh),
    ("ln", sympy.log), ("log", sympy.log), ("exp", sympy.exp)])
def test_reader_applies_each_function_it_names(command, function):
    assert LatexToSympy(f"\\{command} x").parse() == function(x)


@pytest.mark.parametrize("latex", [
    "10^{10^{10}}",                   # 10**10**10
    "2^{2^{2^{2^{2}}}}",              # 2**65536 is allowed, 2 to that is not
    "9^{9^{9}}",
    "(\\frac{1}{2})^{100000}",        # tiny values have huge denominators
    "\\pi^{100000}",
    "x^{100000}",
    "(10^{5})!",
    "\\binom{100000}{50000}",
    "1" + "0" * 200,
    "1" * 101,
    "1001!",
    "\\binom{1001}{2}",
])
def test_reader_refuses_astronomical_values(latex):
    with pytest.raises(LatexParseError):
        LatexToSympy(latex).parse()


@pytest.mark.parametrize("latex", ["x<3", "\\leq", "(1", "1)", "\\unknown{2}", "x^", "'", "@"])
def test_reader_refuses_what_it_does_not_read(latex):
    with pytest.raises(LatexParseError):
        LatexToSympy(latex).parse()


def test_equality_is_exact_and_refuses_infinities():
    assert answers_equal("(x+1)^2", "x^2+2x+1")
    assert not answers_equal("\\pi", "3.14159265358979323846264338327950288")
    assert not answers_equal("2\\infty", "\\infty")
    assert not answers_equal("\\frac{1}{0}", "\\frac{1}{0}")


def test_config_rejects_non_positive_limits():
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        SymbolicCheckConfig(timeout_s=0)
    with pytest.raises(ValueError, match="memory_limit_mb must be positive"):
        SymbolicCheckConfig(memory_limit_mb=-1)
    with pytest.raises(ValueError, match="budget_s must be positive"):
        SymbolicCheckConfig(budget_s=0)
    with pytest.raises(ValueError, match="startup_timeout_s must be positive"):
        SymbolicCheckConfig(startup_timeout_s=-5.0)


@pytest.fixture(scope="module")
def checker():
    with SymbolicChecker(SymbolicCheckConfig(memory_limit_mb=384)) as warm_checker:
        yield warm_checker


def test_a_spent_budget_answers_false_without_asking():
    with SymbolicChecker() as fresh_checker:
        assert not fresh_checker.equal("2\\sqrt{2}", "\\sqrt{8}",
                                       deadline=time.monotonic() - 1.0)
        assert fresh_checker.worker_pid is None


def test_worker_runs_under_an_address_space_cap_and_writes_nothing(checker):
    assert checker.equal("2\\sqrt{2}", "\\sqrt{8}", deadline=time.monotonic() + 60.0)
    limits = Path(f"/proc/{checker.worker_pid}/limits")
    if not limits.exists():
        pytest.skip("no /proc on this system")
    soft_and_hard = {line[:26].strip(): line[26:].split()[:2]
                     for line in limits.read_text().splitlines()[1:]}
    assert soft_and_hard["Max address space"] == [str(384 << 20)] * 2
    # Nor may it write files or dump core.
    assert soft_and_hard["Max file size"] == soft_and_hard["Max core file size"] == ["0", "0"]


def test_the_worker_answers_false_for_unequal_and_unreadable_answers(checker):
    assert not checker.equal("x+1", "x")
    assert not checker.equal("x<3", "x<3")  # the reader refuses it: nothing is shown equal
    assert checker.equal("x^-1", "\\frac{1}{x}")


# A stand-in worker that replies to each request with its "pred" text, verbatim.
ECHO_WORKER = ("import json, sys\nprint(json.dumps({'ready': True}), flush=True)\n"
               "for line in sys.stdin:\n    print(json.loads(line)['pred'], flush=True)\n")


def test_only_a_reply_of_equal_true_counts_as_equal(monkeypatch, tmp_path):
    worker = tmp_path / "echo_worker.py"
    worker.write_text(ECHO_WORKER)
    monkeypatch.setattr(symbolic_check, "_WORKER_SCRIPT", worker)
    with SymbolicChecker() as echo:
        assert echo.equal('{"equal": true}', "x")
        first_pid = echo.worker_pid
        assert not echo.equal('{"equal": 1}', "x")
        assert not echo.equal('{"equal": "true"}', "x")
        assert not echo.equal('{"same": true}', "x")
        assert echo.worker_pid == first_pid  # a well-formed reply keeps the worker
        assert not echo.equal("[true]", "x")
        assert echo.worker_pid is None  # a garbled reply does not
        assert not echo.equal("equal", "x")
        assert echo.worker_pid is None


# A stand-in worker whose "pred" says what to do: "limit LO HI" is equal when the request's
# time limit is within [LO, HI]; "pad N" is equal, its reply padded to N more characters.
SCRIPTED_WORKER = ("import json, sys\nprint(json.dumps({'ready': True}), flush=True)\n"
                   "for line in sys.stdin:\n    request = json.loads(line)\n"
                   "    what, *args = request['pred'].split()\n"
                   "    if what == 'limit':\n"
                   "        low, high = map(float, args)\n"
                   "        reply = {'equal': low <= request['time_limit_s'] <= high}\n"
                   "    else:\n        reply = {'equal': True, 'pad': 'x' * int(args[0])}\n"
                   "    print(json.dumps(reply), flush=True)\n")


@pytest.fixture
def stand_in_worker(monkeypatch, tmp_path):
    """Makes checkers start the given worker source instead of the sympy worker."""
    def use(source):
        worker = tmp_path / "stand_in_worker.py"
        worker.write_text(source)
        monkeypatch.setattr(symbolic_check, "_WORKER_SCRIPT", worker)
    return use


def test_each_request_is_given_the_check_timeout_or_the_time_to_the_deadline(stand_in_worker):
    stand_in_worker(SCRIPTED_WORKER)
    with SymbolicChecker(SymbolicCheckConfig(timeout_s=2.5)) as scripted:
        assert scripted.equal("limit 2.5 2.5", "x")
        assert scripted.equal("limit 2.5 2.5", "x", deadline=time.monotonic() + 100.0)
        assert scripted.equal("limit 0.5 1.0", "x", deadline=time.monotonic() + 1.0)


def test_a_reply_past_4096_bytes_is_garbage_and_stops_the_worker(stand_in_worker):
    stand_in_worker(SCRIPTED_WORKER)
    with SymbolicChecker() as scripted:
        assert scripted.equal("pad 4000", "x")
        assert scripted.worker_pid is not None
        assert not scripted.equal("pad 10000", "x")
        assert scripted.worker_pid is None


def test_start_up_waits_startup_timeout_s_for_ready_true_only(stand_in_worker):
    # A worker slower to start than one check may take is still waited for.
    stand_in_worker("import time\ntime.sleep(0.4)\n" + SCRIPTED_WORKER)
    with SymbolicChecker(SymbolicCheckConfig(timeout_s=0.1, startup_timeout_s=30.0)) as slow:
        assert slow.equal("limit 0 0.1", "x")
    # Any first line but {"ready": true} is a failed start.
    stand_in_worker("print('{\"ready\": false}', flush=True)\nraise SystemExit(3)\n")
    with SymbolicChecker() as unready, \
            pytest.raises(SymbolicWorkerError, match="worker .* exited with code 3; check"):
        unready.equal("x", "x")


def test_a_forked_process_makes_its_own_shared_checker_and_leaves_the_parents_worker(
        stand_in_worker):
    """shared_checker in a process forked from one with a checker (seen here as a checker
    recorded under another process id) makes a new one and forgets, not stops, the old
    worker, which is the parent's. A thread of its own gives the test its own checker."""
    stand_in_worker(SCRIPTED_WORKER)
    seen = {}

    def as_parent_then_child():
        parent = symbolic_check.shared_checker()
        seen["parent equal"] = parent.equal("pad 0", "x")
        seen["kept"] = symbolic_check.shared_checker() is parent
        seen["parent worker"] = parent.worker_pid
        symbolic_check._PER_THREAD.pid = -1  # the process that made it is not this one
        child = symbolic_check.shared_checker()
        seen["child is new"] = child is not parent
        seen["parent forgot"] = parent.worker_pid is None
        seen["kept in child"] = symbolic_check.shared_checker() is child
        child.close()

    thread = threading.Thread(target=as_parent_then_child)
    thread.start()
    thread.join()
    parent_worker = seen.pop("parent worker")
    try:
        os.kill(parent_worker, 0)  # still running: the parent's to stop
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(parent_worker, signal.SIGKILL)
    assert seen == {"parent equal": True, "kept": True, "child is new": True,
                    "parent forgot": True, "kept in child": True}


def test_a_late_reply_kills_the_worker_and_the_next_check_starts_a_new_one(checker):
    assert checker.equal("x+x", "2x")
    first_pid = checker.worker_pid
    assert not checker.equal(*SLOW_PAIR, deadline=time.monotonic() + 0.5)
    assert checker.worker_pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(first_pid, 0)
    assert checker.equal("x+x", "2x")
    assert checker.worker_pid not in (None, first_pid)


def test_a_dead_worker_is_replaced_without_losing_the_verdict(checker):
    assert checker.equal("x+x", "2x")
    first_pid = checker.worker_pid
    os.kill(first_pid, signal.SIGKILL)
    assert checker.equal("2\\sqrt{2}", "\\sqrt{8}")
    assert checker.worker_pid != first_pid


def test_the_worker_arms_an_alarm_a_second_past_each_request_and_disarms_it_after():
    """Run on its own, as an orphaned worker would be: SIGALRM ends a check that outlives
    its time limit by a second, and an answered request leaves no alarm set. Limits
    below zero bring the alarm within a fraction of a second."""
    worker = subprocess.Popen(
        [sys.executable, "-I", str(symbolic_check._WORKER_SCRIPT), str(384 << 20)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        def ask(pred, ref, time_limit_s):
            worker.stdin.write(json.dumps({"pred": pred, "ref": ref,
                                           "time_limit_s": time_limit_s}) + "\n")
            worker.stdin.flush()

        assert json.loads(worker.stdout.readline()) == {"ready": True}
        ask("1", "1", -0.5)  # answered at once, within the 0.5 s its alarm allows
        assert json.loads(worker.stdout.readline()) == {"equal": True}
        time.sleep(0.6)
        ask("x+x", "2x", 5.0)
        assert json.loads(worker.stdout.readline()) == {"equal": True}
        ask(*SLOW_PAIR, -0.8)
        assert worker.wait(timeout=30.0) == -signal.SIGALRM
    finally:
        worker.kill()
        worker.wait()
        worker.stdin.close()
        worker.stdout.close()


def test_a_forgotten_checker_takes_its_worker_with_it():
    checker = SymbolicChecker()
    assert checker.equal("x+x", "2x")
    pid = checker.worker_pid
    del checker
    gc.collect()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_worker_that_cannot_start_is_a_clear_error_and_exact_stages_need_none(monkeypatch):
    monkeypatch.setattr(symbolic_check, "_WORKER_SCRIPT", Path("/nonexistent/worker.py"))
    with SymbolicChecker() as fresh_checker, \
            pytest.raises(SymbolicWorkerError, match="exited with code"):
        math_equal("2\\sqrt2", "\\sqrt8", symbolic=fresh_checker)
    assert math_equal("\\frac{1}{2}", "0.5")
    assert not math_equal("(1,2)", "[1,2]")
