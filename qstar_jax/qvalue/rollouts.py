"""The policy's own rollouts on training problems, stored durably and resumably.

One JSONL line per problem holds all of that problem's rollouts; it is appended (and
fsynced) as soon as the problem is done, so a killed collection resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Protocol, Sequence

from tqdm.auto import tqdm

from qstar_jax.outputs import durable

# (problem_index, steps of a finished trace) -> 1.0 when the task grader accepts it, else 0.0
RewardFn = Callable[[int, tuple[str, ...]], float]

# (problem_index, steps so far)
SamplerItem = tuple[int, tuple[str, ...]]


class RolloutSampler(Protocol):
    """Samples continuations of partial traces with the (frozen) policy."""

    def continue_from(self, items: Sequence[SamplerItem], n: int, temperature: float,
                      max_steps: int | None = None) -> list[list[tuple[str, ...]]]:
        """For each item, ``n`` sampled continuations: the steps after the prefix up to the
        end of the trace, or at most ``max_steps`` steps. Continuing a finished trace gives
        empty continuations ``()``."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rollout:
    steps: tuple[str, ...]
    reward: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProblemRollouts:
    """All rollouts of one problem, sampled from the question at one temperature."""

    problem_index: int
    temperature: float
    rollouts: tuple[Rollout, ...]

    def to_json(self) -> dict:
        return {"problem_index": self.problem_index, "temperature": self.temperature,
                "rollouts": [{"steps": list(r.steps), "reward": r.reward} for r in self.rollouts]}

    @classmethod
    def from_json(cls, record: dict) -> "ProblemRollouts":
        return cls(problem_index=int(record["problem_index"]),
                   temperature=float(record["temperature"]),
                   rollouts=tuple(Rollout(steps=tuple(r["steps"]), reward=float(r["reward"]))
                                  for r in record["rollouts"]))


def read_rollouts(path: str | os.PathLike) -> list[ProblemRollouts]:
    """Every complete record in ``path`` (a torn last line from a kill is skipped)."""
    records, _ = durable.read_jsonl(path)
    return [ProblemRollouts.from_json(r) for r in records]


def memoized(reward_fn: RewardFn) -> RewardFn:
    """``reward_fn`` graded once per distinct trace (sampled traces repeat, and grading
    code runs a sandboxed process)."""
    return functools.cache(reward_fn)


def sample_checked(sampler: RolloutSampler, items: Sequence[SamplerItem], n: int,
                   temperature: float, max_steps: int | None = None
                   ) -> list[list[tuple[str, ...]]]:
    """``sampler.continue_from`` with its answer's shape checked: [len(items)][n] tuples."""
    if not items:
        return []
    out = sampler.continue_from(items, n, temperature, max_steps)
    if len(out) != len(items) or any(len(row) != n for row in out):
        got = [len(row) for row in out]
        raise ValueError(f"{type(sampler).__name__}.continue_from returned continuation counts "
                         f"{got} for {len(items)} items with n={n}; it must return n per item")
    return [[tuple(c) for c in row] for row in out]


def collect_rollouts(problems: Sequence[int], sampler: RolloutSampler, reward_fn: RewardFn, *,
                     per_problem: int, temperature: float, out_path: str | os.PathLike,
                     max_steps: int | None = None, batch_problems: int = 8,
                     progress: bool = True) -> list[ProblemRollouts]:
    """Sample ``per_problem`` full traces for each problem index, grade and store them.

    Problems already in ``out_path`` are skipped (resume); each newly finished problem is
    appended and fsynced at once. ``batch_problems`` problems share one sampler call.
    Returns the records of ``problems``, in that order.
    """
    if per_problem < 1 or batch_problems < 1:
        raise ValueError(f"per_problem={per_problem} and batch_problems={batch_problems} "
                         "must both be at least 1")
    if len(set(problems)) != len(problems):
        raise ValueError("problems lists some problem index more than once")
    stored = {r.problem_index: r for r in read_rollouts(out_path)}
    for record in stored.values():
        if record.temperature != temperature:
            raise ValueError(
                f"{out_path} holds rollouts sampled at temperature {record.temperature}, not "
                f"{temperature}; resume with the same temperature or use a new out_path")
    todo = [p for p in problems if p not in stored]
    with durable.open_for_append(out_path) as file, \
            tqdm(total=len(problems), initial=len(problems) - len(todo), desc="rollouts",
                 unit="problem", disable=not progress) as bar:
        for start in range(0, len(todo), batch_problems):
            batch = todo[start:start + batch_problems]
            traces = sample_checked(sampler, [(p, ()) for p in batch], per_problem,
                                    temperature, max_steps)
            for problem, problem_traces in zip(batch, traces):
                record = ProblemRollouts(
                    problem_index=problem, temperature=temperature,
                    rollouts=tuple(Rollout(steps=t, reward=float(reward_fn(problem, t)))
                                   for t in problem_traces))
                durable.append_record(file, record.to_json())
                stored[problem] = record
                bar.update(1)
    return [stored[p] for p in problems]
