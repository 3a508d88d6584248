"""GSM-Symbolic: splits dealt from reasoning-gym's stream (reproducible, disjoint), the
GSM8K prompt and grading, worked solutions as training traces, and bad input."""

import sys
import types

import pytest

from qstar_jax.tasks import make_task
from qstar_jax.tasks import gsm_symbolic
from qstar_jax.tasks.gsm_symbolic import GsmSymbolicTask, problem_from_instance

SIZES = {"test_size": 12, "validation_size": 5, "train_size": 20}


@pytest.fixture(scope="module")
def task():
    return GsmSymbolicTask(**SIZES)


@pytest.fixture(scope="module")
def splits(task):
    return {split: task.load(split) for split in ("test", "validation", "train")}


def test_splits_have_their_sizes_and_share_no_problem(splits):
    assert {split: len(problems) for split, problems in splits.items()} == {
        "test": 12, "validation": 5, "train": 20}
    questions = [p.question for problems in splits.values() for p in problems]
    ids = [p.id for problems in splits.values() for p in problems]
    assert len(set(questions)) == len(questions) == 37 and len(set(ids)) == 37


def test_splits_are_reproducible_by_seed(task, splits):
    assert [p.id for p in task.load("train")] == [p.id for p in splits["train"]]
    assert GsmSymbolicTask(**SIZES).load("test") == splits["test"]
    other = GsmSymbolicTask(**SIZES, split_seed=1).load("test")
    assert [p.question for p in other] != [p.question for p in splits["test"]]
    # The test split depends on its own size and the seed only.
    assert GsmSymbolicTask(test_size=12, train_size=3).load("test") == splits["test"]


def test_the_first_problem_is_reasoning_gyms_first_instance(splits):
    problem = splits["test"][0]
    assert problem.id == "gsm_symbolic/0"
    assert problem.question == (
        "A carpenter works for 2 weeks every month and for 6 days every week. If he gets paid "
        "\u00a3195 every day, how much does he earn if he works for a year?")
    assert problem.reference == "28080"


def test_worked_solutions_are_gsm8k_traces_that_grade_right(task, splits):
    problem = splits["test"][0]
    steps = task.solution_steps(problem)
    assert steps[-1] == "The answer is: 28080" and len(steps) == 4
    assert not any(step.startswith("####") for step in steps)
    for problems in splits.values():
        for p in problems:
            assert task.grade(p, "\n".join(task.solution_steps(p)))


def test_grading_reads_the_answer_line_as_a_number(task, splits):
    problem = splits["test"][0]
    assert task.is_terminal_step("The answer is: 28,080")
    assert not task.is_terminal_step("He earns 2340 a month.")
    assert task.grade(problem, "12 days a month.\nThe answer is: 28,080")
    assert task.grade(problem, "The answer is: \u00a328080.00")
    assert not task.grade(problem, "The answer is: 28081")
    assert not task.grade(problem, "He earns 28080 a year.")


def test_the_prompt_is_gsm8ks(task, splits):
    problem = splits["test"][0]
    prompt = GsmSymbolicTask(n_shot=1).prompt(problem)
    assert prompt.endswith(f"Question: {problem.question}\nAnswer:\n")
    assert "The answer is: 27" in prompt


def test_subsets_are_drawn_by_seed(task, splits):
    subset = task.load("train", limit=6, seed=2)
    assert len(subset) == 6 and {p.id for p in subset} <= {p.id for p in splits["train"]}
    assert subset == task.load("train", limit=6, seed=2)
    # The split's problems at the seed's draws, kept in the split's order; a smaller limit
    # with the same seed is a subset, another seed draws others.
    train = splits["train"]
    assert subset == [train[i] for i in (2, 6, 7, 10, 11, 18)]
    assert task.load("train", limit=3, seed=2) == [train[i] for i in (6, 7, 18)]
    assert task.load("train", limit=6, seed=3) == [train[i] for i in (3, 8, 12, 13, 16, 18)]
    assert task.load("train", limit=20, seed=3) == train  # the whole split may be asked for


def test_it_is_registered_with_its_options():
    task = make_task("gsm_symbolic", test_size=3, split_seed=4)
    assert type(task) is GsmSymbolicTask and (task.test_size, task.split_seed) == (3, 4)


@pytest.mark.parametrize(("options", "split", "limit", "message"), [
    ({}, "dev", None, r"gsm_symbolic has no split 'dev'; its splits are "
                      r"\('test', 'validation', 'train'\)"),
    ({"test_size": 4}, "test", 5, r"gsm_symbolic split 'test' has 4 problems; asked for 5\. "
                                  r".*change task\.options\.test_size"),
    ({"validation_size": 0}, "validation", None, "split 'validation' is empty"),
    ({"test_size": 4}, "test", 2.5, r"split 'test' has 4 problems; asked for 2\.5\. "),
    ({"test_size": 4}, "test", True, r"split 'test' has 4 problems; asked for True\. "),
])
def test_splits_and_sizes_it_cannot_give_are_clear_errors(options, split, limit, message):
    with pytest.raises(ValueError, match=message):
        GsmSymbolicTask(**options).load(split, limit=limit)


