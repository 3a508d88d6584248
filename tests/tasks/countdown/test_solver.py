"""The exhaustive Countdown solver, against known instances and a brute-force reference."""

import random
from fractions import Fraction

import pytest

from qstar_jax.tasks.countdown.grader import grade_trace
from qstar_jax.tasks.countdown.rules import CountdownRules
from qstar_jax.tasks.countdown.solver import CountdownSolver, solve

INTEGER = CountdownRules()
FRACTIONS = CountdownRules(allow_fractions=True)
ANY_STEP = CountdownRules(must_use_all=False)
SIGNED = CountdownRules(allow_fractions=True, allow_negatives=True)


def brute_solvable(numbers, target, rules) -> bool:
    """Reference: try every ordered pair and operator in plain Fraction arithmetic,
    no memo, no shared code with the solver."""
    def search(values):
        for i, a in enumerate(values):
            for j, b in enumerate(values):
                if i == j:
                    continue
                rest = [v for k, v in enumerate(values) if k not in (i, j)]
                results = [a + b, a - b, a * b] + ([a / b] if b else [])
                for result in results:
                    if result < 0 and not rules.allow_negatives:
                        continue
                    if result.denominator != 1 and not rules.allow_fractions:
                        continue
                    if result == target and (not rest or not rules.must_use_all):
                        return True
                    if rest and search(rest + [result]):
                        return True
        return False
    return search([Fraction(n) for n in numbers])


@pytest.fixture(scope="module")
def solvers():
    return {rules: CountdownSolver(rules) for rules in (INTEGER, FRACTIONS, ANY_STEP, SIGNED)}


def test_known_solvable_instance_and_its_only_trace():
    result = solve([4, 4, 10, 10], 24, all_traces=True)
    assert result.solvable and result.count == 1
    assert result.traces == (("10 * 10 = 100 (left: 4 4 100)",
                              "100 - 4 = 96 (left: 4 96)",
                              "96 / 4 = 24 (left: 24)"),)


def test_solve_gives_the_first_of_many_traces_unless_asked_for_all():
    every = solve([1, 2, 3, 4], 10, all_traces=True)
    assert every.count == len(every.traces) == 44
    first = solve([1, 2, 3, 4], 10)
    assert (first.solvable, first.count) == (True, 44)
    assert first.traces == every.traces[:1] == (("2 + 1 = 3 (left: 3 4 3)",
                                                 "3 + 3 = 6 (left: 4 6)",
                                                 "6 + 4 = 10 (left: 10)"),)


def test_known_unsolvable_instance():
    result = solve([1, 1, 1, 1], 24, all_traces=True)
    assert (result.solvable, result.count, result.traces) == (False, 0, ())


@pytest.mark.parametrize("numbers", [(3, 3, 8, 8), (1, 5, 5, 5), (1, 3, 4, 6), (3, 3, 7, 7)])
def test_fraction_only_instances_need_fractions(numbers, solvers):
    assert not solvers[INTEGER].solvable_from(numbers, 24)
    assert solvers[FRACTIONS].solvable_from(numbers, 24)


def test_fraction_trace_is_written_exactly():
    result = solve([3, 3, 8, 8], 24, rules=FRACTIONS)
    assert result.traces == (("8 / 3 = 8/3 (left: 3 8 8/3)", "3 - 8/3 = 1/3 (left: 8 1/3)",
                              "8 / 1/3 = 24 (left: 24)"),)


def test_solvable_from_partial_states():
    solver = CountdownSolver(INTEGER)
    winning = {move for move, _, successor in solver.moves([4, 4, 10, 10])
               if solver.solvable_from(successor, 24)}
    assert winning == {(10, "*", 10)}
    assert solver.solvable_from([4, 96], 24)
    assert not solver.solvable_from([24], 24)  # finished: no step left to take


