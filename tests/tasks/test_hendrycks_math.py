"""MATH and MATH-500: loading, the boxed answer line, prompts, grading."""

from fractions import Fraction
from pathlib import Path

import pytest

from qstar_jax.tasks.base import MalformedRecordError, Problem
from qstar_jax.tasks.hendrycks_math import (MATH_FORMAT, MATH_SUBJECTS, Math500Task, MathTask,
                                            _problem_from_math500_record,
                                            _problem_from_math_record)

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture(scope="module")
def math_problems(cache_dir):
    return MathTask(data_files=str(FIXTURES / "math" / "test.jsonl"),
                    cache_dir=cache_dir).load("test")


@pytest.fixture(scope="module")
def math500_problems(cache_dir):
    return Math500Task(data_files={"test": str(FIXTURES / "math500" / "test.jsonl")},
                       cache_dir=cache_dir).load("test")


def test_math_reference_is_the_last_box_of_the_solution(math_problems):
    assert [p.reference for p in math_problems] == \
        ["7", "2", "\\frac{3}{4}", "24", "10", "-3, 3", "2"]
    geometry = math_problems[4]
    assert geometry.id == "math/test/4"
    assert geometry.metadata["subject"] == "Geometry"
    assert geometry.metadata["level"] == "Level 2"
    assert geometry.metadata["solution"] == (
        "Its area would be $\\boxed{24}$, but we want the hypotenuse: "
        "$\\sqrt{6^2 + 8^2} = \\sqrt{100} = \\boxed{10}$.")
    assert geometry.question.startswith("A right triangle has legs")


def test_math_loads_all_seven_subject_configs_from_the_hub_by_default():
    assert MathTask().hub_configs == MATH_SUBJECTS
    assert len(MATH_SUBJECTS) == 7 and "counting_and_probability" in MATH_SUBJECTS


def test_math_solution_without_box_is_malformed(cache_dir):
    bad = MathTask(data_files=str(FIXTURES / "math" / "malformed.jsonl"), cache_dir=cache_dir)
    with pytest.raises(MalformedRecordError, match=r"record 1: its 'solution' has no \\boxed"):
        bad.load("test")
    assert [p.reference for p in bad.load("test", skip_malformed=True)] == ["7", "\\frac{3}{4}"]


def test_math500_uses_its_answer_column_and_unique_id(math500_problems):
    assert [p.reference for p in math500_problems] == \
        ["12", "15", "\\frac{5}{6}", "[2, \\infty)", "\\frac{1}{4}"]
    assert math500_problems[0].id == "test/number_theory/9001.json"
    assert math500_problems[3].metadata == {
        "solution": "Adding $2$ gives $x \\ge 2$, that is $\\boxed{[2, \\infty)}$.",
        "level": 2, "subject": "Intermediate Algebra"}


def test_math500_record_without_answer_is_malformed(cache_dir):
    bad = Math500Task(data_files=str(FIXTURES / "math500" / "malformed.jsonl"),
                      cache_dir=cache_dir)
    with pytest.raises(MalformedRecordError, match="math500 split 'test', record 1"):
        bad.load("test")
    assert len(bad.load("test", skip_malformed=True)) == 2


@pytest.mark.parametrize(("task_class", "fixture"), [(MathTask, "math"), (Math500Task, "math500")])
def test_the_task_prepares_its_files_under_its_cache_dir(task_class, fixture, tmp_path):
    task_class(data_files=str(FIXTURES / fixture / "test.jsonl"),
               cache_dir=str(tmp_path)).load("test")
    assert (tmp_path / "json").is_dir()


def test_seeded_subset_of_math(cache_dir, math_problems):
    task = MathTask(data_files=str(FIXTURES / "math" / "test.jsonl"), cache_dir=cache_dir)
    subset = task.load("test", limit=4, seed=11)
    assert [p.id for p in subset] == [p.id for p in task.load("test", limit=4, seed=11)]
    assert {p.id for p in subset} < {p.id for p in math_problems}
    # The seed's draw (seed 0 draws 2, 3, 4, 6); MATH-500 ids are its unique_id.
    assert [p.id for p in subset] == [f"math/test/{i}" for i in (1, 3, 4, 5)]
    math500 = Math500Task(data_files={"test": str(FIXTURES / "math500" / "test.jsonl")},
                          cache_dir=cache_dir)
    assert [p.id for p in math500.load("test", limit=2, seed=1)] == [
        "test/number_theory/9001.json", "test/counting_and_probability/9005.json"]


