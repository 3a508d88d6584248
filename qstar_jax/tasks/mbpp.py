"""MBPP: short Python programming problems graded by hidden assert tests.

Hub ``google-research-datasets/mbpp``. Config ``full`` (splits train/test/validation/
prompt): ``task_id``, ``text``, ``code``, ``test_list``, ``test_setup_code``,
``challenge_test_list``. Config ``sanitized``: ``prompt`` instead of ``text`` and
``test_imports`` (import lines) instead of ``test_setup_code``, no challenge tests.

The prompt shows the description and the first test only, so the model learns the
function's name and signature; grading runs every hidden test (``test_list`` plus any
``challenge_test_list``) after the setup code, in the sandbox. The answer opens with a
```` ```python ```` fence in the prompt; steps, the program and grading are
``code_answers.FencedCodeAnswers``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from qstar_jax.tasks.base import ChatFormatter, Problem
from qstar_jax.tasks.code_answers import CODE_FENCE, FencedCodeAnswers, HiddenTests
from qstar_jax.tasks.datasets import Column, DataFiles, DatasetSource, load_problems
from qstar_jax.tasks.prompts import PromptFormat, WorkedExample, build_prompt, check_n_shot
from qstar_jax.tasks.record_fields import held, record_text, record_texts

MBPP_FORMAT = PromptFormat(
    instruction=("Write a Python function for the task. Reply with the code only, in one "
                 "```python block, and make sure it passes the given test."),
    answer_opening=f"{CODE_FENCE}python\n",
    examples=(
        WorkedExample(
            question=("Write a function to return the sum of the squares of a list of numbers."
                      "\nYour code should pass this test:\n"
                      "assert sum_of_squares([1, 2, 3]) == 14"),
            solution=("def sum_of_squares(numbers):\n"
                      "    return sum(n * n for n in numbers)\n"
                      f"{CODE_FENCE}")),
        WorkedExample(
            question=("Write a python function to check whether a string reads the same "
                      "forwards and backwards.\nYour code should pass this test:\n"
                      "assert is_palindrome(\"level\") == True"),
            solution=("def is_palindrome(text):\n"
                      "    return text == text[::-1]\n"
                      f"{CODE_FENCE}")),
        WorkedExample(
            question=("Write a function to count the vowels in a string.\n"
                      "Your code should pass this test:\n"
                      "assert count_vowels(\"banana\") == 3"),
            solution=("def count_vowels(text):\n"
                      "    count = 0\n"
                      "    for ch in text.lower():\n"
                      "        if ch in \"aeiou\":\n"
                      "            count += 1\n"
                      "    return count\n"
                      f"{CODE_FENCE}")),
    ),
)


@dataclasses.dataclass(frozen=True)
class _HubConfiguration:
    """One of MBPP's two hub configurations and where its records keep what differs
    between them: the description, what runs before the tests (code, or import lines
    joined into code), and any further hidden asserts."""

    name: str
    description: str
    setup: Column
    challenge_tests: Column | None = None
    other_layout: str = ""  # the task that reads the other configuration's files

    def columns(self) -> tuple[Column, ...]:
        extra = (self.setup,) + ((self.challenge_tests,) if self.challenge_tests else ())
        return (Column(name="task_id", holds="int: the problem's id"),
                Column(name=self.description, holds="str: the task description"),
                Column(name="test_list", holds="list[str]: assert statements, the first one shown"),
                *extra,
                Column(name="code", holds="str: a reference solution", required=False))

    def read(self, record: dict[str, Any]) -> tuple[str, str, list[str]]:
        """The record's description, its setup code and its further hidden asserts."""
        setup = record.get(self.setup.name) or ""
        if isinstance(setup, (list, tuple)):
            setup = "\n".join(record_texts(record, self.setup.name))
        elif not isinstance(setup, str):
            raise ValueError(f"its {self.setup.name!r} holds {held(setup)}, where the task "
                             "needs code")
        challenge = (record_texts(record, self.challenge_tests.name, required=False)
                     if self.challenge_tests else [])
        return record_text(record, self.description), setup, challenge


@dataclasses.dataclass(frozen=True, kw_only=True)
class _MbppBase(FencedCodeAnswers):
    """Loading, prompt, step format and grading shared by both MBPP configs; a subclass
    names its hub configuration (``hub``)."""

    data_files: DataFiles | None = None
    hub_name: str = "google-research-datasets/mbpp"
    cache_dir: str | None = None
    n_shot: int = 3
    timeout_s: float = 5.0  # per program, all its tests together
    memory_mb: int = 512

    hub: ClassVar[_HubConfiguration]

    def __post_init__(self):
        check_n_shot(MBPP_FORMAT, self.n_shot)

    def load(self, split: str, *, limit: int | None = None, seed: int = 0,
             skip_malformed: bool = False) -> list[Problem]:
        source = DatasetSource(task_name=self.name, hub_name=self.hub_name,
                               hub_configs=(self.hub.name,), columns=self.hub.columns(),
                               other_layout=self.hub.other_layout)
        return load_problems(source, split, self._problem_from_record,
                             data_files=self.data_files, cache_dir=self.cache_dir,
                             limit=limit, seed=seed, skip_malformed=skip_malformed)

    def prompt(self, problem: Problem, chat: ChatFormatter | None = None) -> str:
        question = (f"{problem.question}\nYour code should pass this test:\n"
                    f"{problem.metadata['shown_test']}")
        return build_prompt(MBPP_FORMAT, question, n_shot=self.n_shot, chat=chat)

    def code_prefix(self, problem: Problem) -> str:
        """The code the steps continue: none, the answer is the whole program."""
        return ""

    def _problem_from_record(self, record: dict[str, Any], default_id: str) -> Problem:
        description, setup, challenge_tests = self.hub.read(record)
        tests = record_texts(record, "test_list")
        task_id = record["task_id"]
        hidden = HiddenTests(setup=setup, tests=tuple(tests + challenge_tests))
        return Problem(
            id=default_id if task_id is None else f"{self.name}/{task_id}",
            question=description, reference=hidden,
            metadata={"shown_test": tests[0], "task_id": task_id,
                      "reference_code": record.get("code")})


_FULL = _HubConfiguration(
    "full", description="text",
    setup=Column(name="test_setup_code", holds="str: code run before the tests", required=False),
    challenge_tests=Column(name="challenge_test_list", holds="list[str]: more hidden asserts",
                           required=False),
    other_layout="Files of MBPP's sanitized configuration (a 'prompt' column) load with "
                 "task.name=mbpp_sanitized.")
_SANITIZED = _HubConfiguration(
    "sanitized", description="prompt",
    setup=Column(name="test_imports", holds="list[str]: import lines run before the tests",
                 required=False),
    other_layout="Files of MBPP's full configuration (a 'text' column) load with "
                 "task.name=mbpp.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MbppTask(_MbppBase):
    """MBPP ``full``: hidden tests are ``test_list`` plus ``challenge_test_list``."""

    name: ClassVar[str] = "mbpp"
    hub: ClassVar[_HubConfiguration] = _FULL


@dataclasses.dataclass(frozen=True, kw_only=True)
class MbppSanitizedTask(_MbppBase):
    """MBPP ``sanitized``: hidden tests are ``test_list`` after ``test_imports``."""

    name: ClassVar[str] = "mbpp_sanitized"
    hub: ClassVar[_HubConfiguration] = _SANITIZED
