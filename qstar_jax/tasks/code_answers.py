"""Answers that are code in a fenced block, graded by hidden tests in the sandbox: what the
code tasks (MBPP, HumanEval) share. A step is one line of code; the terminal step is the
closing fence (a line that is exactly ```` ``` ````), or EOS, which the decoder handles."""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

from qstar_jax.tasks.base import STEP_SEPARATOR, Problem
from qstar_jax.tasks.sandbox import sandbox

CODE_FENCE = "```"

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HiddenTests:
    """What grading runs: ``setup`` code, then every assert in ``tests``."""

    setup: str
    tests: tuple[str, ...]

    def run(self, program: str, *, timeout_s: float, memory_mb: int) -> sandbox.ExecResult:
        """``program`` under these tests in the sandbox: passed, failed, timeout, ..."""
        return sandbox.run_program(program, list(self.tests), setup=self.setup,
                                   timeout_s=timeout_s, memory_mb=memory_mb)


def code_from_completion(completion: str) -> str:
    """The program in a completion: its lines up to the closing fence. An opening fence
    on the first non-blank line (a reply that re-opens the block) is dropped."""
    return STEP_SEPARATOR.join(code_lines(completion.split(STEP_SEPARATOR))).strip("\n")


def code_lines(lines: Sequence[str]) -> list[str]:
    """The lines of code among ``lines`` (a completion's, or a trace's steps), as
    ``code_from_completion`` reads them: those before the closing fence, less an opening
    fence on the first non-blank line."""
    first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    if first < len(lines) and lines[first].strip().startswith(CODE_FENCE) \
            and lines[first].strip() != CODE_FENCE:
        lines = lines[first + 1:]
    code = []
    for line in lines:
        if line.strip() == CODE_FENCE:
            break
        code.append(line)
    return code


class FencedCodeAnswers:
    """Step format and grading for a task whose ``problem.reference`` is ``HiddenTests``
    and which has ``timeout_s`` and ``memory_mb``; ``program`` says what runs."""

    timeout_s: float
    memory_mb: int

    def program(self, problem: Problem, code: str) -> str:
        """The program the hidden tests run, from the answer's code."""
        return code

    def is_terminal_step(self, step: str) -> bool:
        return step.strip() == CODE_FENCE

    def extract_answer(self, completion: str) -> str | None:
        return code_from_completion(completion) or None

    def grade(self, problem: Problem, completion: str) -> bool:
        return self.grade_status(problem, completion) == "passed"

    def grade_status(self, problem: Problem, completion: str) -> str:
        """How the hidden tests ended: the sandbox's status (passed, failed, timeout,
        error, memory_exceeded, killed), or ``no_code`` when the completion holds none.
        A timeout is logged; it counts as failed and the run goes on."""
        code = self.extract_answer(completion)
        if code is None:
            return "no_code"
        hidden: HiddenTests = problem.reference
        result = hidden.run(self.program(problem, code), timeout_s=self.timeout_s,
                            memory_mb=self.memory_mb)
        if result.status == "timeout":
            logger.warning("%s: %s; graded as failed", problem.id, result.detail.split("\n")[0])
        return result.status
