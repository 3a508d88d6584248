"""What a sympy-stage grading call costs: a new worker per call against the process's
warm one (``symbolic_check.shared_checker``, what ``math_equal`` uses by default).

Each call compares a pair that only the sympy stage can settle (``2\\sqrt2`` against
``\\sqrt8`` and the like), so every call reaches the worker. "cold" hands each call a
fresh ``SymbolicChecker`` (a Python start and a sympy import in the child, then the
check); "warm" lets every call use the shared one, started once before timing.

    python experiments/bench_math_equal.py [--calls 20]

Prints per-call medians and as its last line JSON: {"calls": N, "cold_ms": ...,
"warm_ms": ..., "speedup": ..., "cold_shown_equal": ..., "warm_shown_equal": ...} (the
calls shown equal: all of them, unless a loaded machine ran a check past its limit).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from cli_args import positive_int
from qstar_jax.tasks.math.grading import SymbolicChecker, math_equal
from qstar_jax.tasks.math.symbolic_check import shared_checker

PAIRS = (("2\\sqrt2", "\\sqrt8"), ("\\frac{\\sqrt3}{3}", "1/\\sqrt3"), ("\\log_2 8", "3"))


def median_ms(calls: int, grade) -> tuple[float, int]:
    """The median milliseconds per call, and how many calls were shown equal (a check
    that overruns its time limit on a loaded machine is not)."""
    times, shown = [], 0
    for index in range(calls):
        pred, ref = PAIRS[index % len(PAIRS)]
        start = time.perf_counter()
        shown += grade(pred, ref)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), shown


def cold_call(pred: str, ref: str) -> bool:
    with SymbolicChecker() as checker:
        return math_equal(pred, ref, symbolic=checker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=positive_int, default=20)
    args = parser.parse_args()
    for pred, ref in PAIRS:  # start the shared worker and let sympy build its caches
        math_equal(pred, ref)
    warm, warm_shown = median_ms(args.calls, math_equal)
    assert shared_checker().worker_pid is not None
    cold, cold_shown = median_ms(args.calls, cold_call)
    print(f"cold (a worker per call): {cold:8.1f} ms per call, {cold_shown} shown equal")
    print(f"warm (the shared worker): {warm:8.1f} ms per call, {warm_shown} shown equal")
    print(json.dumps({"calls": args.calls, "cold_ms": round(cold, 1), "warm_ms": round(warm, 2),
                      "speedup": round(cold / warm, 1), "cold_shown_equal": cold_shown,
                      "warm_shown_equal": warm_shown}))


if __name__ == "__main__":
    main()
