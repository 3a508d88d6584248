"""GSM-Symbolic: GSM8K-style word problems made from templates by ``reasoning-gym``.

Each instance has a question, a worked solution (``answer_cot``, GSM8K's layout: one
step per line, last line ``#### N``) and the answer N. Prompt, steps and grading are
GSM8K's (``gsm8k.Gsm8kTraces``, ``prompt_style`` included): one step per line, ``The
answer is: N``, compared as a number (``grading.number_equal``). ``solution_steps``
gives the worked solution in that layout, for training traces.

The generator is procedural, so splits are made, not read: instances are drawn in order
from one ``reasoning-gym`` stream seeded by ``split_seed`` and dealt out to ``test``, then
``validation``, then ``train`` until each holds its size; an instance whose question has
already been dealt is skipped, so no problem is in two splits (nor twice in one). The
same options give the same splits on any machine; ``test`` depends only on
``split_seed`` and ``test_size``.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, ClassVar

from qstar_jax.tasks.base import Problem, SplitSizes
from qstar_jax.tasks.gsm8k import Gsm8kTraces
from qstar_jax.tasks.math import grading
from qstar_jax.tasks.package_data import import_package, seeded_subset

SPLITS = ("test", "validation", "train")  # the order instances are dealt in
# Draws allowed per problem asked for before giving up: repeats are rare (about 1 in 200).
_DRAWS_PER_PROBLEM = 4
_GENERATOR_SUFFIX = " Give the result as your final answer. Do not include units."


@dataclasses.dataclass(frozen=True, kw_only=True)
class GsmSymbolicTask(Gsm8kTraces, SplitSizes):
    """GSM-Symbolic from ``reasoning-gym``; sizes (``SplitSizes``) are problems per split."""

    name: ClassVar[str] = "gsm_symbolic"
    split_seed: int = 0
    validation_size: int = 200
    train_size: int = 2000
    n_shot: int = 4
    prompt_style: str = "default"

    def __post_init__(self):
        self.check_prompt_options()
        super().__post_init__()

    def load(self, split: str, *, limit: int | None = None, seed: int = 0,
             skip_malformed: bool = False) -> list[Problem]:
        """``skip_malformed`` is accepted for the Task interface; generated instances are
        always well formed (a malformed one is an error naming it)."""
        if split not in SPLITS:
            raise ValueError(f"gsm_symbolic has no split {split!r}; its splits are {SPLITS}")
        problems = self._deal(split)
        if not problems:
            raise ValueError(f"gsm_symbolic split {split!r} is empty: set "
                             f"task.options.{split}_size above 0")
        return seeded_subset(problems, limit, seed, task=self.name, split=split,
                             size_option=f"task.options.{split}_size")

    def solution_steps(self, problem: Problem, rng: random.Random | None = None) -> list[str]:
        """The worked solution, one step per line, ending ``The answer is: N`` (the
        solution is fixed; ``rng`` is accepted for the from-scratch trainer's interface)."""
        return list(problem.metadata["solution_steps"])

    def _deal(self, split: str) -> list[Problem]:
        """Instances dealt to ``test``, ``validation`` and ``train`` in turn, up to ``split``."""
        dataset_module = import_package("reasoning_gym.arithmetic.gsm_symbolic.gsm_symbolic",
                                        "reasoning-gym", self.name)
        needed = {s: self.split_size(s) for s in SPLITS[:SPLITS.index(split) + 1]}
        total = sum(needed.values())
        draws = _DRAWS_PER_PROBLEM * total + 100
        dataset = dataset_module.GSMSymbolicDataset(dataset_module.GSMSymbolicDatasetConfig(
            seed=self.split_seed, size=draws))
        dealt: dict[str, list[Problem]] = {s: [] for s in needed}
        pending = [s for s in needed if needed[s] > 0]  # splits still short, in dealing order
        seen: set[str] = set()
        for index in range(draws):
            if not pending:
                break
            instance = dataset[index]
            if instance["question"] in seen:
                continue
            seen.add(instance["question"])
            dealt[pending[0]].append(problem_from_instance(instance, index))
            if len(dealt[pending[0]]) == needed[pending[0]]:
                pending.pop(0)
        if pending:
            raise ValueError(f"gsm_symbolic made only {len(seen)} distinct problems in "
                             f"{draws} draws, short of the {total} asked for; lower the sizes")
        return dealt[split]


def problem_from_instance(instance: dict[str, Any], index: int) -> Problem:
    """A Problem from one ``reasoning-gym`` instance (the ``index``-th of its stream)."""
    question, answer = instance.get("question"), instance.get("answer")
    solution = (instance.get("metadata") or {}).get("answer_cot")
    if not (isinstance(question, str) and isinstance(answer, str) and isinstance(solution, str)):
        raise ValueError(f"gsm_symbolic instance {index} lacks a question, answer or "
                         "worked solution (reasoning-gym's format changed?)")
    reference = grading.extract_gsm8k_reference(solution)
    if not grading.number_equal(answer, reference):
        raise ValueError(f"gsm_symbolic instance {index}: its answer {answer!r} is not the "
                         f"worked solution's {reference!r}")
    steps = [line for line in solution.split("\n")[:-1] if line.strip()]
    return Problem(id=f"gsm_symbolic/{index}", question=question.removesuffix(_GENERATOR_SUFFIX),
                   reference=answer,
                   metadata={"solution": solution,
                             "solution_steps": (*steps, f"The answer is: {answer}")})