def test_bad_sizes_fail_when_the_task_is_made():
    with pytest.raises(ValueError, match="train_size must be an int >= 0, got -1"):
        GsmSymbolicTask(train_size=-1)
    with pytest.raises(ValueError, match=r"n_shot must be between 0 and 4 .*got 5"):
        GsmSymbolicTask(n_shot=5)


def test_blank_lines_of_a_worked_solution_are_no_steps():
    instance = {"question": "Q? Give the result as your final answer. Do not include units.",
                "answer": "4", "metadata": {"answer_cot": "2 + 2 = 4\n\n  \nSo 4.\n#### 4"}}
    problem = problem_from_instance(instance, 3)
    assert (problem.id, problem.question, problem.reference) == ("gsm_symbolic/3", "Q?", "4")
    assert problem.metadata["solution_steps"] == ("2 + 2 = 4", "So 4.", "The answer is: 4")


@pytest.mark.parametrize("instance", [
    {"answer": "4", "metadata": {"answer_cot": "#### 4"}},
    {"question": "Q?", "answer": 4, "metadata": {"answer_cot": "#### 4"}},
    {"question": "Q?", "answer": "4", "metadata": None},
    {"question": "Q?", "answer": "4", "metadata": {"answer_cot": ["#### 4"]}},
], ids=["no question", "answer not a str", "no metadata", "solution not a str"])
def test_an_instance_without_a_question_answer_or_worked_solution_is_an_error(instance):
    with pytest.raises(ValueError, match=r"^gsm_symbolic instance 4 lacks a question, answer or "
                                         r"worked solution \(reasoning-gym's format changed\?\)$"):
        problem_from_instance(instance, 4)


def test_an_instance_whose_answer_disagrees_with_its_solution_is_an_error():
    instance = {"question": "Q?", "answer": "5",
                "metadata": {"answer_cot": "2 + 2 = 4\n#### 4"}}
    with pytest.raises(ValueError, match=r"instance 7: its answer '5' is not the worked "
                                         r"solution's '4'"):
        problem_from_instance(instance, 7)


def test_a_missing_package_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym.arithmetic.gsm_symbolic.gsm_symbolic", None)
    with pytest.raises(ModuleNotFoundError, match=r"task 'gsm_symbolic' needs the "
                                                  r"'reasoning-gym' package.*`pip install "
                                                  r"reasoning-gym`"):
        GsmSymbolicTask(test_size=2).load("test")


def fake_reasoning_gym(questions):
    """A stand-in for reasoning-gym's module whose stream asks ``questions`` in order
    (repeating the last one past their end); instance k's answer is k."""
    def instance(index):
        question = questions[min(index, len(questions) - 1)]
        return {"question": question, "answer": str(index),
                "metadata": {"answer_cot": f"Step {index}.\n#### {index}"}}

    class Config:
        def __init__(self, *, seed, size):
            self.size = size

    class Dataset:
        def __init__(self, config):
            self.size = config.size

        def __getitem__(self, index):
            if not 0 <= index < self.size:
                raise IndexError(index)
            return instance(index)

    return types.SimpleNamespace(GSMSymbolicDatasetConfig=Config, GSMSymbolicDataset=Dataset)


def test_a_repeated_question_is_skipped_so_no_problem_is_dealt_twice(monkeypatch):
    stream = ["Q0", "Q1", "Q0", "Q2", "Q3", "Q1", "Q4", "Q5"]
    monkeypatch.setattr(gsm_symbolic, "import_package", lambda *_: fake_reasoning_gym(stream))
    task = GsmSymbolicTask(test_size=2, validation_size=1, train_size=2)
    dealt = {split: [(p.id, p.question) for p in task.load(split)]
             for split in ("test", "validation", "train")}
    assert dealt == {"test": [("gsm_symbolic/0", "Q0"), ("gsm_symbolic/1", "Q1")],
                     "validation": [("gsm_symbolic/3", "Q2")],
                     "train": [("gsm_symbolic/4", "Q3"), ("gsm_symbolic/6", "Q4")]}
    # A stream that runs out of new questions is an error, not a short split.
    monkeypatch.setattr(gsm_symbolic, "import_package", lambda *_: fake_reasoning_gym(["Q0"]))
    with pytest.raises(ValueError, match=r"made only 1 distinct problems in 108 draws, short "
                                         r"of the 2 asked for"):
        GsmSymbolicTask(test_size=2).load("test")
