"""GSM8K: loading, prompts, the answer line, grading."""

import re
from fractions import Fraction
from pathlib import Path

import pytest

from qstar_jax.tasks.base import MalformedRecordError, Problem
from qstar_jax.tasks.gsm8k import GSM8K_FORMAT, Gsm8kTask

FIXTURES = Path(__file__).parents[1] / "fixtures" / "gsm8k"


def fake_chat(messages):
    return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return Gsm8kTask(data_files={"test": str(FIXTURES / "test.jsonl")},
                     cache_dir=str(tmp_path_factory.mktemp("hf_cache")))


@pytest.fixture(scope="module")
def problems(task):
    return task.load("test")


def test_load_reads_question_reference_and_solution(problems):
    assert len(problems) == 6
    first = problems[0]
    assert first.id == "gsm8k/test/0"
    assert first.question.startswith("Nora buys 4 packs of stickers")
    assert first.reference == "38"
    assert first.metadata["solution"].endswith("#### 38")
    assert [p.reference for p in problems][2:] == ["450", "8", "-6", "195"]


def test_the_task_prepares_its_files_under_its_cache_dir(tmp_path):
    Gsm8kTask(data_files=str(FIXTURES / "test.jsonl"), cache_dir=str(tmp_path)).load("test")
    assert (tmp_path / "json").is_dir()


def test_seeded_subset(task):
    subset = task.load("test", limit=2, seed=3)
    assert [p.id for p in subset] == [p.id for p in task.load("test", limit=2, seed=3)]
    assert [p.id for p in subset] == ["gsm8k/test/2", "gsm8k/test/5"]  # seed 0 draws 2 and 3


def test_answer_without_hashes_is_malformed_and_skippable(task):
    bad = Gsm8kTask(data_files=str(FIXTURES / "malformed.jsonl"), cache_dir=task.cache_dir)
    with pytest.raises(MalformedRecordError, match="gsm8k split 'test', record 2"):
        bad.load("test")
    assert [p.id for p in bad.load("test", skip_malformed=True)] == \
        ["gsm8k/test/0", "gsm8k/test/1", "gsm8k/test/3"]


def test_plain_prompt_is_instruction_shots_then_open_answer(problems):
    problem = problems[0]
    prompt = Gsm8kTask(n_shot=2).prompt(problem)
    assert prompt.startswith(GSM8K_FORMAT.instruction + "\n\nQuestion: Mia has 3 boxes")
    assert prompt.endswith(f"\n\nQuestion: {problem.question}\nAnswer:\n")
    assert prompt.count("Question:") == 3
    assert "The answer is: 27\n\nQuestion: A train ticket" in prompt
    assert prompt.count("The answer is:") == 2 + 1  # two shots, and the instruction


def test_zero_shot_prompt_and_shot_count_bounds(problems):
    problem = problems[0]
    assert Gsm8kTask(n_shot=0).prompt(problem) == (
        f"{GSM8K_FORMAT.instruction}\n\nQuestion: {problem.question}\nAnswer:\n")
    with pytest.raises(ValueError, match="n_shot must be between 0 and 4"):
        Gsm8kTask(n_shot=5)
    default = Gsm8kTask()  # all 4 worked examples, from the hub's main config
    assert (default.n_shot, default.hub_name, default.hub_config) == (4, "openai/gsm8k", "main")


def test_chat_prompt_is_system_and_user_through_the_formatter(problems):
    problem = problems[1]
    seen = []
    prompt = Gsm8kTask(n_shot=1).prompt(problem, chat=lambda m: seen.append(m) or fake_chat(m))
    (messages,) = seen
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"].startswith(GSM8K_FORMAT.instruction + "\n\nExamples:\n\n")
    assert messages[0]["content"].endswith("The answer is: 27")
    assert messages[1]["content"] == problem.question
    assert prompt == fake_chat(messages)


def test_terminal_step_states_an_answer():
    task = Gsm8kTask()
    assert task.is_terminal_step("The answer is: 38")
    assert task.is_terminal_step("So the answer is 38.")
    assert task.is_terminal_step("#### 38")
    assert not task.is_terminal_step("She has 60 - 22 = 38 stickers left.")
    assert not task.is_terminal_step("The answer is:")


def test_extraction_takes_the_first_answer_line():
    task = Gsm8kTask()
    completion = "4 * 15 = 60\n60 - 22 = 38\nThe answer is: 38.\nThe answer is: 40"
    assert task.extract_answer(completion) == "38"
    assert task.extract_answer("60 - 22 = 38\nSo the answer is 38 stickers.") == "38 stickers"
    assert task.extract_answer("4 * 15 = 60\n60 - 22 = 38") is None


