"""CountdownTask through the Task protocol: load, prompt, terminal steps, answers, grades."""

import random

import pytest

from qstar_jax.tasks.base import Problem, join_steps
from qstar_jax.tasks.countdown import (
    COUNTDOWN_ALPHABET, CountdownConfig, CountdownRules, CountdownTask, StepError)
from qstar_jax.tasks.countdown.problems import generate_problems

SMALL = CountdownConfig(num_count=4, number_range=(1, 9), target_range=(1, 40),
                        train_size=30, test_size=10)


@pytest.fixture(scope="module")
def task():
    return CountdownTask(SMALL)


@pytest.fixture(scope="module")
def any_step_task():
    return CountdownTask(CountdownConfig(
        rules=CountdownRules(must_use_all=False, allow_fractions=True, allow_negatives=True),
        num_count=4, number_range=(1, 5), target_range=(-20, 60), test_size=10))


def test_load_is_deterministic_and_sized(task):
    train = task.load("train")
    assert len(train) == 30 and len(task.load("test")) == 10
    assert [p.id for p in task.load("train", limit=12)] == [p.id for p in train[:12]]
    assert [p.id for p in CountdownTask(SMALL).load("train")] == [p.id for p in train]
    assert task.load("train", limit=0) == []
    reseeded = task.load("train", limit=5, seed=1)
    assert [(p.metadata["numbers"], p.metadata["target"]) for p in reseeded] == \
        generate_problems(SMALL, "train", 5, seed=1, solver=task.solver)
    assert [p.id for p in reseeded] != [p.id for p in train[:5]]
    with pytest.raises(ValueError, match="limit"):
        task.load("train", limit=-1)


def test_problem_record_and_prompt(task):
    problem = task.problem([8, 2, 5, 3], 24)
    assert problem == Problem(id="countdown/2 3 5 8 -> 24", question="Use 2 3 5 8 to make 24.",
                              reference="24", metadata={"numbers": (2, 3, 5, 8), "target": 24})
    assert task.prompt(problem) == "Use 2 3 5 8 to make 24.\n"
    seen = []
    chat_prompt = task.prompt(problem, chat=lambda messages: seen.append(messages) or "<chat>")
    assert chat_prompt == "<chat>"
    assert seen == [[{"role": "user", "content": "Use 2 3 5 8 to make 24."}]]
    for numbers, target in (([0, 3], 3), ([3, 8], "24"), ([3, 8], 24.0), ([], 0),
                            ([3.0, 8], 24), ([3, "8"], 24), ([True, 3], 4), ([3, 8], True)):
        with pytest.raises(ValueError, match="positive integer"):
            task.problem(numbers, target)


def test_solution_traces_grade_correct_and_use_only_the_alphabet(task, any_step_task):
    for current in (task, any_step_task):
        rng = random.Random(0)
        for problem in current.load("test"):
            steps = current.solution_steps(problem, rng)
            completion = join_steps(steps) + "\n"
            assert current.grade(problem, completion)
            assert set(current.prompt(problem) + completion) <= set(COUNTDOWN_ALPHABET)
            assert [current.is_terminal_step(s) for s in steps] == \
                [False] * (len(steps) - 1) + [True]
            assert current.extract_answer(completion) == problem.reference
            assert current.step_legality(problem, steps) == [True] * len(steps)


def test_solution_steps_are_seeded(task):
    problem = task.problem([1, 2, 3, 4], 10)
    draws = [task.solution_steps(problem, random.Random(seed)) for seed in range(20)]
    assert draws[:3] == [task.solution_steps(problem, random.Random(s)) for s in range(3)]
    assert len({tuple(d) for d in draws}) > 3


def test_terminal_steps_and_answers(task):
    assert task.is_terminal_step("96 / 4 = 24 (left: 24)")
    assert task.is_terminal_step("96 / 4 = 24 (left: 24)\n")
    assert task.is_terminal_step("5 + 3 = 8 (left: 2 8 8) done")
    assert not task.is_terminal_step("100 - 4 = 96 (left: 4 96)")
    assert not task.is_terminal_step("24")
    # The parser is strict: a step with spaces around it is no step, terminal or not.
    assert not task.is_terminal_step(" 96 / 4 = 24 (left: 24)")
    assert not task.is_terminal_step("96 / 4 = 24 (left: 24) \n")
    assert task.extract_answer("10 * 10 = 100 (left: 4 4 100)\n100 - 4 = 96 (left: 4 96)\n"
                               "96 / 4 = 25 (left: 25)") == "25"
    assert task.extract_answer("10 * 10 = 100 (left: 4 4 100)") is None
    assert task.extract_answer("") is None
    assert task.extract_answer("the answer is 24") is None


def test_grade_and_reasons_on_a_known_problem(task):
    problem = task.problem([4, 4, 10, 10], 24)
    steps = ["10 * 10 = 100 (left: 4 4 100)", "100 - 4 = 96 (left: 4 96)",
             "96 / 4 = 24 (left: 24)"]
    assert task.grade(problem, "\n".join(steps))
    assert task.grade(problem, "\n\n".join(steps) + "\n")  # blank lines are not steps
    assert not task.grade(problem, "\n".join(steps[:2]))
    assert [c.error for c in task.check_steps(problem, ["10 * 10 = 99 (left: 4 4 99)"])] == \
        [StepError.WRONG_ARITHMETIC]
    assert task.can_still_succeed(problem, steps[:1])
    assert not task.can_still_succeed(problem, ["10 + 10 = 20 (left: 4 4 20)"])


def test_step_rewards_play_the_tasks_own_rules(any_step_task):
    """must_use_all off, negatives on: 'done' on the target is +1, a negative value 0."""
    problem = any_step_task.problem([2, 3, 5, 8], 8)
    assert [any_step_task.step_reward(problem, [step]) for step in (
        "5 + 3 = 8 (left: 2 8 8) done", "5 - 8 = -3 (left: 2 3 -3)", "5 + 3 = 8 (left: 2 8 8)",
        "5 + 3 = 9 (left: 2 8 9)")] == [1.0, 0.0, 0.0, -1.0]


def test_problem_without_countdown_metadata_is_a_clear_error(task):
    stranger = Problem(id="gsm8k/1", question="?", reference="3")
    with pytest.raises(ValueError, match="gsm8k/1.*CountdownTask.load"):
        task.grade(stranger, "1 + 2 = 3 (left: 3)")


def test_config_can_come_as_yaml_mappings():
    task = CountdownTask({"num_count": 3, "number_range": [1, 6],
                          "rules": {"must_use_all": False, "operations": ["+", "*"]}})
    assert task.config == CountdownConfig(
        num_count=3, number_range=(1, 6),
        rules=CountdownRules(must_use_all=False, operations=("+", "*")))
    assert task.solver.rules == task.config.rules
    with pytest.raises(ValueError, match=r"CountdownConfig has no field\(s\) \['numbers'\]"):
        CountdownTask({"numbers": 3})
    with pytest.raises(ValueError, match=r"CountdownRules has no field\(s\) \['fractions'\]"):
        CountdownTask({"rules": {"fractions": True}})
    with pytest.raises(ValueError, match="expected a CountdownConfig or a mapping"):
        CountdownTask(4)