def test_prompts(math500_problems):
    problem = math500_problems[2]
    plain = MathTask(n_shot=1).prompt(problem)
    assert plain == (f"{MATH_FORMAT.instruction}\n\nQuestion: {MATH_FORMAT.examples[0].question}"
                     f"\nAnswer:\n{MATH_FORMAT.examples[0].solution}\n\n"
                     f"Question: {problem.question}\nAnswer:\n")
    # By default every one of the 4 worked examples is shown.
    assert MathTask().n_shot == Math500Task().n_shot == len(MATH_FORMAT.examples) == 4
    messages = []
    chat = Math500Task(n_shot=0).prompt(problem, chat=lambda m: messages.extend(m) or "CHAT")
    assert chat == "CHAT"
    assert messages == [{"role": "system", "content": MATH_FORMAT.instruction},
                        {"role": "user", "content": problem.question}]


def test_terminal_steps_hold_a_complete_box_or_an_answer_line():
    task = MathTask()
    assert task.is_terminal_step("The answer is: $\\boxed{\\frac{5}{6}}$")
    assert task.is_terminal_step("So the final answer is $\\boxed{12}$.")
    assert task.is_terminal_step("The answer is: 12")
    assert not task.is_terminal_step("The sum is $\\frac{3}{6} + \\frac{2}{6}$.")
    assert not task.is_terminal_step("The answer is: $\\boxed{\\frac{5}{")  # cut off


def test_extraction_takes_the_box_and_stops_at_the_first_terminal_step():
    task = MathTask()
    assert task.extract_answer("We add.\nThe answer is: $\\boxed{\\frac{5}{6}}$") == \
        "\\frac{5}{6}"
    assert task.extract_answer("We add.\nThe answer is: $\\frac{5}{6}$") == "$\\frac{5}{6}$"
    assert task.extract_answer("So $x = \\boxed{3}$.\nThe answer is: $\\boxed{4}$") == "3"
    assert task.extract_answer("We add the fractions.") is None


def test_grading_right_and_wrong(math_problems, math500_problems):
    task = MathTask()
    fraction, interval = math500_problems[2], math500_problems[3]
    assert task.grade(fraction, "Common denominator 6.\nThe answer is: $\\boxed{\\frac{5}{6}}$")
    assert task.grade(fraction, "The answer is: $\\boxed{\\dfrac{5}{6}}$")
    assert task.grade(fraction, "The answer is: $\\frac{5}{6}$.")
    assert not task.grade(fraction, "The answer is: $\\boxed{\\frac{6}{5}}$")
    assert not task.grade(fraction, "Common denominator 6.")
    assert task.grade(interval, "The answer is: $\\boxed{[2,\\infty)}$")
    assert not task.grade(interval, "The answer is: $\\boxed{(2, \\infty)}$")
    assert task.grade(math_problems[0], "Add 5.\nDivide by 3.\nThe answer is: $\\boxed{7}$")
    assert not task.grade(math_problems[0], "The answer is: $\\boxed{8}$")


def test_an_empty_problem_is_malformed():
    with pytest.raises(ValueError, match="its 'problem' holds blank text"):
        _problem_from_math_record({"problem": "", "solution": "So $\\boxed{7}$."}, "math/test/0")
    with pytest.raises(ValueError, match="its 'problem' holds blank text"):
        _problem_from_math500_record({"problem": "", "answer": "7", "unique_id": "u"}, "x")


@pytest.mark.parametrize("box", ["\\boxed{}", "\\boxed{ }", "\\fbox{}"])
def test_an_empty_boxed_answer_or_a_blank_answer_is_malformed(box):
    with pytest.raises(ValueError) as raised:
        _problem_from_math_record({"problem": "Solve.", "solution": f"So ${box}$."}, "m/0")
    assert str(raised.value) == "its 'solution' boxes an empty answer (\\boxed{})"
    with pytest.raises(ValueError, match="^its 'answer' holds blank text, where the task needs "
                                         "text$"):
        _problem_from_math500_record({"problem": "Solve.", "answer": " ", "unique_id": "u"}, "x")


def test_the_reference_is_the_box_even_when_prose_follows_it():
    record = {"problem": "Solve $x + 1 = 8$.",
              "solution": "So $x = \\boxed{7}$. Hence the answer is an odd number.",
              "level": "Level 1", "type": "Algebra"}
    assert _problem_from_math_record(record, "math/test/0").reference == "7"


