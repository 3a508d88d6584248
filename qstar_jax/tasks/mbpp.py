"""MBPP: short Python programming problems graded by hidden assert tests.

Hub ``google-research-datasets/mbpp``. Config ``full`` (splits train/test/validation/
prompt): ``task_id``, ``text``, ``code``, ``test_list``, ``test_setup_code``,
``challenge_test_list``. Config ``sanitized``: ``prompt`` instead of ``text`` and
``test_imports`` (import lines) instead of ``test_setup_code``, no challenge tests.

The prompt shows the description and tests of ``test_list``, from which the model learns
the function's name and signature: ``shown_tests=first`` (the default, so prompts stay as
they were) shows the first ("Your code should pass this test:"), as the InCoder-style
prompt of bigcode-evaluation-harness and EvalPlus does; ``shown_tests=all`` shows them
all ("Your code should pass these tests:", a blank line, one assert a line), as Austin et
al.'s MBPP prompt and DeepSeek-Coder's evaluation do. The worked examples and the
instruction say "test" or "tests" to match. Grading runs ``test_list`` after the setup
code, in the sandbox, as those evaluations all do; ``challenge_tests=true`` runs the full
configuration's ``challenge_test_list`` too. That was the default before; it is off by
default now so that a score means what MBPP scores elsewhere mean (only problems with
challenge tests grade differently). The answer opens with a ```` ```python ```` fence in
the prompt; steps, the program and grading are ``code_answers.FencedCodeAnswers``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Sequence

from qstar_jax.tasks.base import ChatFormatter, Problem
from qstar_jax.tasks.code_answers import CODE_FENCE, FencedCodeAnswers, HiddenTests
from qstar_jax.tasks.datasets import Column, DataFiles, DatasetSource, load_problems
from qstar_jax.tasks.prompts import PromptFormat, WorkedExample, build_prompt, check_n_shot
from qstar_jax.tasks.record_fields import held, record_text, record_texts

SHOWN_TESTS = ("first", "all")

# The worked examples: a description, its tests as test_list holds them, a solution.
_EXAMPLES = (
    ("Write a function to return the sum of the squares of a list of numbers.",
     ("assert sum_of_squares([1, 2, 3]) == 14", "assert sum_of_squares([]) == 0",
      "assert sum_of_squares([-2, 5]) == 29"),
     "def sum_of_squares(numbers):\n"
     "    return sum(n * n for n in numbers)"),
    ("Write a python function to check whether a string reads the same forwards and "
     "backwards.",
     ("assert is_palindrome(\"level\") == True", "assert is_palindrome(\"python\") == False",
      "assert is_palindrome(\"a\") == True"),
     "def is_palindrome(text):\n"
     "    return text == text[::-1]"),
    ("Write a function to count the vowels in a string.",
     ("assert count_vowels(\"banana\") == 3", "assert count_vowels(\"rhythm\") == 0",
      "assert count_vowels(\"Education\") == 5"),
     "def count_vowels(text):\n"
     "    count = 0\n"
     "    for ch in text.lower():\n"
     "        if ch in \"aeiou\":\n"
     "            count += 1\n"
     "    return count"),
)


def mbpp_question(description: str, tests: Sequence[str], shown_tests: str) -> str:
    """The description and the tests ``shown_tests`` picks, as the prompt asks them."""
    if shown_tests == "first" or len(tests) == 1:
        return f"{description}\nYour code should pass this test:\n{tests[0]}"
    return f"{description}\nYour code should pass these tests:\n\n" + "\n".join(tests)


def _mbpp_format(shown_tests: str) -> PromptFormat:
    noun = "test" if shown_tests == "first" else "tests"
    return PromptFormat(
        instruction=("Write a Python function for the task. Reply with the code only, in one "
                     f"```python block, and make sure it passes the given {noun}."),
        answer_opening=f"{CODE_FENCE}python\n",
        examples=tuple(WorkedExample(question=mbpp_question(description, shown, shown_tests),
                                     solution=f"{code}\n{CODE_FENCE}")
                       for description, shown, code in _EXAMPLES))


MBPP_FORMATS = {shown_tests: _mbpp_format(shown_tests) for shown_tests in SHOWN_TESTS}
MBPP_FORMAT = MBPP_FORMATS["first"]


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
                Column(name="test_list", holds="list[str]: the asserts shown and graded"),
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
    shown_tests: str = "first"  # or "all" (the module docstring)
    challenge_tests: bool = False  # grade on challenge_test_list too
    timeout_s: float = 5.0  # per program, all its tests together
    memory_mb: int = 512

    hub: ClassVar[_HubConfiguration]

    def __post_init__(self):
        check_n_shot(MBPP_FORMAT, self.n_shot)
        if self.shown_tests not in SHOWN_TESTS:
            raise ValueError(f"shown_tests must be one of {SHOWN_TESTS}, got {self.shown_tests!r}")
        if not isinstance(self.challenge_tests, bool):
            raise ValueError(f"challenge_tests must be true or false, got {self.challenge_tests!r}")
        if self.challenge_tests and self.hub.challenge_tests is None:
            raise ValueError(f"{self.name} has no challenge tests (MBPP's full configuration, "
                             "task.name=mbpp, has them): set challenge_tests=false")

    def load(self, split: str, *, limit: int | None = None, seed: int = 0,
             skip_malformed: bool = False) -> list[Problem]:
        source = DatasetSource(task_name=self.name, hub_name=self.hub_name,
                               hub_configs=(self.hub.name,), columns=self.hub.columns(),
                               other_layout=self.hub.other_layout)
        return load_problems(source, split, self._problem_from_record,
                             data_files=self.data_files, cache_dir=self.cache_dir,
                             limit=limit, seed=seed, skip_malformed=skip_malformed)

    def prompt(self, problem: Problem, chat: ChatFormatter | None = None) -> str:
        question = mbpp_question(problem.question, problem.metadata["test_list"],
                                 self.shown_tests)
        return build_prompt(MBPP_FORMATS[self.shown_tests], question, n_shot=self.n_shot,
                            chat=chat)

    def code_prefix(self, problem: Problem) -> str:
        """The code the steps continue: none, the answer is the whole program."""
        return ""

    def _problem_from_record(self, record: dict[str, Any], default_id: str) -> Problem:
        description, setup, challenge_tests = self.hub.read(record)
        tests = record_texts(record, "test_list")
        task_id = record["task_id"]
        graded = tests + (challenge_tests if self.challenge_tests else [])
        return Problem(
            id=default_id if task_id is None else f"{self.name}/{task_id}",
            question=description, reference=HiddenTests(setup=setup, tests=tuple(graded)),
            metadata={"test_list": tuple(tests), "task_id": task_id,
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
    """MBPP ``full``: graded on ``test_list`` (and ``challenge_test_list`` when
    ``challenge_tests``), after ``test_setup_code``."""

    name: ClassVar[str] = "mbpp"
    hub: ClassVar[_HubConfiguration] = _FULL


@dataclasses.dataclass(frozen=True, kw_only=True)
class MbppSanitizedTask(_MbppBase):
    """MBPP ``sanitized``: hidden tests are ``test_list`` after ``test_imports``."""

    name: ClassVar[str] = "mbpp_sanitized"
    hub: ClassVar[_HubConfiguration] = _SANITIZED
