"""Exact grading of Countdown traces: each illegal step is caught for its own reason."""

import random

import pytest

from qstar_jax.tasks.countdown.grader import (
    StepCheck, can_still_succeed, check_trace, grade_trace, step_legality, step_reward)
from qstar_jax.tasks.countdown.rules import CountdownRules, StepError
from qstar_jax.tasks.countdown.solver import CountdownSolver
from qstar_jax.tasks.countdown.steps import COUNTDOWN_ALPHABET, Step

RULES = CountdownRules()
NUMBERS, TARGET = (4, 4, 10, 10), 24
SOLUTION = ["10 * 10 = 100 (left: 4 4 100)", "100 - 4 = 96 (left: 4 96)",
            "96 / 4 = 24 (left: 24)"]


def errors(steps, rules=RULES, numbers=NUMBERS, target=TARGET):
    return [check.error for check in check_trace(numbers, target, steps, rules)]


def test_solution_is_legal_and_correct():
    assert errors(SOLUTION) == [None, None, None]
    assert grade_trace(NUMBERS, TARGET, SOLUTION, RULES)


def test_left_list_may_come_in_any_order():
    steps = ["10 * 10 = 100 (left: 100 4 4)", "100 - 4 = 96 (left: 96 4)",
             "96 / 4 = 24 (left: 24)"]
    assert grade_trace(NUMBERS, TARGET, steps, RULES)


@pytest.mark.parametrize("steps, reason", [
    (["10 * 10 = 110 (left: 4 4 110)"], StepError.WRONG_ARITHMETIC),
    (["10 * 5 = 50 (left: 4 4 10 50)"], StepError.MISSING_OPERAND),
    (["4 * 4 = 16 (left: 10 10 16)", "16 + 4 = 20 (left: 10 20)"], StepError.MISSING_OPERAND),
    (["10 * 10 = 100 (left: 4 4 100)", "100 - 100 = 0 (left: 4 4 0)"],
     StepError.MISSING_OPERAND),
    (["10 * 10 = 100 (left: 4 100)"], StepError.WRONG_LEFT_LIST),
    (["10 * 10 = 100 (left: 4 4 10 100)"], StepError.WRONG_LEFT_LIST),
    (["10 * 10 = 100 (left: 4 5 100)"], StepError.WRONG_LEFT_LIST),
    (["4 - 4 = 0 (left: 10 10 0)", "10 / 0 = 0 (left: 10 0)"], StepError.DIVISION_BY_ZERO),
    (["10 / 4 = 5/2 (left: 4 10 5/2)"], StepError.NOT_AN_INTEGER),
    (["4 - 10 = -6 (left: 4 10 -6)"], StepError.NEGATIVE_RESULT),
    (["10 * 10 = 100 (left: 4 4 100) done"], StepError.DONE_NOT_ALLOWED),
    (["10*10 = 100 (left: 4 4 100)"], StepError.MALFORMED),
    (["10 * 10 = 100"], StepError.MALFORMED),
    (["10 * 10 = 100 (left: 4 4 100) "], StepError.MALFORMED),
    (["ten times ten"], StepError.MALFORMED),
    (SOLUTION + ["24 - 0 = 24 (left: 24)"], StepError.AFTER_END),
], ids=["arithmetic", "operand", "reused", "one-copy-twice", "left-short", "left-long",
        "left-miscopied", "div0", "integer", "negative", "done", "spacing", "no-left",
        "trailing", "words", "after-end"])
def test_each_illegal_step_is_caught_for_its_reason(steps, reason):
    assert errors(steps)[-1] == reason
    assert errors(steps)[:-1] == [None] * (len(steps) - 1)
    assert not grade_trace(NUMBERS, TARGET, steps, RULES)


def test_rules_knobs_make_steps_legal():
    fractions = CountdownRules(allow_fractions=True)
    negatives = CountdownRules(allow_negatives=True)
    no_minus = CountdownRules(operations=("+", "*", "/"))
    assert errors(["10 / 4 = 5/2 (left: 4 10 5/2)"], fractions) == [None]
    assert errors(["10 / 4 = 2 (left: 4 10 2)"], fractions) == [StepError.WRONG_ARITHMETIC]
    assert errors(["4 - 10 = -6 (left: 4 10 -6)"], negatives) == [None]
    assert errors(["10 - 4 = 6 (left: 4 10 6)"], no_minus) == [StepError.OPERATION_NOT_ALLOWED]
    # A fraction spelled as an operand is not among the integers left.
    assert errors(["10 / 4 = 5/2 (left: 4 10 5/2)", "5/2 * 4 = 10 (left: 10 10)"]) == \
        [StepError.NOT_AN_INTEGER, StepError.NOT_AN_INTEGER]


def test_any_step_mode_done_marker():
    rules = CountdownRules(must_use_all=False)
    assert grade_trace((2, 3, 5, 8), 8, ["5 + 3 = 8 (left: 2 8 8) done"], rules)
    assert grade_trace((2, 3, 5, 8), 8, ["5 + 3 = 8 (left: 2 8 8)"], rules)
    assert errors(["5 + 3 = 8 (left: 2 8 8) done"], rules, (2, 3, 5, 8), 9) == \
        [StepError.FALSE_DONE]
    assert errors(["5 + 3 = 8 (left: 2 8 8) done", "8 * 2 = 16 (left: 8 16)"], rules,
                  (2, 3, 5, 8), 8) == [None, StepError.AFTER_END]
    assert not grade_trace((2, 3, 5, 8), 9, ["5 + 3 = 8 (left: 2 8 8)"], rules)


