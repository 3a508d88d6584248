"""MBPP: loading both configs, the prompt's shown tests, code steps, grading on hidden tests."""

import json
from pathlib import Path

import pytest

from qstar_jax.tasks.base import MalformedRecordError, Problem
from qstar_jax.tasks.code_answers import HiddenTests, code_from_completion
from qstar_jax.tasks.sandbox.sandbox import ExecResult
from qstar_jax.tasks.mbpp import MBPP_FORMAT, MBPP_FORMATS, MbppSanitizedTask, MbppTask

FIXTURES = Path(__file__).parents[1] / "fixtures" / "mbpp"


def fake_chat(messages):
    return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture(scope="module")
def full_task(cache_dir):
    return MbppTask(data_files={"test": str(FIXTURES / "full_test.parquet")},
                    cache_dir=cache_dir)


@pytest.fixture(scope="module")
def full(full_task):
    return {p.metadata["task_id"]: p for p in full_task.load("test")}


@pytest.fixture(scope="module")
def with_challenge(cache_dir):
    task = MbppTask(data_files={"test": str(FIXTURES / "full_test.parquet")},
                    cache_dir=cache_dir, challenge_tests=True)
    return {p.metadata["task_id"]: p for p in task.load("test")}


@pytest.fixture(scope="module")
def sanitized(cache_dir):
    task = MbppSanitizedTask(data_files=str(FIXTURES / "sanitized_test.jsonl"),
                             cache_dir=cache_dir)
    return {p.metadata["task_id"]: p for p in task.load("test")}


def test_the_task_prepares_its_files_under_its_cache_dir(tmp_path):
    MbppTask(data_files=str(FIXTURES / "full_test.parquet"), cache_dir=str(tmp_path)).load("test")
    assert (tmp_path / "parquet").is_dir()


def test_a_subset_is_the_seeds_draw(full_task):
    # Seed 0 draws 903 and 905.
    assert [p.id for p in full_task.load("test", limit=2, seed=1)] == ["mbpp/901", "mbpp/905"]


def test_full_config_grades_test_list_and_challenge_tests_only_when_asked(full, with_challenge):
    assert sorted(full) == [901, 902, 903, 904, 905]
    evens = full[904]
    assert evens.id == "mbpp/904"
    assert evens.question == "Write a function to count the even numbers in a list."
    test_list = ("assert count_even([1, 2, 3, 4]) == 2", "assert count_even([]) == 0",
                 "assert count_even([5, 7]) == 0")
    assert evens.reference == HiddenTests(setup="", tests=test_list)  # as MBPP is scored
    assert with_challenge[904].reference == HiddenTests(setup="", tests=(
        *test_list, "assert count_even(list(range(100))) == 50"))
    assert evens.metadata["test_list"] == with_challenge[904].metadata["test_list"] == test_list
    assert full[903].reference.setup == "import math"
    assert with_challenge[901].reference == full[901].reference  # it has no challenge tests


def test_sanitized_config_runs_test_imports_as_setup(sanitized):
    circle = sanitized[912]
    assert circle.id == "mbpp_sanitized/912"
    assert circle.question == "Write a function to compute the area of a circle from its radius."
    assert circle.reference.setup == "import math"
    assert len(circle.reference.tests) == 3


def test_records_without_tests_are_malformed(cache_dir):
    with pytest.raises(MalformedRecordError,
                       match="mbpp split 'test', record 1: its 'test_list' is an empty list"):
        MbppTask(data_files=str(FIXTURES / "full_malformed.parquet"),
                 cache_dir=cache_dir).load("test")
    sanitized = MbppSanitizedTask(data_files=str(FIXTURES / "sanitized_malformed.jsonl"),
                                  cache_dir=cache_dir)
    with pytest.raises(MalformedRecordError, match="mbpp_sanitized split 'test', record 2"):
        sanitized.load("test")
    assert [p.metadata["task_id"] for p in sanitized.load("test", skip_malformed=True)] == \
        [911, 912]


