"""Answer extraction: boxes, GSM8K '####' references, answer lines in model text."""

from __future__ import annotations

import pytest

from qstar_jax.tasks.math import grading
from qstar_jax.tasks.math.answer_extraction import (extract_boxed, extract_display_answer,
                                                    extract_final_answer,
                                                    extract_gsm8k_reference)

BOXED_CASES = [
    ("So the answer is $\\boxed{5}$.", "5"),
    ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{3}}{\\left(2\\right)}}", "\\frac{\\sqrt{3}}{\\left(2\\right)}"),
    ("\\boxed{{1}{2}{{3}}}", "{1}{2}{{3}}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),             # escaped braces do not close it
    ("\\boxed{ 7 }", "7"),
    ("\\boxed {7}", "7"),
    ("\\fbox{42}", "42"),
    ("\\boxed 5", "5"),
    ("\\fbox\t7", "7"),
    ("so $\\boxed 12$.", "12"),
    ("\\boxed{1} then \\boxed{2}", "2"),               # the last box wins
    ("\\boxed{1} then \\fbox{3}", "3"),
    ("\\fbox{3} then \\boxed 4", "4"),
    ("\\boxed{\\boxed{5}}", "5"),                      # the innermost opens last
    ("\\boxed{3} and then \\boxed{4", "3"),            # a cut-off box is skipped
    ("\\boxed{", None),
    ("no box here", None),
    ("", None),
    ("\\boxed", None),
    ("}{\\boxed{6}}}", "6"),
]


@pytest.mark.parametrize(("text", "answer"), BOXED_CASES)
def test_extract_boxed(text, answer):
    assert extract_boxed(text) == answer


FINAL_ANSWER_CASES = [
    ("Step one.\nThe answer is: 18", "18"),
    ("The answer is 18.", "18"),
    ("the answer is: 3.5. Done.", "3.5"),
    ("The answer is: $1,000.", "$1,000"),
    ("The final answer is $\\frac{1}{2}$. I hope it is correct.", "$\\frac{1}{2}$"),
    ("Final Answer: 7", "7"),
    ("Natalia sold 48 clips.\n#### 72", "72"),
    ("#### 72.", "72"),
    ("Work it out.\n  #### 72", "72"),               # an indented '####' line
    ("She paid 5 #### 6", None),                       # '####' inside a line marks nothing
    ("We get $\\boxed{\\frac{5}{6}}$", "\\frac{5}{6}"),
    ("The answer is: $\\boxed{5}$", "5"),              # the box opens after the phrase
    ("\\boxed{1} so far; \\boxed{2} in the end", "2"),
    ("The answer is 4.\nWait, recheck: \\boxed{5}", "5"),  # the last marker wins
    ("\\boxed{5}\nThe answer is: 6", "6"),
    ("The answer is: 3\n#### 4", "4"),
    ("#### 4\nThe answer is: 3", "3"),
    ("The answer is not 5, the answer is 6", "6"),
    ("The answer is:\nno answer given here", None),    # a marker with nothing after it
    ("The answer is 5.\nCheck: \\boxed{}", "5"),      # so is an empty box
    ("The answer isn't 5 yet", None),                  # "answer is" must be whole words
    ("#### ", None),
    # Markdown emphasis or code marks around the answer (chat models bold their answer
    # lines) are not part of it; a product keeps its stars.
    ("The answer is: **18**", "18"),
    ("**The final answer is 18.**", "18"),
    ("**Final Answer:** 18", "18"),
    ("**Final answer**: 18", "18"),
    ("The answer is: `18`.", "18"),
    ("So the answer is __18 apples__.", "18 apples"),
    ("#### **72**", "72"),
    ("The answer is: **$\\frac{1}{2}$**", "$\\frac{1}{2}$"),
    ("The answer is: 3 * 4 = 12", "3 * 4 = 12"),
    ("The answer is: **", None),
    ("The sum is 12.", None),
    ("", None),
]


@pytest.mark.parametrize(("completion", "answer"), FINAL_ANSWER_CASES)
def test_extract_final_answer(completion, answer):
    assert extract_final_answer(completion) == answer


# An answer with nothing in it is no answer: a line that only opens a display, empty
# text or an empty box, a box the token cap cut off. The step is then not terminal.
BLANK_ANSWER_CASES = [
    ("So the answer is \\[", None),
    ("So the answer is $$", None),
    ("So the answer is: \\(", None),
    ("So the answer is $", None),
    ("The answer is: \\text{}", None),
    ("The answer is: $\\boxed{}$", None),
    ("The answer is: $\\boxed{\\text{ }}$.", None),
    ("The answer is: \\boxed{", None),
    ("The answer is: $\\boxed{\\frac{5}{", None),
    ("So the answer is \\[\n\\boxed{5}\n\\]", "5"),  # the box on a later line
    ("The answer is 5.\nThe answer is \\[", "5"),  # an earlier answer stands
    ("\\boxed{3} and \\boxed{}", "3"),  # an empty box is skipped for an earlier one
    ("The answer is \\[ 18", "\\[ 18"),  # the display holds something on the line
]