def test_reachable_values_follow_the_rules(solvers):
    assert solvers[INTEGER].reachable([3, 8]) == {11, 5, 24}  # 8/3 and 3-8 are illegal
    assert solvers[SIGNED].reachable([3, 8]) == {11, 5, -5, 24, Fraction(8, 3),
                                                 Fraction(3, 8)}
    assert CountdownSolver(CountdownRules(operations=("+",))).reachable([1, 2, 3]) == {6}
    # must_use_all off: any step's result counts, not only the last one.
    assert solvers[ANY_STEP].reachable([2, 3, 5]) >= {5, 6, 7, 8, 10, 15, 30}
    assert 2 in solvers[ANY_STEP].reachable([2, 3, 5])  # 5 - 3 = 2
    assert 2 not in solvers[INTEGER].reachable([2, 3, 5])


@pytest.mark.parametrize("rules", [INTEGER, FRACTIONS, ANY_STEP, SIGNED],
                         ids=["integer", "fractions", "any_step", "signed"])
def test_solvability_matches_brute_force(rules, solvers):
    rng = random.Random(1)
    for _ in range(40):
        numbers = [rng.randint(1, 9) for _ in range(rng.choice((2, 3, 3, 4)))]
        target = rng.randint(-5 if rules.allow_negatives else 0, 40)
        assert solvers[rules].solvable_from(numbers, target) == \
            brute_solvable(numbers, target, rules), (numbers, target)


@pytest.mark.parametrize("rules, numbers, target", [
    (INTEGER, (2, 3, 5, 8), 24), (INTEGER, (1, 2, 3, 4), 10), (FRACTIONS, (1, 3, 4, 6), 24),
    (ANY_STEP, (2, 3, 5, 8), 24), (SIGNED, (2, 3, 5), 1),
], ids=["integer-24", "integer-10", "fractions", "any_step", "signed"])
def test_every_solution_trace_is_distinct_and_grades_correct(rules, numbers, target, solvers):
    solver = solvers[rules]
    solutions = list(solver.iter_solutions(numbers, target))
    assert len(solutions) == solver.count_solutions(numbers, target) >= 1
    assert len(set(solutions)) == len(solutions)
    for moves in solutions:
        lines = solver.trace_lines(numbers, moves)
        assert grade_trace(numbers, target, lines, rules), lines
        assert lines[-1].endswith(" done") == (not rules.must_use_all)
        if rules.must_use_all:
            assert len(lines) == len(numbers) - 1


def test_any_step_traces_stop_at_the_target(solvers):
    solver = solvers[ANY_STEP]
    traces = [tuple(solver.trace_lines([2, 3, 5, 8], moves))
              for moves in solver.iter_solutions([2, 3, 5, 8], 8)]
    assert ("5 + 3 = 8 (left: 2 8 8) done",) in traces
    assert all(" = 8 " not in line for trace in traces for line in trace[:-1])
    assert all(" = 8 " in trace[-1] for trace in traces)


def test_sampled_solutions_are_seeded_and_cover_all_solutions():
    solver = CountdownSolver(INTEGER)
    numbers, target = (1, 2, 3, 4), 10
    solutions = set(solver.iter_solutions(numbers, target))
    rng = random.Random(0)
    draws = [solver.sample_solution(numbers, target, rng) for _ in range(60 * len(solutions))]
    assert set(draws) == solutions
    # Uniform over traces, not over each state's moves: on seed 0 every one of the 44
    # traces is drawn 44 to 72 times of a fair 60 (a move's weight of 1 draws the one
    # trace under 3 - 1 178 times and others 10).
    counts = [draws.count(s) for s in solutions]
    assert (min(counts), max(counts)) == (44, 72)
    again = random.Random(0)
    assert [solver.sample_solution(numbers, target, again) for _ in range(5)] == draws[:5]


def test_bad_requests_raise_clear_errors():
    with pytest.raises(ValueError, match="no solution"):
        CountdownSolver(INTEGER).sample_solution([1, 1, 1, 1], 24, random.Random(0))
    for operations in (("^",), ("+", "+"), ()):
        with pytest.raises(ValueError, match="operations"):
            CountdownRules(operations=operations)
    with pytest.raises(ValueError, match="illegal"):
        CountdownSolver(INTEGER).trace_lines([3, 8], [(3, "/", 8)])
    with pytest.raises(ValueError, match="not among"):
        CountdownSolver(INTEGER).trace_lines([3, 8], [(3, "+", 9)])