def test_two_records_of_one_task_id_are_refused(cache_dir, tmp_path):
    records = (FIXTURES / "sanitized_test.jsonl").read_text().splitlines(keepends=True)
    data = tmp_path / "test.jsonl"
    data.write_text("".join(records + records[:1]))
    with pytest.raises(MalformedRecordError, match=(
            f"^mbpp_sanitized split 'test' from local files \\['{data}'\\]: two records have "
            "the id 'mbpp_sanitized/911'; ")):
        MbppSanitizedTask(data_files=str(data), cache_dir=cache_dir).load("test")


def test_files_of_the_other_configuration_name_the_task_that_reads_them(cache_dir):
    with pytest.raises(MalformedRecordError) as raised:
        MbppTask(data_files=str(FIXTURES / "sanitized_test.jsonl"), cache_dir=cache_dir).load(
            "test")
    assert str(raised.value).startswith("mbpp split 'test' from local files ")
    assert str(raised.value).endswith(
        "lacks the column(s) ['text']; it has ['source_file', 'task_id', 'prompt', 'code', "
        "'test_imports', 'test_list']. Expected columns: task_id (int: the problem's id); text "
        "(str: the task description); test_list (list[str]: the asserts shown and graded); "
        "test_setup_code (str: code run before the tests, optional); "
        "challenge_test_list (list[str]: more hidden asserts, optional); code (str: a "
        "reference solution, optional). Files of MBPP's sanitized configuration (a 'prompt' "
        "column) load with task.name=mbpp_sanitized.")
    with pytest.raises(MalformedRecordError, match=r"lacks the column\(s\) \['prompt'\]; .*\. "
                       r"Files of MBPP's full configuration \(a 'text' column\) load with "
                       r"task\.name=mbpp\.$"):
        MbppSanitizedTask(data_files=str(FIXTURES / "full_test.parquet"),
                          cache_dir=cache_dir).load("test")


def test_prompt_shows_the_description_and_only_the_first_test(full):
    problem = full[901]
    prompt = MbppTask(n_shot=1).prompt(problem)
    assert prompt.endswith(
        "Question: Write a function to find the largest of three numbers.\n"
        "Your code should pass this test:\nassert max_of_three(1, 5, 3) == 5\n"
        "Answer:\n```python\n")
    assert "max_of_three(-1, -5, -3)" not in prompt
    assert "max_of_three(7, 7, 2)" not in prompt
    assert prompt.count("```python\n") == 2
    assert "    return sum(n * n for n in numbers)\n```\n\nQuestion:" in prompt


def test_chat_prompt_opens_the_code_block_after_the_template(full):
    problem = full[902]
    prompt = MbppTask(n_shot=0).prompt(problem, chat=fake_chat)
    assert prompt == fake_chat([
        {"role": "system", "content": MBPP_FORMAT.instruction},
        {"role": "user", "content": problem.question + "\nYour code should pass this test:\n"
                                    "assert reverse_words('hello big world') == "
                                    "'world big hello'"},
    ]) + "```python\n"


def test_all_shown_tests_are_the_test_list_under_these_tests(full):
    problem = full[901]
    prompt = MbppTask(n_shot=0, shown_tests="all").prompt(problem)
    assert prompt == (
        "Write a Python function for the task. Reply with the code only, in one ```python "
        "block, and make sure it passes the given tests.\n\n"
        "Question: Write a function to find the largest of three numbers.\n"
        "Your code should pass these tests:\n\n"
        "assert max_of_three(1, 5, 3) == 5\nassert max_of_three(-1, -5, -3) == -1\n"
        "assert max_of_three(7, 7, 2) == 7\n"
        "Answer:\n```python\n")


