"""experiments/bench_math_equal.py: what a sympy-stage grading call costs, a fresh worker
per call against the shared warm one. Its pairs, its per-call median and its JSON."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from qstar_jax.tasks.math.grading import math_equal
from tests.support.experiments import experiment_module

SCRIPT = Path(__file__).parents[1] / "experiments/bench_math_equal.py"


@pytest.fixture
def bench(monkeypatch):
    """The script as a module (``python experiments/bench_math_equal.py`` runs it)."""
    return experiment_module(monkeypatch, "bench_math_equal")


def test_every_pair_is_shown_equal_by_the_sympy_stage(bench):
    # The benchmark's figures assume every call is shown equal on an idle machine.
    assert all(math_equal(pred, ref) for pred, ref in bench.PAIRS)
    assert not math_equal("2\\sqrt2", "\\sqrt7")


def test_a_cold_call_grades_on_a_worker_of_its_own_and_closes_it(bench, monkeypatch):
    events = []

    class FreshChecker:
        def __enter__(self):
            events.append("started")
            return self

        def __exit__(self, *exc_info):
            events.append("closed")

    def grade(pred, ref, *, symbolic=None):
        events.append(("graded", pred, ref, type(symbolic).__name__))
        return True

    monkeypatch.setattr(bench, "SymbolicChecker", FreshChecker)
    monkeypatch.setattr(bench, "math_equal", grade)
    assert bench.cold_call("a", "b") is True
    assert bench.cold_call("c", "d") is True
    assert events == ["started", ("graded", "a", "b", "FreshChecker"), "closed",
                      "started", ("graded", "c", "d", "FreshChecker"), "closed"]


def test_the_median_is_of_calls_that_cycle_through_the_pairs(bench, monkeypatch):
    """Four calls of 10, 30, 20 and 50 ms over pairs 0, 1, 2, 0: a median of 25 ms (the
    mean would be 27.5), and 3 shown equal when the third call is not."""
    clock = iter([0.0, 0.010, 1.0, 1.030, 2.0, 2.020, 3.0, 3.050])
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    graded = []

    def grade(pred, ref):
        graded.append((pred, ref))
        return len(graded) != 3

    median, shown = bench.median_ms(4, grade)
    assert median == pytest.approx(25.0)
    assert shown == 3
    assert graded == [bench.PAIRS[0], bench.PAIRS[1], bench.PAIRS[2], bench.PAIRS[0]]


def test_the_json_gives_cold_over_warm_as_the_speedup(bench, monkeypatch, capsys):
    """Warm calls at 0.5 ms, all 4 shown equal; cold ones at 650 ms, 3 shown equal: a
    speedup of 1300."""
    medians = {"warm": (0.5, 4), "cold": (650.0, 3)}
    monkeypatch.setattr(bench, "math_equal", lambda pred, ref: True)
    monkeypatch.setattr(bench, "shared_checker", lambda: SimpleNamespace(worker_pid=1))
    monkeypatch.setattr(bench, "median_ms", lambda calls, grade: medians[
        "cold" if grade is bench.cold_call else "warm"])
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--calls", "4"])
    bench.main()
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == {"calls": 4, "cold_ms": 650.0, "warm_ms": 0.5,
                                     "speedup": 1300.0, "cold_shown_equal": 3,
                                     "warm_shown_equal": 4}
    assert lines[0] == "cold (a worker per call):    650.0 ms per call, 3 shown equal"
