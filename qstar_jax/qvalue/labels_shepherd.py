"""Math-Shepherd per-step labels for a process reward model, from M completions per step.

For a step a taken in state s, M completions are sampled from s' = s ⊕ a and graded.
Hard estimation labels a good (1) when any completion reaches the right answer, soft
estimation labels it with the share that do; a step that ends its trace is labelled with
the trace's own reward. The best-of-rollouts label stage samples exactly these M
completions per (s, a), so it records their rewards in an ``OutcomeJournal`` and the PRM
stage reads them instead of sampling again; what is missing is sampled here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Literal, Sequence

import numpy as np
from tqdm.auto import tqdm

from qstar_jax.outputs import durable
from qstar_jax.qvalue.dataset import LabelledStep, StepPair, labelled
from qstar_jax.qvalue.rollouts import RewardFn, RolloutSampler, memoized, sample_checked

ESTIMATIONS = ("hard", "soft")


class OutcomeJournal:
    """An append-only JSONL file: per (s, a), the rewards of the completions sampled
    from s ⊕ a. A torn last line is ignored; opened for appending at the first record."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file: IO[str] | None = None

    def known(self) -> dict[tuple, list[float]]:
        """The completion rewards recorded so far, by pair key."""
        records, _ = durable.read_jsonl(self.path)
        return {(r["problem_index"], tuple(r["prefix_steps"]), r["step_text"]): r["rewards"]
                for r in records}

    def record(self, pairs: Sequence[StepPair], rewards: Sequence[Sequence[float]]) -> None:
        if self._file is None:
            self._file = durable.open_for_append(self.path)
        durable.append_records(self._file, [
            {"problem_index": p.problem_index, "prefix_steps": list(p.prefix_steps),
             "step_text": p.step_text, "rewards": [float(r) for r in row]}
            for p, row in zip(pairs, rewards)])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def missing_outcomes(pairs: Sequence[StepPair], journal: OutcomeJournal) -> list[StepPair]:
    """The pairs that still need completions: not ending their trace, none recorded."""
    known = journal.known()
    return [p for p in pairs if p.terminal_reward is None and p.key not in known]


def sample_outcomes(pairs: Sequence[StepPair], sampler: RolloutSampler, reward_fn: RewardFn,
                    journal: OutcomeJournal, *, completions: int, temperature: float,
                    max_steps: int | None = None, batch_pairs: int = 32,
                    progress: bool = True) -> None:
    """Sample ``completions`` continuations from each pair's s', grade them and record
    their rewards in ``journal``, a batch of pairs at a time (a killed stage resumes with
    ``missing_outcomes``)."""
    reward_fn = memoized(reward_fn)
    for start in tqdm(range(0, len(pairs), batch_pairs), desc="step completions",
                      unit="batch", disable=not progress):
        batch = pairs[start:start + batch_pairs]
        roots = [(p.problem_index, p.next_state) for p in batch]
        rows = sample_checked(sampler, roots, completions, temperature, max_steps)
        journal.record(batch, [[reward_fn(problem, (*state, *c)) for c in row]
                               for (problem, state), row in zip(roots, rows)])


def shepherd_labels(pairs: Sequence[StepPair], outcomes: dict[tuple, Sequence[float]],
                    estimation: Literal["hard", "soft"]) -> list[LabelledStep]:
    """One label per pair: its trace's reward when the step ends it, else hard (any
    completion right) or soft (the share right) over its recorded completions."""
    if estimation not in ESTIMATIONS:
        raise ValueError(f"estimation={estimation!r}: choose one of {ESTIMATIONS}")
    labels = []
    for p in pairs:
        if p.terminal_reward is not None:
            labels.append(p.terminal_reward)
            continue
        rewards = outcomes.get(p.key)
        if not rewards:
            raise ValueError(f"no completions recorded for {p.key}; sample them first "
                             "(sample_outcomes)")
        right = np.asarray(rewards) > 0.5  # rewards are 1 for a right answer, else 0
        labels.append(float(right.any()) if estimation == "hard" else float(right.mean()))
    return labelled(pairs, labels)