def test_lines_after_the_first_illegal_one_keep_its_error_and_their_own_parse():
    broken = [SOLUTION[0], "100 - 4 = 95 (left: 4 95)", "95 - 4 = 91 (left: 91)", "words"]
    checks = check_trace(NUMBERS, TARGET, broken, RULES)
    assert [check.error for check in checks] == [None] + [StepError.WRONG_ARITHMETIC] * 3
    assert [check.step for check in checks] == [
        Step(left=10, op="*", right=10, result=100, remaining=(4, 4, 100)),
        Step(left=100, op="-", right=4, result=95, remaining=(4, 95)),
        Step(left=95, op="-", right=4, result=91, remaining=(91,)), None]
    ended = check_trace(NUMBERS, TARGET, [*SOLUTION, "24 - 0 = 24 (left: 24)"], RULES)[-1]
    assert ended == StepCheck(error=StepError.AFTER_END,
                              step=Step(left=24, op="-", right=0, result=24, remaining=(24,)))


def test_step_legality_of_partial_traces():
    assert step_legality(NUMBERS, TARGET, SOLUTION[:2], RULES) == [True, True]
    assert not grade_trace(NUMBERS, TARGET, SOLUTION[:2], RULES)  # legal but unfinished
    broken = [SOLUTION[0], "100 - 4 = 95 (left: 4 95)", "95 - 4 = 91 (left: 91)"]
    assert step_legality(NUMBERS, TARGET, broken, RULES) == [True, False, False]
    assert step_legality(NUMBERS, TARGET, [], RULES) == []
    assert not grade_trace(NUMBERS, TARGET, [], RULES)


def test_a_step_is_read_from_its_last_line_past_the_blank_lines_that_joined_it():
    joined = ["\n" + SOLUTION[0], SOLUTION[1], " \n\n" + SOLUTION[2]]
    assert errors(joined) == [None, None, None]
    assert grade_trace(NUMBERS, TARGET, joined, RULES)
    assert step_reward(NUMBERS, TARGET, joined, RULES) == 1.0
    assert can_still_succeed(NUMBERS, TARGET, joined[:1], CountdownSolver(RULES))
    # A line that is no step stays one, blank lines before it or not.
    assert errors(["\n10 * 10 = 100"]) == [StepError.MALFORMED]


def test_target_among_several_numbers_left_is_not_a_finish():
    steps = ["10 * 10 = 100 (left: 4 4 100)"]
    assert errors(steps, target=4) == [None]
    assert not grade_trace(NUMBERS, 4, steps, RULES)
    assert step_reward(NUMBERS, 4, steps, RULES) == 0.0
    # No way on from 4 4 100 ends on 4 alone, so the oracle must not call it won.
    assert not can_still_succeed(NUMBERS, 4, steps, CountdownSolver(RULES))


def test_step_reward_is_minus_one_illegal_or_lost_plus_one_on_the_target_else_zero():
    def reward(steps, numbers=NUMBERS, target=TARGET, rules=RULES):
        return step_reward(numbers, target, steps, rules)

    assert [reward(SOLUTION[:n]) for n in (1, 2, 3)] == [0.0, 0.0, 1.0]
    assert reward([SOLUTION[0], "100 - 4 = 95 (left: 4 95)"]) == -1.0
    assert reward([*SOLUTION[:2], "96 / 4 = 24 (left: 4)"]) == -1.0  # wrong left list
    # Legal to the end but the last number is not the target: the game is lost.
    assert reward([*SOLUTION[:2], "96 + 4 = 100 (left: 100)"]) == -1.0
    # A step after an illegal one is illegal too, so a sum counts every broken step.
    assert reward(["10 * 10 = 110 (left: 4 4 110)", "110 - 4 = 106 (left: 4 106)"]) == -1.0
    done_rules = CountdownRules(must_use_all=False)
    assert reward(["5 + 3 = 8 (left: 2 8 8) done"], (2, 3, 5, 8), 8, done_rules) == 1.0
    assert reward(["5 + 3 = 8 (left: 2 8 8)"], (2, 3, 5, 8), 8, done_rules) == 0.0
    assert reward(["5 + 3 = 8 (left: 2 8 8) done"], (2, 3, 5, 8), 9, done_rules) == -1.0


def test_can_still_succeed_is_an_exact_oracle():
    solver = CountdownSolver(RULES)
    assert can_still_succeed(NUMBERS, TARGET, [], solver)
    assert can_still_succeed(NUMBERS, TARGET, SOLUTION[:1], solver)
    assert can_still_succeed(NUMBERS, TARGET, SOLUTION, solver)
    assert not can_still_succeed(NUMBERS, TARGET, ["10 + 10 = 20 (left: 4 4 20)"], solver)
    assert not can_still_succeed(NUMBERS, TARGET, ["10 * 10 = 101 (left: 4 4 101)"], solver)
    assert not can_still_succeed((1, 1, 1, 1), 24, [], solver)
    any_step = CountdownSolver(CountdownRules(must_use_all=False))
    assert can_still_succeed((2, 3, 5, 8), 8, ["5 + 3 = 8 (left: 2 8 8)"], any_step)
    assert not can_still_succeed((2, 3, 5, 8), 99, ["8 - 5 = 3 (left: 2 3 3)"], any_step)


def test_grading_never_raises_on_garbage():
    rng = random.Random(0)
    symbols = COUNTDOWN_ALPHABET + "é\t"
    for _ in range(300):
        steps = ["".join(rng.choice(symbols) for _ in range(rng.randrange(40)))
                 for _ in range(rng.randrange(1, 4))]
        assert len(step_legality(NUMBERS, TARGET, steps, RULES)) == len(steps)
        assert grade_trace(NUMBERS, TARGET, steps, RULES) is False