def test_self_consistency_votes_on_the_answer_in_one_spelling():
    task = MathTask()
    halves = ["The answer is: $\\boxed{\\frac{1}{2}}$", "So it is $\\boxed{\\dfrac12}$.",
              "The answer is: $0.5$", "The answer is: $\\boxed{\\tfrac{1}{2}}$"]
    assert [task.answer_key(text) for text in halves] == [Fraction(1, 2)] * 4
    roots = ["The answer is: $\\boxed{\\frac{\\sqrt{3}}{2}}$",
             "The answer is: $\\boxed{\\dfrac{\\sqrt3}{2}}$"]
    assert [task.answer_key(text) for text in roots] == ["\\frac{\\sqrt{3}}{2}"] * 2
    assert task.answer_key("The answer is: $\\boxed{(1, 2)}$") == "(1,2)"
    assert task.answer_key("We add the fractions.") is None


@pytest.mark.parametrize("answer, read", [(5, "the int 5"), (0, "the int 0"),
                                          (0.5, "the float 0.5"), (["5"], "the list ['5']")])
def test_a_math500_answer_that_is_not_text_is_malformed(answer, read):
    # A file whose answers are all numbers loads them as numbers: a malformed record the
    # run can name or skip, not an AttributeError.
    record = {"problem": "Add 2 and 3.", "answer": answer, "unique_id": "u"}
    with pytest.raises(ValueError) as raised:
        _problem_from_math500_record(record, "math500/test/0")
    assert str(raised.value) == f"its 'answer' holds {read}, where the task needs text"


@pytest.mark.parametrize("unique_id, problem_id", [
    ("test/algebra/1.json", "test/algebra/1.json"), (12, "12"), (None, "math500/test/0"),
    ("", "math500/test/0")])
def test_a_math500_id_is_text_or_an_integer_kept_as_text(unique_id, problem_id):
    record = {"problem": "Add 2 and 3.", "answer": "5", "unique_id": unique_id}
    assert _problem_from_math500_record(record, "math500/test/0").id == problem_id
    with pytest.raises(ValueError, match=r"^its 'unique_id' holds the float 1\.5, where an id "
                                         r"is text or an integer$"):
        _problem_from_math500_record({**record, "unique_id": 1.5}, "math500/test/0")


@pytest.mark.parametrize("step", [
    "So the answer is \\[", "So the answer is $$", "The answer is: \\text{}",
    "The answer is: $\\boxed{}$", "The answer is: $\\boxed{\\text{}}$", "Answer: let's see",
    "The answer is: \\boxed{"])
def test_a_step_whose_answer_holds_nothing_is_not_terminal(step):
    assert not MathTask().is_terminal_step(step)


def test_an_answer_set_as_a_display_on_the_next_lines():
    task = MathTask()
    boxed = ["So the answer is \\[", "\\boxed{5}", "\\]"]
    assert [task.is_terminal_step(line) for line in boxed] == [False, True, False]
    assert task.extract_answer("\n".join(boxed)) == "5"
    plain = "So the answer is \\[\n\\frac{5}{6}\n\\]"
    assert not any(task.is_terminal_step(line) for line in plain.split("\n"))
    assert task.extract_answer(plain) == "\\frac{5}{6}"


@pytest.mark.parametrize("completion, reference", [
    ("The answer is $\\boxed{5}$, and this answer is consistent with the constraints.", "5"),
    ("The final answer is $\\boxed{7}$. I hope the answer is correct.", "7"),
    ("So the answer is \\[\n\\boxed{5}\n\\]", "5"),
    ("**Answer:** $\\frac{5}{6}$", "\\frac56"),
    ("The answer is: $\\boxed{AB = 5}$", "5"),
    ("The answer is: $\\boxed{\\sin 30^\\circ}$", "\\frac{1}{2}"),
])
def test_grading_reads_the_stated_answer(completion, reference):
    assert MathTask().grade(Problem(id="x", question="q", reference=reference), completion)


def test_votes_merge_a_named_value_and_a_list_in_any_order():
    task = MathTask()
    assert task.answer_key("The answer is: $\\boxed{x = 5}$") == \
        task.answer_key("The answer is: $\\boxed{5}$") == Fraction(5)
    assert task.answer_key("The answer is: $\\boxed{1, 2}$") == \
        task.answer_key("The answer is: $\\boxed{\\{2, 1\\}}$") == \
        task.answer_key("The answer is: $\\boxed{x = 2 \\text{ or } x = 1}$")
    assert task.answer_key("The answer is: $\\boxed{1, 1, 2}$") != \
        task.answer_key("The answer is: $\\boxed{1, 2, 2}$")
    assert task.answer_key("The answer is: $\\boxed{(1, 2)}$") != \
        task.answer_key("The answer is: $\\boxed{(2, 1)}$")
