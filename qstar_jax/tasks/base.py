"""The contract every task meets: load problems, prompt, step format, extract, grade.

A reasoning trace is a sequence of steps, one per line (``STEP_SEPARATOR``); the last
step of a finished trace is the task's final-answer line. ``tasks/`` knows nothing of
models: prompts are strings, and a chat template is applied only through the
``ChatFormatter`` callable the caller passes in.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Callable, Protocol, Sequence

from qstar_jax.values import is_integer

STEP_SEPARATOR = "\n"

# (messages) -> prompt text; e.g. a tokenizer's ``apply_chat_template(..., tokenize=False,
# add_generation_prompt=True)``.
ChatFormatter = Callable[[list[dict[str, str]]], str]


class MalformedRecordError(ValueError):
    """A dataset record lacks what the task needs; the message names the record index."""


# How a malformed record's error says to skip such records, in a run and in Python.
SKIP_MALFORMED = "task.skip_malformed=true in a run, skip_malformed=True to Task.load"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Problem:
    """One problem. ``reference`` is what the grader compares against (an answer string,
    or for code the hidden tests); ``metadata`` carries task-specific extras."""

    id: str
    question: str
    reference: Any
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


class Task(Protocol):
    """What every task has. A synthetic world (Countdown, the arithmetic chains) may also
    have the optional parts of ``SyntheticWorld``; a stage that needs one checks for it
    with ``hasattr`` and says so when it is missing. A task whose answers have several
    spellings (GSM8K, MATH) also has ``answer_key(completion)``, the answer's value, which
    self-consistency votes on in place of ``extract_answer``."""

    name: str

    def load(self, split: str, *, limit: int | None = None, seed: int = 0,
             skip_malformed: bool = False) -> list[Problem]:
        """Problems of a split; ``limit`` takes a seeded random subset of that size."""

    def prompt(self, problem: Problem, chat: ChatFormatter | None = None) -> str:
        """The text the policy continues: plain few-shot text, or the chat template."""

    def is_terminal_step(self, step: str) -> bool:
        """True when this step (one line) ends the trace with a final answer."""

    def extract_answer(self, completion: str) -> str | None:
        """The final answer in a completion (all steps joined), or None."""

    def grade(self, problem: Problem, completion: str) -> bool:
        """Exact verdict for a completion; never raises on model text."""


class SyntheticWorld(Task, Protocol):
    """The optional parts of a task whose problems an exact solver understands; each is
    optional on its own (Countdown has no ``solver_completion`` or ``wrong_step``).

    train_policy (policy.source=scratch) needs ``alphabet`` and ``solution_steps``, and
    for a value head ``wrong_step``, ``solver_completion`` and ``can_still_succeed``;
    search.utility=countdown_rule needs ``step_reward``; label.stronger_model=solver needs
    ``solver_completion``; the exact-Q̂ experiments need ``can_still_succeed``.
    """

    alphabet: str  # every character a from-scratch char-level policy may read or write

    def solution_steps(self, problem: Problem, rng: random.Random) -> list[str]:
        """One solution trace as step lines (supervised training of the policy)."""

    def step_reward(self, problem: Problem, steps: Sequence[str]) -> float:
        """The rule's process reward of the last of ``steps`` (g's R_P)."""

    def can_still_succeed(self, problem: Problem, steps: Sequence[str]) -> bool:
        """Exact value of a partial trace: is it correct, or still completable?"""

    def solver_completion(self, problem: Problem, steps: Sequence[str]) -> list[str]:
        """The lines an exact solver writes after ``steps`` to finish the trace."""

    def wrong_step(self, problem: Problem, steps: Sequence[str], rng: random.Random) -> str:
        """A plausible wrong next line after ``steps``, a prefix of a solution."""


def split_steps(completion: str) -> list[str]:
    """Non-empty steps of a completion, in order."""
    return [line for line in completion.split(STEP_SEPARATOR) if line.strip()]


def last_line(step: str) -> str:
    """A step's last line: what it says, past the blank lines that joined it
    (``decoding.line_tables``); a one-line step is itself."""
    return step.rsplit(STEP_SEPARATOR, 1)[-1]


def join_steps(steps: Sequence[str]) -> str:
    return STEP_SEPARATOR.join(steps)


def state_text(prompt: str, steps: Sequence[str]) -> str:
    """The text of state s = prompt ⊕ steps, each step ended by the separator as the
    policy wrote it: what the policy continues and what Q̂ reads."""
    return prompt + "".join(step + STEP_SEPARATOR for step in steps)


def int_range(where: str, value: Any, *, lowest: int | None = None) -> tuple[int, int]:
    """A config's inclusive ``(low, high)`` as a tuple of two integers, low <= high and
    low >= ``lowest`` when given; anything else is a ValueError naming ``where``."""
    # Any sequence but a string: YAML gives lists, OmegaConf ListConfigs, code tuples.
    bounds = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else ()
    floor = "" if lowest is None else f"{lowest} <= "
    if len(bounds) != 2 or not all(map(is_integer, bounds)) or bounds[0] > bounds[1] \
            or (lowest is not None and bounds[0] < lowest):
        raise ValueError(f"{where}={value!r}: give two integers (low, high), both included, "
                         f"with {floor}low <= high")
    return bounds


SIZED_SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SplitSizes:
    """How many problems each split of a generated task holds: what ``load`` gives when
    no limit is asked. A config or task inherits it, so the keys stay ``train_size``,
    ``validation_size`` and ``test_size``; a subclass's ``__post_init__`` calls this one."""

    train_size: int
    validation_size: int = 500
    test_size: int = 500

    def __post_init__(self):
        for split in SIZED_SPLITS:
            size = getattr(self, f"{split}_size")
            if not (is_integer(size) and size >= 0):
                raise ValueError(f"{type(self).__name__}.{split}_size must be an int >= 0, "
                                 f"got {size!r}")

    def split_size(self, split: str) -> int:
        if split not in SIZED_SPLITS:
            raise ValueError(f"{type(self).__name__} has splits {SIZED_SPLITS}, not {split!r}")
        return getattr(self, f"{split}_size")


def check_unique_ids(problems: Sequence[Problem], where: str) -> None:
    """MalformedRecordError naming ``where`` (what the records were read from) and the id
    where two of ``problems`` share one: a run keys its results, its resume and its paired
    comparisons by problem id, so the second would pass for done and its result be lost."""
    seen = set()
    for problem in problems:
        if problem.id in seen:
            raise MalformedRecordError(
                f"{where}: two records have the id {problem.id!r}; a run keys its results and "
                "resumes by problem id: give each record an id of its own")
        seen.add(problem.id)
