"""MATH (Hendrycks et al.) and its MATH-500 test subset: competition problems in LaTeX.

MATH: hub ``EleutherAI/hendrycks_math``, one config per subject (all seven are loaded
and concatenated), splits train/test; records hold ``problem``, ``solution``, ``level``
(``"Level 3"``) and ``type`` (the subject); the reference answer is the last
``\\boxed{...}`` of ``solution``. MATH-500: hub ``HuggingFaceH4/MATH-500``, split test;
records hold ``problem``, ``solution``, ``answer``, ``subject``, ``level`` (an int) and
``unique_id``.

A trace is one step per line ending with ``The answer is: $\\boxed{ANSWER}$``. A step
that states an answer (by ``grading.extract_final_answer``: an answer phrase, or any
complete ``\\boxed{...}``, since math-tuned models box their answer in their own words)
is terminal; a step whose box never closes (cut off by the token cap) is not, nor is one
whose answer holds nothing ("So the answer is \\["): the trace goes on, and if no step
states an answer the display that later lines close is read (``prompts``). Grading is
``math_equal``; votes are on ``math_answer_value``.

The prompt (``prompt_style``): ``default``, the instruction and ``n_shot`` worked examples
below (in the system message under a chat template); ``metamath``, MetaMath's zero-shot
Alpaca prompt (plain text; answers end ``The answer is: X``, unboxed); or
``deepseek_math``, DeepSeek-Math-Instruct/RL's chain-of-thought user turn, the problem
then ``Please reason step by step, and put your final answer within \\boxed{}.`` on a
line of its own, with no system message (chat template only). Either model's first step
continues the prompt's last line after a space.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from qstar_jax.tasks.math import grading
from qstar_jax.tasks.base import Problem
from qstar_jax.tasks.datasets import Column, DataFiles, DatasetSource, load_problems
from qstar_jax.tasks.prompts import (DEEPSEEK_MATH, METAMATH, AnswerLineTraces, PromptFormat,
                                     WorkedExample)
from qstar_jax.tasks.record_fields import record_id, record_text

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")

MATH_FORMAT = PromptFormat(
    instruction=("Solve the math problem step by step. Write one step per line, using "
                 "LaTeX for math, and finish with a line of the form "
                 "\"The answer is: $\\boxed{<answer>}$\"."),
    examples=(
        WorkedExample(
            question="What is the sum of the roots of $x^2 - 7x + 10 = 0$?",
            solution=("The quadratic factors as $(x - 2)(x - 5) = 0$.\n"
                      "So the roots are $2$ and $5$.\n"
                      "Their sum is $2 + 5 = 7$.\n"
                      "The answer is: $\\boxed{7}$")),
        WorkedExample(
            question="Compute $\\frac{2}{3} + \\frac{1}{6}$.",
            solution=("Over the common denominator $6$, $\\frac{2}{3} = \\frac{4}{6}$.\n"
                      "So the sum is $\\frac{4}{6} + \\frac{1}{6} = \\frac{5}{6}$.\n"
                      "The answer is: $\\boxed{\\frac{5}{6}}$")),
        WorkedExample(
            question="How many positive divisors does $36$ have?",
            solution=("We factor $36 = 2^2 \\cdot 3^2$.\n"
                      "Each divisor is $2^a 3^b$ with $0 \\le a, b \\le 2$, so there are "
                      "$(2 + 1)(2 + 1) = 9$ of them.\n"
                      "The answer is: $\\boxed{9}$")),
        WorkedExample(
            question="Which real numbers $x$ satisfy $2x + 3 > 11$? Give an interval.",
            solution=("Subtracting $3$ from both sides gives $2x > 8$.\n"
                      "Dividing by $2$ gives $x > 4$.\n"
                      "The answer is: $\\boxed{(4, \\infty)}$")),
    ),
)


def math_step_answer(step: str) -> str | None:
    """The answer a step states, or None. A step whose box never closes (cut off by the
    token cap) states none."""
    if "\\boxed" in step and grading.extract_boxed(step) is None:
        return None
    return grading.extract_final_answer(step)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _MathTrace(AnswerLineTraces):
    """Prompt, step format and grading shared by MATH and MATH-500."""

    prompt_format = MATH_FORMAT
    model_prompts = (METAMATH, DEEPSEEK_MATH)
    step_answer = staticmethod(math_step_answer)
    answers_equal = staticmethod(grading.math_equal)
    answer_value = staticmethod(grading.math_answer_value)

    data_files: DataFiles | None = None
    cache_dir: str | None = None
    n_shot: int = 4
    prompt_style: str = "default"

    def __post_init__(self):
        self.check_prompt_options()


@dataclasses.dataclass(frozen=True, kw_only=True)
class MathTask(_MathTrace):
    """MATH (train/test, all subjects); ``data_files`` replaces the hub."""

    name: ClassVar[str] = "math"
    hub_name: str = "EleutherAI/hendrycks_math"
    hub_configs: tuple[str, ...] = MATH_SUBJECTS

    def load(self, split: str, *, limit: int | None = None, seed: int = 0,
             skip_malformed: bool = False) -> list[Problem]:
        source = DatasetSource(
            task_name=self.name, hub_name=self.hub_name, hub_configs=tuple(self.hub_configs),
            columns=(Column(name="problem", holds="str: the problem in LaTeX"),
                     Column(name="solution", holds="str: a solution with the answer in "
                                                   "\\boxed{...}"),
                     Column(name="level", holds="str: 'Level 1' to 'Level 5'", required=False),
                     Column(name="type", holds="str: the subject, e.g. 'Algebra'",
                            required=False)))
        return load_problems(source, split, _problem_from_math_record,
                             data_files=self.data_files, cache_dir=self.cache_dir,
                             limit=limit, seed=seed, skip_malformed=skip_malformed)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Math500Task(_MathTrace):
    """MATH-500 (test only); ``data_files`` replaces the hub."""

    name: ClassVar[str] = "math500"
    hub_name: str = "HuggingFaceH4/MATH-500"

    def load(self, split: str, *, limit: int | None = None, seed: int = 0,
             skip_malformed: bool = False) -> list[Problem]:
        source = DatasetSource(
            task_name=self.name, hub_name=self.hub_name, hub_configs=(None,),
            columns=(Column(name="problem", holds="str: the problem in LaTeX"),
                     Column(name="answer", holds="str: the final answer in LaTeX"),
                     Column(name="unique_id", holds="str: e.g. 'test/algebra/1234.json'"),
                     Column(name="solution", holds="str: a worked solution", required=False),
                     Column(name="subject", holds="str: e.g. 'Algebra'", required=False),
                     Column(name="level", holds="int: 1 to 5", required=False)))
        return load_problems(source, split, _problem_from_math500_record,
                             data_files=self.data_files, cache_dir=self.cache_dir,
                             limit=limit, seed=seed, skip_malformed=skip_malformed)


def _problem_from_math_record(record: dict[str, Any], default_id: str) -> Problem:
    problem, solution = record_text(record, "problem"), record_text(record, "solution")
    answer = grading.extract_boxed(solution)
    if answer is None:
        raise ValueError("its 'solution' has no \\boxed{...} answer")
    if not answer.strip():  # math_equal is never True against an empty reference
        raise ValueError("its 'solution' boxes an empty answer (\\boxed{})")
    return Problem(id=default_id, question=problem, reference=answer,
                   metadata={"solution": solution, "level": record.get("level"),
                             "subject": record.get("type")})


def _problem_from_math500_record(record: dict[str, Any], default_id: str) -> Problem:
    problem, answer = record_text(record, "problem"), record_text(record, "answer")
    return Problem(id=record_id(record, "unique_id", default_id), question=problem,
                   reference=answer,
                   metadata={"solution": record.get("solution"), "level": record.get("level"),
                             "subject": record.get("subject")})