@pytest.mark.parametrize(("completion", "answer"), BLANK_ANSWER_CASES)
def test_an_answer_with_nothing_in_it_is_no_answer(completion, answer):
    assert extract_final_answer(completion) == answer


# Remarks after the answer on its line never replace it: a box on the line wins, then
# the last phrase whose answer holds a digit or maths, then the last phrase.
REMARK_CASES = [
    ("The answer is: 18. This answer is reasonable.", "18"),
    ("The answer is $\\boxed{5}$, and this answer is consistent with the constraints.", "5"),
    ("The final answer is $\\boxed{7}$. I hope the answer is correct.", "7"),
    ("The answer is 18 and the answer is correct", "18"),
    ("\\boxed{5}, so the answer is clearly right", "5"),
    ("The answer is 3... wait, the answer is 5", "5"),  # a correction still wins
    ("The answer is $x$. I checked the answer is right.", "$x$"),
    ("The answer is Monday.", "Monday"),  # a text answer is still an answer
    ("The answer is blue. No, the answer is red.", "red"),
]


@pytest.mark.parametrize(("completion", "answer"), REMARK_CASES)
def test_a_remark_after_the_answer_does_not_replace_it(completion, answer):
    assert extract_final_answer(completion) == answer


# More ways to state an answer; a label ("Answer:") only counts before what starts like
# an answer, so a step that says it is about to work one out is not terminal.
PHRASE_CASES = [
    ("Answer: 18", "18"),
    ("**Answer:** 18", "18"),
    ("Answer: $\\frac{1}{2}$", "$\\frac{1}{2}$"),
    ("Answer: (B)", "(B)"),
    ("Answer: x = 5", "x = 5"),
    ("The answer to the question is 18.", "18"),
    ("The answer to this problem is $5$", "$5$"),
    ("Final answer - 18", "18"),
    ("**Final answer** \u2014 18", "18"),
    ("Answer: let's compute", None),
    ("Answer: let's compute 3 + 4 first", None),
    ("Answer:", None),
    ("The wrong answer: 5", None),  # "answer:" inside a line is no label
    ("Answer: the answer is 6", "6"),
]


@pytest.mark.parametrize(("completion", "answer"), PHRASE_CASES)
def test_answer_labels_and_longer_phrases(completion, answer):
    assert extract_final_answer(completion) == answer


DISPLAY_CASES = [
    ("So the answer is $$\n18\n$$", "18"),
    ("So the answer is \\[\n  x = 5\n\\]", "x = 5"),
    ("The answer is:\n$$\n18\n$$", "18"),  # the opener alone on the next line
    ("Thus the answer is \\(\n\\frac{1}{2}.\n\\)", "\\frac{1}{2}"),
    ("So the answer is $$\n18", None),  # never closed: cut off
    ("So the answer is $$\n$$\nThe answer is $$\n7\n$$", "7"),  # an empty display
    ("So the answer is $$18$$", None),  # on one line: a step's own answer, not a display
    ("We compute $$\n18\n$$", None),  # no answer line opens it
    (None, None),
]


@pytest.mark.parametrize(("completion", "answer"), DISPLAY_CASES)
def test_extract_display_answer(completion, answer):
    assert extract_display_answer(completion) == answer


def test_extract_gsm8k_reference_takes_the_last_hash_line():
    field = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
             "Natalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72")
    assert extract_gsm8k_reference(field) == "72"
    assert extract_gsm8k_reference("a\n#### 1,000 \n") == "1,000"
    assert extract_gsm8k_reference("#### -3\nnotes\n####  5") == "5"
    assert extract_gsm8k_reference("a\n  #### 7") == "7"


@pytest.mark.parametrize("field", ["Natalia sold 72 clips.", "", "#### \n", "## 72", None, 72,
                                   "72 clips #### 72", "#### 72\n#### "])
def test_extract_gsm8k_reference_says_what_is_missing(field):
    with pytest.raises(ValueError, match="'#### <number>' line"):
        extract_gsm8k_reference(field)


@pytest.mark.parametrize("junk", [None, 5, b"\\boxed{5}", ["\\boxed{5}"]])
def test_non_text_has_no_answer(junk):
    assert extract_boxed(junk) is None
    assert extract_final_answer(junk) is None


def test_grading_module_exports_the_extractors():
    assert grading.extract_boxed is extract_boxed
    assert grading.extract_final_answer is extract_final_answer
    assert grading.extract_gsm8k_reference is extract_gsm8k_reference
