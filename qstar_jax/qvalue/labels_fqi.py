"""Fitted Q-iteration (offline RL) labels.

Round k sets y(s, a) = r + γ · max_{a'} Q̂_{k-1}(s', a') (no bootstrap when a ends the
trace, where r = R; else r = 0), then refits Q̂_k = fit(pairs, y). Q̂_0 = 0. The
candidates a' for s' are the next steps the rollout data shows from s', or K single
steps sampled there.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal, Sequence

import numpy as np

from qstar_jax.qvalue.dataset import LabelledStep, StepPair, labelled
from qstar_jax.qvalue.rollouts import RolloutSampler, sample_checked

# pairs -> Q̂ values [len(pairs)]
QFunction = Callable[[Sequence[StepPair]], np.ndarray]
# (pairs, targets [len(pairs)]) -> the fitted Q̂
FitFn = Callable[[Sequence[StepPair], np.ndarray], QFunction]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FittedQConfig:
    rounds: int = 3
    discount: float = 1.0  # γ
    candidates: Literal["observed", "sampled"] = "observed"
    sampled_candidates: int = 6  # K single steps sampled from s' when candidates="sampled"
    temperature: float = 0.9

    def __post_init__(self):
        if self.rounds < 1 or self.sampled_candidates < 1:
            raise ValueError(f"rounds={self.rounds} and sampled_candidates="
                             f"{self.sampled_candidates} must both be at least 1")
        if self.candidates not in ("observed", "sampled"):
            raise ValueError(f"candidates={self.candidates!r}: choose 'observed' or 'sampled'")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount={self.discount} must lie in (0, 1]")


def _observed_candidates(pairs: Sequence[StepPair]) -> list[list[StepPair]]:
    by_state: dict[tuple, list[StepPair]] = {}
    for p in pairs:
        by_state.setdefault((p.problem_index, p.prefix_steps), []).append(p)
    candidates = []
    for p in pairs:
        following = by_state.get((p.problem_index, p.next_state), [])
        if p.terminal_reward is None and not following:
            raise ValueError(
                f"no observed next step after {p.key}, which does not end its trace; "
                "label whole traces (dataset.step_pairs) or use candidates='sampled'")
        candidates.append(following if p.terminal_reward is None else [])
    return candidates


def _sampled_candidates(pairs: Sequence[StepPair], sampler: RolloutSampler,
                        config: FittedQConfig) -> list[list[StepPair]]:
    open_pairs = [p for p in pairs if p.terminal_reward is None]
    samples = iter(sample_checked(sampler, [(p.problem_index, p.next_state) for p in open_pairs],
                                  config.sampled_candidates, config.temperature, max_steps=1))
    candidates = []
    for p in pairs:
        if p.terminal_reward is not None:
            candidates.append([])
            continue
        steps = list(dict.fromkeys(c[0] for c in next(samples) if c))
        if not steps:
            raise ValueError(f"the sampler ends the trace after {p.key}, but that step did not "
                             "end its trace in the data; check the sampler's end-of-trace rule")
        candidates.append([StepPair(problem_index=p.problem_index, prefix_steps=p.next_state,
                                    step_text=s) for s in steps])
    return candidates


def fitted_q_iteration_labels(pairs: Sequence[StepPair], fit: FitFn, config: FittedQConfig, *,
                              sampler: RolloutSampler | None = None
                              ) -> tuple[list[LabelledStep], QFunction]:
    """The last round's targets as labels, one per pair, and the last fitted Q̂."""
    if config.candidates == "sampled":
        if sampler is None:
            raise ValueError("candidates='sampled' needs a sampler")
        candidates = _sampled_candidates(pairs, sampler, config)
    else:
        candidates = _observed_candidates(pairs)
    flat = [c for group in candidates for c in group]
    owner = np.repeat(np.arange(len(pairs)), [len(group) for group in candidates])
    rewards = np.array([p.terminal_reward or 0.0 for p in pairs], np.float64)
    bootstrap = np.array([p.terminal_reward is None for p in pairs])
    q_fn: QFunction = lambda candidate_pairs: np.zeros(len(candidate_pairs))  # Q̂_0
    for _ in range(config.rounds):
        next_values = np.full(len(pairs), -np.inf)
        values = np.asarray(q_fn(flat), np.float64)
        if values.shape != (len(flat),):
            raise ValueError(f"the fitted Q̂ returned shape {values.shape} for {len(flat)} "
                             "pairs; a QFunction returns one value per pair")
        np.maximum.at(next_values, owner, values)
        targets = rewards + config.discount * np.where(bootstrap, next_values, 0.0)
        q_fn = fit(pairs, targets)
    return labelled(pairs, targets), q_fn