def test_all_shown_tests_in_a_chat_turn_and_the_examples_agree(full):
    problem = full[902]
    prompt = MbppTask(n_shot=3, shown_tests="all").prompt(problem, chat=fake_chat)
    system = MBPP_FORMATS["all"].instruction + "\n\nExamples:\n\n" + "\n\n".join(
        f"Question: {ex.question}\nAnswer:\n```python\n{ex.solution}"
        for ex in MBPP_FORMATS["all"].examples)
    assert prompt == fake_chat([
        {"role": "system", "content": system},
        {"role": "user", "content": "Write a function to reverse the order of the words in a "
                                    "sentence.\nYour code should pass these tests:\n\n"
                                    "assert reverse_words('hello big world') == "
                                    "'world big hello'\nassert reverse_words('one') == 'one'\n"
                                    "assert reverse_words('a b') == 'b a'"}]) + "```python\n"
    assert "Write a function to count the vowels in a string.\nYour code should pass these "\
           "tests:\n\nassert count_vowels(\"banana\") == 3\n" in system
    assert "this test" not in prompt and "given test." not in prompt
    assert prompt.count("Your code should pass these tests:\n\nassert ") == 4
    first = MbppTask(n_shot=3).prompt(problem, chat=fake_chat)
    assert "these tests" not in first and first.count("Your code should pass this test:\n") == 4
    assert "given test." in first and "count_vowels(\"rhythm\")" not in first


def test_the_worked_examples_pass_the_tests_they_show():
    for example in MBPP_FORMATS["all"].examples:
        description, tests = example.question.split("\nYour code should pass these tests:\n\n")
        problem = Problem(id="example", question=description,
                          reference=HiddenTests(setup="", tests=tuple(tests.split("\n"))))
        assert len(problem.reference.tests) == 3
        assert MbppTask().grade(problem, example.solution), description
    assert [ex.solution for ex in MBPP_FORMATS["all"].examples] == \
        [ex.solution for ex in MBPP_FORMAT.examples]


@pytest.mark.parametrize(("task_class", "options", "message"), [
    (MbppTask, {"shown_tests": "three"}, r"shown_tests must be one of \('first', 'all'\), got "
                                         r"'three'"),
    (MbppTask, {"challenge_tests": "yes"}, "challenge_tests must be true or false, got 'yes'"),
    (MbppSanitizedTask, {"challenge_tests": True}, "mbpp_sanitized has no challenge tests"),
])
def test_bad_test_options_fail_when_the_task_is_made(task_class, options, message):
    with pytest.raises(ValueError, match=message):
        task_class(**options)


def test_terminal_step_is_the_closing_fence():
    task = MbppTask()
    assert task.is_terminal_step("```")
    assert task.is_terminal_step("  ```  ")
    assert not task.is_terminal_step("```python")
    assert not task.is_terminal_step("    return a + b")


def test_code_from_completion():
    code = "def add(a, b):\n    return a + b"
    assert code_from_completion(code + "\n```\nSome words after the block.") == code
    assert code_from_completion("```python\n" + code + "\n```") == code
    assert code_from_completion("\n" + code) == code  # cut off before the fence
    assert code_from_completion("```\nprint(1)") == ""
    # A re-opened block after blank lines, or indented; a closing fence with spaces around.
    assert code_from_completion("\n\n```python\n" + code + "\n```") == code
    assert code_from_completion("  ```python\n" + code + "\n  ```  \nprint(2)") == code
    assert MbppTask().extract_answer("```") is None


def test_reference_programs_pass_all_hidden_tests(full, sanitized):
    full_task, sanitized_task = MbppTask(), MbppSanitizedTask()
    for problem in full.values():
        assert full_task.grade(problem, problem.metadata["reference_code"] + "\n```"), problem.id
    for problem in (sanitized[911], sanitized[912]):
        assert sanitized_task.grade(problem, problem.metadata["reference_code"] + "\n```")


