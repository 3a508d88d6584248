"""Best-of-rollouts labels (the paper's most robust choice).

y(s, a) = R(s') when a ends the trace, else the best discounted return
γ^k · R(s' ⊕ c) over rollouts c (k steps long) from s' = s ⊕ a. Rollouts are either M
independent samples from s', or the rollouts of an M-simulation UCT search from s'. With
``trace_is_a_rollout``, what the collected traces through (s, a) did after it counts among
the M samples, and only M - 1 are drawn: the same estimate for one rollout less each
(for M = 1, none: the label is the trace's own discounted reward).
The M samples' rewards can be recorded for the PRM's per-step labels (``labels_shepherd``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Mapping, Sequence

from tqdm.auto import tqdm

from qstar_jax.qvalue.dataset import LabelledStep, StepPair, labelled
from qstar_jax.qvalue.label_journal import LabelJournal, starting_labels
from qstar_jax.qvalue.labels_shepherd import OutcomeJournal
from qstar_jax.qvalue.rollouts import RewardFn, RolloutSampler, memoized, sample_checked
from qstar_jax.qvalue.uct import UCTConfig, uct_best_returns


@dataclasses.dataclass(frozen=True, kw_only=True)
class BestOfRolloutsConfig:
    method: Literal["sample", "mcts"] = "sample"
    rollouts: int = 4  # M: samples from s' ("sample") or UCT simulations ("mcts")
    temperature: float = 0.9  # paper: 0.9 for math, 0.2 for code
    discount: float = 1.0  # γ per step
    max_steps: int | None = None  # cap on a rollout's length
    mcts_branching: int = 3  # single steps sampled per UCT expansion
    mcts_exploration: float = 1.0
    batch_pairs: int = 32  # pairs whose rollouts share one sampler call
    # method "sample": the traces' own continuations are rollouts too (M - 1 are drawn).
    trace_is_a_rollout: bool = False

    def __post_init__(self):
        if self.method not in ("sample", "mcts"):
            raise ValueError(f"method={self.method!r}: choose 'sample' or 'mcts'")
        if self.rollouts < 1 or self.batch_pairs < 1:
            raise ValueError(f"rollouts={self.rollouts} and batch_pairs={self.batch_pairs} "
                             "must both be at least 1")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount={self.discount} must lie in (0, 1]")
        if self.trace_is_a_rollout and self.method != "sample":
            raise ValueError("trace_is_a_rollout goes with method 'sample': a UCT search's "
                             "rollouts are its own")


def best_of_rollouts_labels(pairs: Sequence[StepPair], sampler: RolloutSampler,
                            reward_fn: RewardFn, config: BestOfRolloutsConfig, *,
                            progress: bool = True,
                            journal: LabelJournal | None = None,
                            outcomes: OutcomeJournal | None = None,
                            traces: Mapping[tuple, Sequence[tuple[int, float]]] | None = None
                            ) -> list[LabelledStep]:
    """One label per pair, in order. With a ``journal``, labels it recorded are reused and
    each finished batch is recorded; with ``outcomes`` (method "sample"), each batch's
    completion rewards are recorded first. ``traces`` (``dataset.trace_continuations``)
    goes with ``config.trace_is_a_rollout``."""
    if config.trace_is_a_rollout and traces is None:
        raise ValueError("trace_is_a_rollout needs the traces' continuations (traces=)")
    reward_fn = memoized(reward_fn)
    labels = starting_labels(pairs, journal)
    open_pairs = [i for i, y in enumerate(labels) if y is None]
    uct = UCTConfig(simulations=config.rollouts, branching=config.mcts_branching,
                    exploration=config.mcts_exploration, temperature=config.temperature,
                    discount=config.discount, max_steps=config.max_steps)
    for start in tqdm(range(0, len(open_pairs), config.batch_pairs), desc="best-of-rollouts",
                      unit="batch", disable=not progress):
        batch = open_pairs[start:start + config.batch_pairs]
        roots = [(pairs[i].problem_index, pairs[i].next_state) for i in batch]
        if config.method == "mcts":
            best = uct_best_returns(roots, sampler, reward_fn, uct)
        else:
            drawn = config.rollouts - 1 if config.trace_is_a_rollout else config.rollouts
            continuations = (sample_checked(sampler, roots, drawn, config.temperature,
                                            config.max_steps)
                             if drawn else [[] for _ in roots])
            returns = [[(len(c), reward_fn(problem, (*state, *c))) for c in row]
                       for (problem, state), row in zip(roots, continuations)]
            if config.trace_is_a_rollout:
                returns = [row + list(traces[pairs[i].key]) for i, row in zip(batch, returns)]
            if outcomes is not None:
                outcomes.record([pairs[i] for i in batch],
                                [[r for _, r in row] for row in returns])
            best = [max(config.discount ** k * r for k, r in row) for row in returns]
        for i, y in zip(batch, best):
            labels[i] = float(y)
        if journal is not None:
            journal.record([pairs[i] for i in batch], [labels[i] for i in batch])
    return labelled(pairs, labels)
