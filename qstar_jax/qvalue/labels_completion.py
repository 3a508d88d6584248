"""Labels from a stronger model's completion: y(s, a) = γ^k · R(s' ⊕ c), where c (k steps)
is the stronger model's greedy completion from s' = s ⊕ a, and y = R(s') when a ends the
trace. The stronger model may be an exact solver (``SolverSampler``), which makes y the
exact discounted value of s'."""

from __future__ import annotations

from typing import Callable, Sequence

from tqdm.auto import tqdm

from qstar_jax.qvalue.dataset import LabelledStep, StepPair, labelled
from qstar_jax.qvalue.label_journal import LabelJournal, starting_labels
from qstar_jax.qvalue.rollouts import RewardFn, RolloutSampler, memoized, sample_checked


class SolverSampler:
    """A ``RolloutSampler`` whose every continuation is ``complete(problem_index, steps)``,
    an exact solver's completion: the stronger model of the paper's third labelling way
    where the task has a solver (``label.stronger_model=solver``)."""

    def __init__(self, complete: Callable[[int, tuple[str, ...]], Sequence[str]]):
        self._complete = complete

    def continue_from(self, items, n, temperature, max_steps=None):
        return [[tuple(self._complete(problem, steps))[:max_steps]] * n
                for problem, steps in items]


def stronger_completion_labels(pairs: Sequence[StepPair], strong_sampler: RolloutSampler,
                               reward_fn: RewardFn, *, discount: float = 1.0,
                               max_steps: int | None = None, batch_pairs: int = 32,
                               progress: bool = True,
                               journal: LabelJournal | None = None) -> list[LabelledStep]:
    """One label per pair, in order; ``strong_sampler`` decodes greedily (temperature 0).
    With a ``journal``, labels it recorded are reused and each finished batch recorded."""
    if not 0.0 < discount <= 1.0:
        raise ValueError(f"discount={discount} must lie in (0, 1]")
    if batch_pairs < 1:
        raise ValueError(f"batch_pairs={batch_pairs} must be at least 1")
    reward_fn = memoized(reward_fn)
    labels = starting_labels(pairs, journal)
    open_pairs = [i for i, y in enumerate(labels) if y is None]
    for start in tqdm(range(0, len(open_pairs), batch_pairs), desc="stronger completions",
                      unit="batch", disable=not progress):
        batch = open_pairs[start:start + batch_pairs]
        roots = [(pairs[i].problem_index, pairs[i].next_state) for i in batch]
        completions = sample_checked(strong_sampler, roots, 1, 0.0, max_steps)
        for i, (problem, state), (completion,) in zip(batch, roots, completions):
            labels[i] = discount ** len(completion) * float(
                reward_fn(problem, (*state, *completion)))
        if journal is not None:
            journal.record([pairs[i] for i in batch], [labels[i] for i in batch])
    return labelled(pairs, labels)