def test_a_program_that_patches_the_math_module_the_tests_use_fails(full, sanitized):
    # 912's tests take their expected values from math.pi, 903's from math.sqrt.
    patch_pi = "import math\nmath.pi = 0.0\ndef circle_area(radius):\n    return 0.0\n```"
    assert not MbppSanitizedTask().grade(sanitized[912], patch_pi)
    patch_sqrt = ("import math\nmath.sqrt = lambda x: 4.0\n"
                  "def root2(x):\n    return 4.0\n```")
    assert not MbppTask().grade(full[903], patch_sqrt)


def test_a_reference_returning_a_counter_passes():
    # MBPP 88's reference (full config) returns collections.Counter; its test compares it
    # with a dict, which Python finds equal.
    problem = Problem(id="mbpp/88", question="", reference=HiddenTests(setup="", tests=(
        "assert freq_count([10,10,10,10,20,20,20,20,40,40,50,50,30])"
        "==({10: 4, 20: 4, 40: 2, 50: 2, 30: 1})",)))
    reference = ("import collections\ndef freq_count(list1):\n"
                 "  freq_count= collections.Counter(list1)\n  return freq_count\n```")
    assert MbppTask().grade_status(problem, reference) == "passed"


def test_a_program_that_passes_only_the_shown_test_fails(full):
    task, problem = MbppTask(), full[901]
    cheat = "def max_of_three(a, b, c):\n    return 5\n```"
    assert task.grade(problem, "def max_of_three(a, b, c):\n    return max(a, b, c)\n```")
    assert not task.grade(problem, cheat)


def test_challenge_tests_are_graded_only_with_challenge_tests(full, with_challenge):
    only_small_lists = ("def count_even(numbers):\n"
                        "    return min(2, sum(1 for n in numbers if n % 2 == 0))\n```")
    assert MbppTask().grade(full[904], only_small_lists)
    assert not MbppTask(challenge_tests=True).grade(with_challenge[904], only_small_lists)
    reference = with_challenge[904].metadata["reference_code"] + "\n```"
    assert MbppTask(challenge_tests=True).grade(with_challenge[904], reference)


def test_setup_code_is_run_before_the_tests(full):
    # The tests of 903 call math.sqrt; the program itself imports nothing.
    program = "def root2(x):\n    return round(x ** 0.5, 2)\n```"
    assert MbppTask().grade(full[903], program)


@pytest.mark.parametrize("status", ["passed", "failed", "timeout", "error", "memory_exceeded",
                                    "killed"])
def test_only_a_passed_run_grades_as_right(status, full, monkeypatch):
    # A timeout, a crash or a memory limit is never a pass, whatever the tests did before it.
    monkeypatch.setattr(HiddenTests, "run", lambda *_, **__: ExecResult(
        passed=status == "passed", status=status, detail="stubbed"))
    task, answer = MbppTask(), "def max_of_three(a, b, c):\n    return 5\n```"
    assert (task.grade(full[901], answer), task.grade_status(full[901], answer)) == (
        status == "passed", status)


def test_the_sandbox_gets_the_answers_code_and_the_tasks_limits(full, monkeypatch):
    calls = []
    monkeypatch.setattr(HiddenTests, "run", lambda tests, program, **limits: calls.append(
        (tests, program, limits)) or ExecResult(passed=True, status="passed", detail=""))
    answer = "```python\ndef max_of_three(a, b, c):\n    return 5\n```\nprose"
    MbppTask().grade(full[901], answer)
    MbppSanitizedTask(timeout_s=2.5, memory_mb=256).grade(full[901], answer)
    program = "def max_of_three(a, b, c):\n    return 5"
    assert calls == [(full[901].reference, program, {"timeout_s": 5.0, "memory_mb": 512}),
                     (full[901].reference, program, {"timeout_s": 2.5, "memory_mb": 256})]


def test_broken_or_empty_programs_fail(full):
    task = MbppTask()
    assert not task.grade(full[902], "def reverse_words(sentence)\n    return sentence\n```")
    assert not task.grade(full[902], "```")