def test_grading_right_and_wrong_answers(problems):
    task, nora = Gsm8kTask(), problems[0]
    assert task.grade(nora, "4 * 15 = 60 stickers.\n60 - 22 = 38 left.\nThe answer is: 38")
    assert task.grade(nora, "The answer is: 38.0")
    assert task.grade(nora, "60 - 22 = 38\nSo the answer is 38 stickers.")
    assert task.grade(nora, "60 - 22 = 38\n**The final answer is 38.**")  # a chat model's
    assert not task.grade(nora, "4 * 15 = 60 stickers.\nThe answer is: 37")
    assert not task.grade(nora, "4 * 15 = 60 stickers.\n60 - 22 = 38 left.")
    assert task.grade(problems[4], "4 - 10 = -6\nThe answer is: -6")
    assert not task.grade(problems[4], "The answer is: 6")
    # The answer is a number, not an expression that evaluates to it.
    assert not task.grade(nora, "The answer is: 60 - 22")


def test_grading_never_raises_on_odd_text():
    task = Gsm8kTask()
    problem = Problem(id="x", question="q", reference="12")
    assert not task.grade(problem, "The answer is: twelve?!}{")
    assert not task.grade(problem, "")


@pytest.mark.parametrize("record, message", [
    ({"question": "", "answer": "60 - 22 = 38\n#### 38"}, "its 'question' holds blank text"),
    ({"question": "How many?", "answer": ""}, "its 'answer' holds blank text"),
    ({"question": 5, "answer": "#### 5"}, "its 'question' holds the int 5"),
    ({"question": ["How many?"], "answer": "#### 5"}, "its 'question' holds the list"),
    ({"answer": "#### 5"}, "its 'question' holds nothing"),
], ids=["empty question", "empty answer", "a number", "a list", "missing"])
def test_a_question_or_answer_that_is_not_text_is_malformed(record, message):
    # A number or a list was read as it was, and prompted as 'Question: 5'.
    with pytest.raises(ValueError, match=f"^{re.escape(message)}.*, where the task needs text$"):
        Gsm8kTask()._problem_from_record(record, "gsm8k/test/0")


@pytest.mark.parametrize("total, read", [("forty", "'forty'"), ("N/A", "'N/A'"),
                                         ("2.5e3", "'2.5e3'")])
def test_a_total_that_is_not_a_number_is_malformed(total, read):
    record = {"question": "How many?", "answer": f"4 * 10 = 40\n#### {total}"}
    with pytest.raises(ValueError) as raised:
        Gsm8kTask()._problem_from_record(record, "gsm8k/test/0")
    assert str(raised.value) == f"its '####' line holds {read}, which is not a number"
    for number, reference in (("1,200", "1,200"), ("$18.50", "$18.50"), ("-3", "-3")):
        record["answer"] = f"x\n#### {number}"
        assert Gsm8kTask()._problem_from_record(record, "p").reference == reference


def test_self_consistency_votes_on_the_number_however_it_is_spelt():
    task = Gsm8kTask()
    spellings = ["The answer is: 18", "The answer is: $18.", "So the answer is 18 dollars.",
                 "#### 18.00", "The answer is: x = 18", "The answer is: 1,8"]
    assert [task.answer_key(text) for text in spellings] == [Fraction(18)] * 5 + ["1,8"]
    assert task.answer_key("The answer is: 0.5") == task.answer_key("The answer is: 1/2")
    assert task.answer_key("4 * 15 = 60") is None


@pytest.mark.parametrize("step", [
    "So the answer is $$", "So the answer is \\[", "The answer is: \\text{}",
    "The answer is: $\\boxed{}$", "The answer is: \\boxed{", "Answer: let's compute"])
def test_a_step_whose_answer_holds_nothing_is_not_terminal(step):
    assert not Gsm8kTask().is_terminal_step(step)


@pytest.mark.parametrize("completion, verdict", [
    ("So the answer is $$\n18\n$$", True),  # a display on the lines after the answer line
    ("So the answer is \\[\n18\n\\]", True),
    ("So the answer is $$\n20\n$$", False),
    ("So the answer is $$\n18", False),  # cut off before it closes
    ("So the answer is $$\n18\n$$\nThe answer is: 20", False),  # a step's answer comes first
    ("The answer is: 18. This answer is reasonable.", True),
    ("The answer is 20, since 9 + 9 = 18.", False),
    ("The answer is 18 (3 * 6 = 18).", True),
    ("The answer is 18, which is the total.", True),
    ("Answer: 18", True),
    ("**Answer:** 18", True),
    ("The answer to the question is 18.", True),
    ("Final answer - 18", True),
    ("It happens 18 times.\nThe answer is: 18 times", True),
])
def test_grading_reads_the_stated_answer(completion, verdict):
    assert Gsm8kTask().grade(Problem(id="x", question="q", reference="18"), completion) is verdict


def test_a_display_answer_line_lets_the_trace_go_on():
    task = Gsm8kTask()
    lines = ["9 + 9 = 18", "So the answer is $$", "18", "$$"]
    assert [task.is_terminal_step(line) for line in lines] == [False] * 4
    assert task.extract_answer("\n".join(lines)) == "18"
    assert task.answer_key("\n".join(lines)) == Fraction(18)


def test_votes_count_units_and_magnitudes_as_their_number():
    task = Gsm8kTask()
    assert task.answer_key("The answer is: 1.5 million") == Fraction(1_500_000)
    assert task.answer_key("The answer is: 3 dozen") == Fraction(36)
    assert task.answer_key("The answer is: 18m") == task.answer_key("The answer is: 18")
