"""GSM8K: grade-school word problems with a number as the answer.

Hub: ``openai/gsm8k``, config ``main``, splits train/test; records hold ``question`` and
``answer`` (a worked solution whose last line is ``#### N``). A trace is one reasoning
step per line ending with ``The answer is: N``. A step that states an answer (by
``grading.extract_final_answer``: an answer phrase, a ``####`` line or a box) is
terminal, and its answer is compared with ``N`` as a number (``gsm8k_numbers``: units,
magnitude words, the phrase's first value).

The prompt (``prompt_style``): ``default``, the instruction and ``n_shot`` worked examples
below; or ``metamath``, MetaMath's zero-shot Alpaca prompt ending ``### Response: Let's
think step by step.`` (plain text only), whose first step continues that line after a
space and whose answers end ``The answer is: N`` (after a ``#### N`` line, itself
terminal).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from qstar_jax.tasks.math import grading
from qstar_jax.tasks.base import Problem
from qstar_jax.tasks.datasets import Column, DataFiles, DatasetSource, load_problems
from qstar_jax.tasks.prompts import METAMATH, AnswerLineTraces, PromptFormat, WorkedExample
from qstar_jax.tasks.record_fields import record_text

GSM8K_FORMAT = PromptFormat(
    instruction=("Solve the math word problem step by step. Write one step per line and "
                 "finish with a line of the form \"The answer is: <number>\"."),
    examples=(
        WorkedExample(
            question=("Mia has 3 boxes of pencils with 12 pencils in each box. She gives "
                      "away 9 pencils. How many pencils does she have left?"),
            solution=("Mia starts with 3 * 12 = 36 pencils.\n"
                      "After giving away 9 she has 36 - 9 = 27 pencils.\n"
                      "The answer is: 27")),
        WorkedExample(
            question=("A train ticket costs $15 for an adult and $8 for a child. How much "
                      "does a family of 2 adults and 3 children pay?"),
            solution=("The adults pay 2 * 15 = 30 dollars.\n"
                      "The children pay 3 * 8 = 24 dollars.\n"
                      "Together they pay 30 + 24 = 54 dollars.\n"
                      "The answer is: 54")),
        WorkedExample(
            question=("Leo reads 20 pages a day. His book has 340 pages and he has already "
                      "read 100 of them. How many more days does he need to finish it?"),
            solution=("He has 340 - 100 = 240 pages left.\n"
                      "At 20 pages a day he needs 240 / 20 = 12 days.\n"
                      "The answer is: 12")),
        WorkedExample(
            question=("A garden has 4 rows of tomato plants with 6 plants in each row. Each "
                      "plant gives 5 tomatoes, and half of the tomatoes are sold. How many "
                      "tomatoes are sold?"),
            solution=("There are 4 * 6 = 24 plants.\n"
                      "They give 24 * 5 = 120 tomatoes.\n"
                      "Half of them is 120 / 2 = 60 tomatoes.\n"
                      "The answer is: 60")),
    ),
)

_GSM8K_COLUMNS = (
    Column(name="question", holds="str: the word problem"),
    Column(name="answer", holds="str: the worked solution, last line '#### <number>'"),
)


class Gsm8kTraces(AnswerLineTraces):
    """GSM8K's prompt, steps and grading, for any task of GSM8K-style problems whose
    reference is the answer number; the task has an ``n_shot`` and a ``prompt_style``."""

    prompt_format = GSM8K_FORMAT
    model_prompts = (METAMATH,)
    step_answer = staticmethod(grading.extract_final_answer)
    answers_equal = staticmethod(grading.number_equal)
    answer_value = staticmethod(grading.gsm8k_number)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Gsm8kTask(Gsm8kTraces):
    """GSM8K; ``data_files`` (see ``datasets.load_records``) replaces the hub."""

    name: ClassVar[str] = "gsm8k"
    data_files: DataFiles | None = None
    hub_name: str = "openai/gsm8k"
    hub_config: str = "main"
    cache_dir: str | None = None
    n_shot: int = 4
    prompt_style: str = "default"

    def __post_init__(self):
        self.check_prompt_options()

    def load(self, split: str, *, limit: int | None = None, seed: int = 0,
             skip_malformed: bool = False) -> list[Problem]:
        source = DatasetSource(task_name=self.name, hub_name=self.hub_name,
                               hub_configs=(self.hub_config,), columns=_GSM8K_COLUMNS)
        return load_problems(source, split, self._problem_from_record,
                             data_files=self.data_files, cache_dir=self.cache_dir,
                             limit=limit, seed=seed, skip_malformed=skip_malformed)

    def _problem_from_record(self, record: dict[str, Any], default_id: str) -> Problem:
        question, solution = record_text(record, "question"), record_text(record, "answer")
        reference = grading.extract_gsm8k_reference(solution)
        if grading.gsm8k_number(reference) is None:  # no answer could ever equal it
            raise ValueError(f"its '####' line holds {reference!r}, which is not a number")
        return Problem(id=default_id, question=question, reference=reference,
                       metadata={"solution": solution})