def test_several_test_imports_become_one_line_each_of_setup(cache_dir, tmp_path):
    record = {"source_file": "fixture.py", "task_id": 916, "prompt": "Write a function to "
              "find the words of a text.", "code": "def words(text):\n    return text.split()",
              "test_imports": ["import math", "import re"],
              "test_list": ["assert words('a b') == re.findall(r'\\w+', 'a b')"]}
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps(record) + "\n")
    (problem,) = MbppSanitizedTask(data_files=str(data), cache_dir=cache_dir).load("test")
    assert problem.reference == HiddenTests(setup="import math\nimport re",
                                            tests=tuple(record["test_list"]))


def test_the_tasks_memory_limit_is_the_sandboxs(full):
    # 200 MiB held while the tests run: within the default 512 MiB, not within 128.
    greedy = ("def max_of_three(a, b, c):\n    global ballast\n"
              "    ballast = bytearray(200 << 20)\n    return max(a, b, c)\n```")
    assert MbppTask().grade_status(full[901], greedy) == "passed"
    assert MbppTask(memory_mb=128).grade_status(full[901], greedy) == "memory_exceeded"


def test_a_blank_test_in_test_list_is_malformed():
    # A blank test would pass any program.
    record = {"task_id": 917, "text": "Write a function to add one.", "test_setup_code": "",
              "test_list": ["assert add_one(1) == 2", "  "], "challenge_test_list": []}
    with pytest.raises(ValueError, match=r"its 'test_list' holds the str '  ' among its items, "
                                         r"where each must be text that is not blank"):
        MbppTask()._problem_from_record(record, "mbpp/test/0")


def test_a_record_without_a_description_is_malformed_and_one_without_an_id_keeps_its_default():
    record = {"task_id": None, "text": "Write a function to add one.", "test_setup_code": "",
              "test_list": ["assert add_one(1) == 2"], "challenge_test_list": []}
    assert MbppTask()._problem_from_record(record, "mbpp/test/3").id == "mbpp/test/3"
    record["task_id"] = 918
    assert MbppTask()._problem_from_record(record, "mbpp/test/3").id == "mbpp/918"
    for description, held in (("", "blank text"), (None, "nothing")):
        with pytest.raises(ValueError, match=f"its 'text' holds {held}, where the task needs "
                                             "text"):
            MbppTask()._problem_from_record({**record, "text": description}, "mbpp/test/3")


def test_more_shots_than_worked_examples_fail_when_the_task_is_made():
    assert MbppTask(n_shot=3).n_shot == 3
    with pytest.raises(ValueError, match=r"n_shot must be between 0 and 3 .* got 4"):
        MbppSanitizedTask(n_shot=4)


@pytest.mark.parametrize("column", ["test_list", "challenge_test_list"])
def test_a_list_of_tests_written_as_one_string_is_malformed(column):
    # Read as a list, the string was a "test" per character: graded on '(' or 'a', every
    # program failed or the run stopped at grading, after generation.
    record = {"task_id": 917, "text": "Write a function to add one.", "test_setup_code": "",
              "test_list": ["assert add_one(1) == 2"], "challenge_test_list": [],
              column: "assert add_one(2) == 3"}
    with pytest.raises(ValueError, match=(
            f"^its '{column}' holds the str 'assert add_one\\(2\\) == 3', where the task "
            "needs a list of strings$")):
        MbppTask()._problem_from_record(record, "mbpp/test/0")


def test_setup_code_is_text_or_a_list_of_lines():
    record = {"task_id": 917, "prompt": "Write a function to add one.",
              "test_list": ["assert add_one(1) == 2"], "test_imports": ["import math", "import re"]}
    assert MbppSanitizedTask()._problem_from_record(record, "x").reference.setup == \
        "import math\nimport re"
    with pytest.raises(ValueError, match="^its 'test_imports' holds the int 5, where the task "
                                         "needs code$"):
        MbppSanitizedTask()._problem_from_record({**record, "test_imports": 5}, "x")
