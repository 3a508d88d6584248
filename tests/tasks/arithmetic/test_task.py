"""The arithmetic-chain world: generation, splits, the step format, grading, the solver's
completion (the exact value of a state) and the wrong steps the value head trains on."""

import random

import pytest

from qstar_jax.tasks.arithmetic import ArithmeticConfig, ArithmeticTask, parse_answer, parse_step
from qstar_jax.tasks.arithmetic.steps import Operation
from qstar_jax.tasks.arithmetic.world import Chain, split_of


def make_problem(task, start, ops):
    return task.problem(Chain(start, tuple(Operation(o, n) for o, n in ops)))


def test_question_solution_and_grading_by_hand():
    task = ArithmeticTask()
    problem = make_problem(task, 12, [("+", 7), ("*", 3), ("-", 15)])
    assert task.prompt(problem) == "Left to right: 12 + 7 * 3 - 15\n"
    assert task.solution_steps(problem) == ["12 + 7 = 19", "19 * 3 = 57", "57 - 15 = 42",
                                            "#### 42"]
    assert problem.reference == "42"
    assert task.grade(problem, "12 + 7 = 19\n19 * 3 = 57\n57 - 15 = 42\n#### 42")
    # Only the answer line is graded, as GSM8K's grader does.
    assert task.grade(problem, "#### 42")
    assert not task.grade(problem, "12 + 7 = 19\n19 * 3 = 57\n57 - 15 = 41\n#### 41")
    assert not task.grade(problem, "12 + 7 = 19\n19 * 3 = 57")  # no answer line
    assert task.extract_answer("1 + 1 = 2\n#### 2") == "2"
    assert task.extract_answer("1 + 1 = 2") is None
    assert task.is_terminal_step("#### 42\n") and not task.is_terminal_step("57 - 15 = 42")
    # Strict: an answer line with spaces around it is no answer line.
    assert not task.is_terminal_step(" #### 42") and not task.is_terminal_step("#### 42 \n")
    assert task.extract_answer("#### 42 ") is None and not task.grade(problem, " #### 42")


@pytest.mark.parametrize("line", ["12 + 7 = 19", "0 * 3 = 0", "999 - 999 = 0"])
def test_parse_step_reads_well_formed_lines(line):
    assert parse_step(line) is not None


@pytest.mark.parametrize("line", ["12 + 7 = 019", "12 +7 = 19", "12 + 7 = -5", "12 / 3 = 4",
                                  "#### 4", "", "9" * 40 + " + 1 = 1", "12 + 7 = 19 "])
def test_parse_step_rejects_anything_else(line):
    assert parse_step(line) is None


def test_parse_answer():
    assert parse_answer("#### 17") == 17
    assert parse_answer("####17") is None and parse_answer("#### 017") is None


def test_solver_completion_is_the_exact_value():
    task = ArithmeticTask()
    problem = make_problem(task, 12, [("+", 7), ("*", 3), ("-", 15)])
    assert task.solver_completion(problem, ["12 + 7 = 19"]) == ["19 * 3 = 57", "57 - 15 = 42",
                                                                "#### 42"]
    assert task.can_still_succeed(problem, ["12 + 7 = 19"])
    assert not task.can_still_succeed(problem, ["12 + 7 = 18"])  # a slip dooms the answer
    # A wrong operand with the right result leaves the value right: the state lives.
    assert task.can_still_succeed(problem, ["13 + 7 = 19"])
    assert not task.can_still_succeed(problem, ["12 + 7 = 19", "#### 19"])  # early answer
    assert not task.can_still_succeed(problem, ["not a step"])
    assert task.solver_completion(problem, ["#### 42"]) == []
    # After a line that is no step, an answer no chain reaches: even one whose answer is 0.
    zero = make_problem(task, 5, [("-", 5)])
    assert task.solver_completion(zero, ["not a step"]) == ["#### -1"]
    assert not task.can_still_succeed(zero, ["not a step"])
    # A step is read from its last line, past the blank lines that joined it.
    assert task.solver_completion(problem, ["\n\n12 + 7 = 19"]) == ["19 * 3 = 57",
                                                                   "57 - 15 = 42", "#### 42"]
    assert task.solver_completion(problem, ["12 + 7 = 19", "19 * 3 = 57", " \n#### 42"]) == []
    assert task.can_still_succeed(problem, ["\n12 + 7 = 19", "\n19 * 3 = 57"])


def test_wrong_steps_come_in_every_kind_and_only_digit_slips_after_the_last_line():
    task = ArithmeticTask()
    problem = make_problem(task, 12, [("+", 7), ("*", 3), ("-", 15)])
    first = {task.wrong_step(problem, [], random.Random(seed)) for seed in range(100)}
    assert "12 + 7 = 19" not in first
    assert {"12 + 7 = 17",                   # a digit of the result
            "12 + 3 = 15", "12 + 15 = 27",   # another operation's operand
            "13 + 7 = 20",                   # a misread start value
            "12 * 3 = 36",                   # the next operation, this one skipped
            "#### 12"} <= first              # an early answer
    solution = task.solution_steps(problem)
    last = {task.wrong_step(problem, solution[:3], random.Random(seed)) for seed in range(40)}
    assert len(last) > 5 and all(
        len(line) == len("#### 42") and line.startswith("#### ")
        and sum(a != b for a, b in zip(line, "#### 42")) == 1 for line in last)


