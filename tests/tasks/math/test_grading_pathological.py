"""Hostile inputs: huge numbers, exponent towers, deep nesting, megabyte strings.

Every case runs in one child interpreter that this test kills after ``HARD_LIMIT_S``, so
a grader that hangs (even inside C code holding the GIL) fails the test instead of
stalling the suite. Graders must answer False, each within ``CASE_LIMIT_S``; extractors
their exact answer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qstar_jax.tasks.math.grading import math_equal, number_equal
from qstar_jax.tasks.math.latex_normalize import MAX_ANSWER_CHARS, MAX_NESTING

HARD_LIMIT_S = 120
CASE_LIMIT_S = 10  # "within seconds", with room for a slow shared CI machine
REPO_ROOT = Path(__file__).resolve().parents[3]

CHILD_SCRIPT = r'''
import json, random, time
from qstar_jax.tasks.math.grading import (SymbolicCheckConfig, SymbolicChecker, extract_boxed,
                                          extract_display_answer, extract_final_answer,
                                          extract_gsm8k_reference, math_equal, number_equal)

megabyte_number = "1" + "0" * 10**6
noise = "".join(random.Random(0).choices("\\{}()[]^_0123456789+-*/x,&=$ ", k=1000)) * 1000
math_cases = {
    "megabyte numeral": (megabyte_number, "1"),
    "megabyte numeral against itself": (megabyte_number, megabyte_number),
    "999-digit numeral": ("9" * 999, "9" * 998),
    "10^{10^{10}}": ("10^{10^{10}}", "1"),
    "10^{10^{10}} against itself plus one": ("10^{10^{10}}", "10^{10^{10}}+1"),
    "python power": ("10**10**10", "1"),
    "tower of twos": ("2^{2^{2^{2^{2^{2}}}}}", "0"),
    "tower of nines": ("9^{9^{9^{9}}}", "1"),
    "huge factorial": ("(10^{5})!", "1"),
    "huge binomial": ("\\binom{100000}{50000}", "1"),
    "huge symbolic exponent": ("x^{100000}", "x^{100000}+1"),
    "slow expansion": ("(x+y+1)^{60}", "(x+y+2)^{60}"),
    "slow equations, compared up to sign": ("(x+y+1)^{60} = y", "y = (x+y+2)^{60}"),
    "degrees of a tower": ("\\sin 9^{9^{9^{9}}}^\\circ", "\\sin 9^\\circ"),
    "64 list items, none equal": (", ".join(f"{k}\\sqrt{{2}}" for k in range(64)),
                                  ", ".join(f"{k}\\sqrt{{3}}" for k in range(64))),
    "5000 nested braces": ("{" * 5000 + "1" + "}" * 5000, "1"),
    "200 nested braces": ("{" * 200 + "1" + "}" * 200, "1"),
    "nested fractions": ("\\frac{1}{" * 30 + "2" + "}" * 30, "1"),
    "nested roots": ("\\sqrt{" * 35 + "2" + "}" * 35, "2"),
    "open parentheses": ("(" * 100000, "1"),
    "open left parentheses": ("\\left(" * 100000, "1"),
    "open boxes": ("\\boxed{" * 100000, "5"),
    "megabyte of letters": ("x" * 10**6, "x"),
    "megabyte of noise": (noise, "1"),
    "400 list items": ("1," * 400, "1"),
    "surrogate and nul": ("\ud800\x00", "1"),
}
number_cases = {
    "megabyte numeral": (megabyte_number, "1"),
    "101-digit numerals": ("9" * 101, "9" * 101),
    "python power": ("10**10**10", "1"),
    "exponent notation": ("1e1000000", "1"),
    "megabyte of dollars": ("$" * 10**6, "0"),
    "100000 thousands groups": (",".join(["1"] * 10**5), "1"),
    "megabyte of minus signs": ("-" * 10**6 + "1", "-1"),
    "megabyte of noise": (noise, "1"),
}
verdicts, seconds = {}, {}


def timed(name, grader, *args, **kwargs):
    start = time.perf_counter()
    verdicts[name] = grader(*args, **kwargs)
    seconds[name] = time.perf_counter() - start


with SymbolicChecker(SymbolicCheckConfig(timeout_s=2.0)) as checker:
    for name, pair in math_cases.items():
        timed(f"math_equal: {name}", math_equal, *pair, symbolic=checker)
for name, pair in number_cases.items():
    timed(f"number_equal: {name}", number_equal, *pair)
verdicts.update({
    "extract_boxed: open boxes": extract_boxed("\\boxed{" * 100000),
    "extract_boxed: open boxes, innermost closed": extract_boxed("\\boxed{" * 100000 + "5}"),
    "extract_boxed: megabyte of braces": extract_boxed("{" * 10**6),
    "extract_boxed: megabyte of noise": extract_boxed(noise + "\\boxed{42}"),
    "extract_final_answer: megabyte of noise": extract_final_answer(noise + "\nThe answer is: 9"),
    "extract_final_answer: repeated phrase": extract_final_answer("The answer is " * 100000 + "7"),
    "extract_final_answer: megabyte of spaces": extract_final_answer("#### " + " " * 10**6 + "5"),
    "extract_final_answer: spaces after phrase":
        extract_final_answer("the answer is" + " " * 10**6 + "x."),
    "extract_gsm8k_reference: megabyte of spaces":
        extract_gsm8k_reference("#### " + " " * 10**6 + "72 " + " " * 10**6),
    "extract_final_answer: spaces between two phrases":
        extract_final_answer("The answer is 1" + " " * 10**6 + "2 and the answer is 5"),
    "extract_final_answer: repeated labels": extract_final_answer("Answer:\n" * 10**5 + "Answer: 7"),
    "extract_final_answer: empty boxes after one": extract_final_answer("\\boxed{5}" + "\\boxed{}" * 10**5),
    "extract_display_answer: open displays": extract_display_answer("The answer is \\[\n" * 10**5),
    "extract_display_answer: empty displays":
        extract_display_answer("The answer is $$\n$$\n" * 10**5 + "The answer is $$\n8\n$$"),
})
print(json.dumps({"verdicts": verdicts, "seconds": seconds}))
'''

EXTRACTIONS = {
    "extract_boxed: open boxes": None,
    "extract_boxed: open boxes, innermost closed": "5",
    "extract_boxed: megabyte of braces": None,
    "extract_boxed: megabyte of noise": "42",
    "extract_final_answer: megabyte of noise": "9",
    "extract_final_answer: repeated phrase": "7",
    "extract_final_answer: megabyte of spaces": "5",
    "extract_final_answer: spaces after phrase": "x",
    "extract_gsm8k_reference: megabyte of spaces": "72",
    "extract_final_answer: spaces between two phrases": "5",
    "extract_final_answer: repeated labels": "7",
    "extract_final_answer: empty boxes after one": "5",
    "extract_display_answer: open displays": None,
    "extract_display_answer: empty displays": "8",
}
GRADER_CASES = 26 + 8


@pytest.fixture(scope="module")
def child_output():
    finished = subprocess.run([sys.executable, "-c", CHILD_SCRIPT], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=HARD_LIMIT_S)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return json.loads(finished.stdout)


@pytest.fixture(scope="module")
def verdicts(child_output):
    return child_output["verdicts"]


def test_every_grader_case_answers_within_seconds(child_output):
    seconds = child_output["seconds"]
    assert len(seconds) == GRADER_CASES
    slow = {name: round(s, 1) for name, s in seconds.items() if s > CASE_LIMIT_S}
    assert slow == {}


def test_every_grader_case_returns_false(verdicts):
    graders = {name: verdict for name, verdict in verdicts.items()
               if name.startswith(("math_equal", "number_equal"))}
    assert len(graders) == GRADER_CASES
    assert graders == dict.fromkeys(graders, False)


def test_extractors_return_their_exact_answer(verdicts):
    assert {name: verdicts[name] for name in EXTRACTIONS} == EXTRACTIONS


def test_answers_are_refused_one_character_or_bracket_past_the_limits():
    """MAX_ANSWER_CHARS = 1000 characters once stripped, MAX_NESTING = 40 brackets of any
    kind: an answer at a limit is graded (True here), one past it is not."""
    assert (MAX_ANSWER_CHARS, MAX_NESTING) == (1000, 40)
    longest = "7" + " " * 998 + "."  # 1000 characters, read as 7
    for pred, graded in [(longest, True), ("  " + longest + "\n", True),
                         ("7" + " " * 999 + ".", False)]:
        assert (math_equal(pred, "7"), math_equal("7", pred), number_equal(pred, "7")) == (
            graded, graded, graded), len(pred)
    for opener, closer in ["()", "[]", "{}"]:
        for depth, graded in [(40, True), (41, False)]:
            pred = opener * depth + "7" + closer * depth
            assert math_equal(pred, "7") is graded, (opener, depth)
