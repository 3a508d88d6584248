"""Prompts (plain few-shot text, or chat messages) and where a trace's answer is.

Plain prompts are an instruction, ``n_shot`` worked examples, then the question, laid out
as ``Question: ...`` / ``Answer:`` blocks; the model continues after ``Answer:`` plus a
newline (and the task's ``answer_opening``, e.g. a code fence), one step per line. Chat
prompts put the instruction and examples in the system message and the question in the
user message, format them with the caller's ``ChatFormatter``, and append the same
``answer_opening`` so the reply starts inside it.

Math traces end with an answer line ``The answer is: ...`` (MATH boxes the answer:
``The answer is: $\\boxed{...}$``); a trace ends at its first terminal step.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from qstar_jax.tasks.base import ChatFormatter, split_steps


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkedExample:
    question: str
    solution: str  # the steps, one per line, ending with the terminal step


@dataclasses.dataclass(frozen=True, kw_only=True)
class PromptFormat:
    instruction: str
    examples: tuple[WorkedExample, ...]
    answer_opening: str = ""  # the start of every answer, left open for the model


def build_prompt(fmt: PromptFormat, question: str, *, n_shot: int,
                 chat: ChatFormatter | None = None) -> str:
    """The text the policy continues for ``question``; see the module docstring."""
    check_n_shot(fmt, n_shot)
    shots = "".join(_qa_block(ex.question, fmt.answer_opening + ex.solution) + "\n\n"
                    for ex in fmt.examples[:n_shot])
    if chat is None:
        return f"{fmt.instruction}\n\n{shots}{_qa_block(question, fmt.answer_opening)}"
    system = fmt.instruction + (f"\n\nExamples:\n\n{shots.rstrip()}" if shots else "")
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return chat(messages) + fmt.answer_opening


def check_n_shot(fmt: PromptFormat, n_shot: int) -> None:
    if not 0 <= n_shot <= len(fmt.examples):
        raise ValueError(f"n_shot must be between 0 and {len(fmt.examples)} "
                         f"(the worked examples there are), got {n_shot}")


def first_step_answer(completion: str, step_answer: Callable[[str], str | None]) -> str | None:
    """The answer of the first step that gives one; a trace ends at its terminal step."""
    for step in split_steps(completion):
        answer = step_answer(step)
        if answer is not None:
            return answer
    return None


def _qa_block(question: str, answer: str) -> str:
    return f"Question: {question}\nAnswer:\n{answer}"