def test_wrong_steps_are_well_formed_and_dead():
    task = ArithmeticTask()
    rng = random.Random(0)
    for problem in task.load("train", limit=100):
        solution = task.solution_steps(problem)
        depth = rng.randrange(len(solution))
        wrong = task.wrong_step(problem, solution[:depth], rng)
        assert wrong != solution[depth]
        assert parse_step(wrong) is not None or parse_answer(wrong) is not None
        assert not task.can_still_succeed(problem, [*solution[:depth], wrong])


def test_generation_is_seeded_distinct_in_range_and_splits_are_disjoint():
    config = ArithmeticConfig(operations=(2, 4), train_size=300)
    task = ArithmeticTask(config)
    splits = {s: task.load(s, limit=200, seed=3) for s in ("train", "validation", "test")}
    assert [p.id for p in task.load("train", limit=50, seed=3)] == \
        [p.id for p in splits["train"][:50]]
    assert task.load("train", limit=20, seed=4) != splits["train"][:20]
    ids = [{p.id for p in problems} for problems in splits.values()]
    assert all(len(s) == 200 for s in ids)
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for split, problems in splits.items():
        for problem in problems:
            assert split_of(problem.question, config) == split
            values = [int(line.split(" = ")[1]) for line in task.solution_steps(problem)[:-1]]
            assert all(0 <= v <= config.max_value for v in values)
            assert 2 <= len(problem.metadata["operations"]) <= 4


def test_a_tiny_world_draws_every_chain_its_ranges_allow():
    """Starts 2..3, 1 or 2 operations: + or - 1..2, * 2..3, every value in 0..6. The
    splits together hold each of the 55 chains, enumerated here by hand, exactly once."""
    config = ArithmeticConfig(operations=(1, 2), start_range=(2, 3), add_range=(1, 2),
                              multiply_range=(2, 3), operators="+-*", max_value=6,
                              train_size=41, validation_size=6, test_size=8)

    def moves(value):
        return [Operation(op, n) for op, operands in (("+", (1, 2)), ("-", (1, 2)),
                                                       ("*", (2, 3)))
                for n in operands if 0 <= Operation(op, n).apply(value) <= 6]

    chains = {Chain(start, ops).question for start in (2, 3) for first in moves(start)
              for ops in [(first,)] + [(first, then) for then in moves(first.apply(start))]}
    assert len(chains) == 55 and "Left to right: 3 * 2 - 2" in chains
    task = ArithmeticTask(config)
    drawn = [p.question for split in ("train", "validation", "test") for p in task.load(split)]
    assert len(drawn) == 55 and set(drawn) == chains
    # The default sizes are each split's own; a negative limit is an error.
    assert [len(task.load(split)) for split in ("train", "validation", "test")] == [41, 6, 8]
    with pytest.raises(ValueError, match="limit=-1 must be >= 0"):
        task.load("train", limit=-1)


def test_numbers_are_at_most_twelve_digits():
    assert parse_step("100000000000 + 1 = 100000000001").result == 100000000001
    assert parse_step("1000000000000 + 1 = 1000000000001") is None
    assert parse_answer("#### 999999999999") == 999999999999
    assert parse_answer("#### 1000000000000") is None


def test_bad_config_and_bad_problems_are_clear_errors():
    with pytest.raises(ValueError, match="operators"):
        ArithmeticConfig(operators="/")
    with pytest.raises(ValueError, match="start_range"):
        ArithmeticConfig(start_range=(5, 2))
    with pytest.raises(ValueError, match="max_value=99: must be at least start_range"):
        ArithmeticConfig(start_range=(2, 100))
    with pytest.raises(ValueError, match="at least 1 operation"):
        ArithmeticConfig(operations=(0, 3))
    with pytest.raises(ValueError, match=r"operators='': choose from \+-\*"):
        ArithmeticConfig(operators="")
    # Every range starts at 0: a negative operand would be written '+ -1', which no step
    # line spells.
    for name in ("operations", "start_range", "add_range", "multiply_range"):
        with pytest.raises(ValueError, match=rf"ArithmeticConfig.{name}=\(-1, 2\).*0 <= low"):
            ArithmeticConfig(**{name: (-1, 2)})
    with pytest.raises(ValueError, match=r"max_value=1000000000: .* below 10\^9"):
        ArithmeticConfig(max_value=10 ** 9)
    assert ArithmeticConfig(max_value=10 ** 9 - 1).max_value == 999_999_999
    with pytest.raises(ValueError, match="config must be an ArithmeticConfig or a mapping"):
        ArithmeticTask(4)
    with pytest.raises(ValueError, match="no field|unexpected keyword"):
        ArithmeticTask({"bogus": 1})
    with pytest.raises(ValueError, match="splits"):
        ArithmeticTask().load("dev")
    from qstar_jax.tasks.base import Problem
    with pytest.raises(ValueError, match="no arithmetic chain"):
        ArithmeticTask().solution_steps(Problem(id="x", question="q", reference="1"))


def test_the_default_worlds_first_problems_are_the_same_on_every_machine():
    # Each split draws from its own stream, a function of the split and the seed alone:
    # the default experiment's test problems are these whatever else a run asks for.
    task = ArithmeticTask()
    assert [p.question for p in task.load("test", limit=2)] == [
        "Left to right: 32 + 24 - 8 - 1 - 15 + 8", "Left to right: 31 + 5 - 23 - 2 - 2 - 2"]
    assert [p.question for p in task.load("train", limit=2)] == [
        "Left to right: 37 + 11 - 13 - 2 - 7 + 25", "Left to right: 46 - 9 + 14 + 18 - 21"]
