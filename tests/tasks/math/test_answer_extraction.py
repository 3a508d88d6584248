"""Answer extraction: boxes, GSM8K '####' references, answer lines in model text."""

from __future__ import annotations

import pytest

from qstar_jax.tasks.math import grading
from qstar_jax.tasks.math.answer_extraction import (extract_boxed, extract_final_answer,
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
