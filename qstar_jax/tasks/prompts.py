"""Prompts (plain few-shot text, or chat messages) and where a trace's answer is.

Plain prompts are an instruction, ``n_shot`` worked examples, then the question, laid out
as ``Question: ...`` / ``Answer:`` blocks; the model continues after ``Answer:`` plus a
newline (and the task's ``answer_opening``, e.g. a code fence), one step per line. Chat
prompts put the instruction and examples in the system message and the question in the
user message, format them with the caller's ``ChatFormatter``, and append the same
``answer_opening`` so the reply starts inside it.

A task may also take a model's own zero-shot prompt (``ModelPrompt``: MetaMath's Alpaca
prompt, DeepSeek-Math's chat turn), named by its ``prompt_style`` option, so a policy is
measured on the prompt it was trained and evaluated with; ``default`` is the layout above.

Math traces end with an answer line ``The answer is: ...`` (MATH boxes the answer:
``The answer is: $\\boxed{...}$``); a trace ends at its first terminal step. An answer
line that only opens a display ("So the answer is $$") states no answer, so the trace goes
on; when no step states one, the display's content on the lines after it is the answer
(``answer_extraction.extract_display_answer``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Hashable

from qstar_jax.tasks.base import ChatFormatter, Problem, split_steps
from qstar_jax.tasks.math.answer_extraction import extract_display_answer
from qstar_jax.values import is_integer


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
    if not (is_integer(n_shot) and 0 <= n_shot <= len(fmt.examples)):
        raise ValueError(f"n_shot must be between 0 and {len(fmt.examples)} "
                         f"(the worked examples there are), got {n_shot!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelPrompt:
    """A model's own zero-shot prompt, as its authors evaluate it: ``template`` with the
    question at ``{question}``, sent as plain text (``chat=False``) or as the whole user
    turn of the chat template, with no system message (``chat=True``)."""

    name: str
    template: str
    chat: bool

    def check_chat(self, chat_template: bool) -> None:
        """ValueError where the policy's prompts do (``chat_template``) or do not go
        through a chat template and this prompt is sent the other way."""
        if chat_template != self.chat:
            raise ValueError(f"prompt_style={self.name} is " + (
                "the user turn of the model's chat template: set policy.chat_template=true"
                if self.chat else "the model's plain-text prompt, which a chat template "
                "would wrap in another layout: set policy.chat_template=false"))

    def prompt(self, question: str, chat: ChatFormatter | None) -> str:
        self.check_chat(chat is not None)
        text = self.template.replace("{question}", question)
        return text if chat is None else chat([{"role": "user", "content": text}])


DEFAULT_STYLE = "default"  # the task's own instruction and worked examples (build_prompt)
# MetaMath's Alpaca prompt (its eval_gsm8k.py and eval_math.py); answers end "The answer is: X".
METAMATH = ModelPrompt(
    name="metamath", chat=False,
    template=("Below is an instruction that describes a task. Write a response that "
              "appropriately completes the request.\n\n### Instruction:\n{question}\n\n"
              "### Response: Let's think step by step."))
# DeepSeek-Math-Instruct/RL's chain-of-thought prompt (its model card): the user turn only.
DEEPSEEK_MATH = ModelPrompt(
    name="deepseek_math", chat=True,
    template="{question}\nPlease reason step by step, and put your final answer within "
             "\\boxed{}.")


def first_step_answer(completion: str, step_answer: Callable[[str], str | None]) -> str | None:
    """The answer of the first step that gives one; a trace ends at its terminal step."""
    for step in split_steps(completion):
        answer = step_answer(step)
        if answer is not None:
            return answer
    return None


class AnswerLineTraces:
    """Prompt, steps and grading of a task whose trace ends at its first step that states
    an answer (``step_answer``), which ``answers_equal`` compares with the problem's
    reference. The task names its ``prompt_format`` (and any ``model_prompts``), has an
    ``n_shot`` and a ``prompt_style``, and calls ``check_prompt_options`` when made."""

    prompt_format: ClassVar[PromptFormat]
    model_prompts: ClassVar[tuple[ModelPrompt, ...]] = ()  # the other prompt_style values
    n_shot: int
    prompt_style: str

    @staticmethod
    def step_answer(step: str) -> str | None:
        raise NotImplementedError

    @staticmethod
    def answers_equal(answer: str, reference: str) -> bool:
        raise NotImplementedError

    @staticmethod
    def answer_value(answer: str) -> Hashable | None:
        """The value an answer states, one per value however it is spelt; None when it
        states none the task can read."""
        raise NotImplementedError

    def check_prompt_options(self) -> None:
        """ValueError for an ``n_shot`` or ``prompt_style`` the task cannot prompt with."""
        check_n_shot(self.prompt_format, self.n_shot)
        styles = [DEFAULT_STYLE, *(p.name for p in self.model_prompts)]
        if self.prompt_style not in styles:
            raise ValueError(f"prompt_style must be one of {styles}, got {self.prompt_style!r}")
        if self.prompt_style != DEFAULT_STYLE and self.n_shot != 0:
            raise ValueError(f"prompt_style={self.prompt_style} is zero-shot, as the model "
                             f"was evaluated: set n_shot=0 (got {self.n_shot})")

    def prompt(self, problem: Problem, chat: ChatFormatter | None = None) -> str:
        """The default style's prompt (``build_prompt``), or the model's own
        (``ModelPrompt``) named by ``prompt_style``."""
        for model_prompt in self.model_prompts:
            if model_prompt.name == self.prompt_style:
                return model_prompt.prompt(problem.question, chat)
        return build_prompt(self.prompt_format, problem.question, n_shot=self.n_shot, chat=chat)

    def is_terminal_step(self, step: str) -> bool:
        return self.step_answer(step) is not None

    def extract_answer(self, completion: str) -> str | None:
        """The first terminal step's answer; without one, a display an answer line opened
        (see the module docstring)."""
        answer = first_step_answer(completion, self.step_answer)
        return answer if answer is not None else extract_display_answer(completion)

    def grade(self, problem: Problem, completion: str) -> bool:
        answer = self.extract_answer(completion)
        return answer is not None and self.answers_equal(answer, problem.reference)

    def answer_key(self, completion: str) -> Hashable | None:
        """What self-consistency votes on: the completion's answer as its value
        (``answer_value``), so ``$18`` and ``18 dollars`` are one vote; an answer with no
        value the task can read votes as its text; None when there is no answer."""
        answer = self.extract_answer(completion)
        if answer is None:
            return None
        value = self.answer_value(answer)
        return answer if value is None else value


def _qa_block(question: str, answer: str) -> str:
    return f"Question: {question}\nAnswer:\n{answer}"


# MCTSr's requests (after Zhang et al. 2024's prompts): the model critiques an answer
# harshly, rewrites it from the critique, and grades it, never with full marks.
ANSWER_LINE = "End with the line 'The answer is: <your final answer>'."
CRITIQUE_ASK = ("Since this answer may be weak, analyse it strictly and critically: point "
                "out every flaw and every imperfection that should lose it points.")
REFINE_ASK = ("Please refine your answer according to this feedback. Reason step by step, "
              "verify the result, and " + ANSWER_LINE[0].lower() + ANSWER_LINE[1:])
SCORE_ASK = ("Analyse this answer strictly and critically and grade it. Be very harsh: "
             "never give full marks. Reply with a single integer score between -100 and "
             "100 first, e.g. 'Score: 40'.")
# Tree of Thoughts' value prompt: a verdict on a partial solution.
VALUE_ASK = ("Evaluate whether the steps so far can still lead to a correct final answer. "
             "Reply with one word: sure, likely or impossible.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReasonerPrompts:
    """MCTSr's prompts (search/mctsr.py's ``MCTSrPrompts``) and ToT's value prompt for
    these questions: a chat conversation where a formatter is given, else plain text in
    the ``Question:`` / ``Answer:`` layout."""

    questions: tuple[str, ...]
    chat: ChatFormatter | None = None

    def answer(self, problem_index: int) -> str:
        return self._conversation(problem_index, [], f"Think step by step. {ANSWER_LINE}")

    def critique(self, problem_index: int, answer: str) -> str:
        return self._conversation(problem_index, [answer], CRITIQUE_ASK)

    def refine(self, problem_index: int, answer: str, critique: str) -> str:
        return self._conversation(problem_index, [answer, CRITIQUE_ASK, critique], REFINE_ASK)

    def score(self, problem_index: int, answer: str) -> str:
        return self._conversation(problem_index, [answer], SCORE_ASK)

    def value(self, problem_index: int, steps: tuple[str, ...]) -> str:
        return self._conversation(problem_index, ["\n".join(steps)], VALUE_ASK)

    def _conversation(self, problem_index: int, turns: list[str], ask: str) -> str:
        """The question, then alternating assistant/user ``turns`` (the assistant first),
        then ``ask`` from the user; the model's reply comes next."""
        question = self.questions[problem_index]
        if self.chat is None:
            text = _qa_block(question, turns[0]) if turns else f"Question: {question}"
            text += "".join(f"\n\n{turn}" for turn in turns[1:])
            return f"{text}\n\n{ask}\nReply:\n"
        roles = ["assistant", "user"]
        messages = [{"role": "user", "content": question if turns else f"{question}\n\n{ask}"}]
        messages += [{"role": roles[k % 2], "content": turn} for k, turn in enumerate(turns)]
        if turns:
            messages.append({"role": "user", "content": ask})
        return self.chat(messages)
