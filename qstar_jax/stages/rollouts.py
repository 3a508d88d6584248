"""Stages collect and label: the policy's own rollouts on training problems, then a Q̂
label for every (s, a) along them, with the policy hidden features Q̂ trains on."""

from __future__ import annotations

import functools

from qstar_jax.config import SOLVER, ConfigError, LabelMethod
from qstar_jax.policy.rollouts import DecoderRolloutSampler
from qstar_jax.qvalue.dataset import (StepPair, save_labelled, step_pairs,
                                      trace_continuations)
from qstar_jax.qvalue.features import last_step_features, step_texts
from qstar_jax.qvalue.label_journal import LabelJournal
from qstar_jax.qvalue.labels_best_of import BestOfRolloutsConfig, best_of_rollouts_labels
from qstar_jax.qvalue.labels_shepherd import OutcomeJournal
from qstar_jax.qvalue.labels_completion import SolverSampler, stronger_completion_labels
from qstar_jax.qvalue.rollouts import collect_rollouts, read_rollouts
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.fitted_q import fitted_q_labels
from qstar_jax.tasks.base import join_steps


def pairs_per_call(ctx: RunContext) -> int:
    """As many pairs per sampler call as the slot pool holds with their rollouts: decoder
    calls are overhead-bound at small batch sizes."""
    return ctx.searches_per_batch(ctx.config.label.rollouts_per_state + 1, full_rows=True)


def reward_fn(ctx: RunContext, problems):
    """The reward of a trace of ``problems``: 1.0 where the task grades its steps right."""
    def reward(problem_index: int, steps: tuple[str, ...]) -> float:
        return 1.0 if ctx.task.grade(problems[problem_index], join_steps(steps)) else 0.0
    return reward


def _stronger_sampler(ctx: RunContext, problems):
    """The stronger model that completes labelled states: the task's exact solver for
    ``label.stronger_model=solver``, else the model at that path."""
    model = ctx.config.label.stronger_model
    if model == SOLVER:
        if not hasattr(ctx.task, "solver_completion"):
            raise ValueError(f"label.stronger_model=solver: task {ctx.task.name} has no exact "
                             "solver; give a model directory")
        return SolverSampler(lambda i, steps: ctx.task.solver_completion(problems[i], steps))
    return DecoderRolloutSampler(ctx.runtime(problems, model=ctx.load(model)),
                                 max_steps=ctx.config.decode.max_steps)


def collect(ctx: RunContext) -> None:
    """Sample ``collect.rollouts_per_problem`` traces per training problem (resumable)."""
    problems = ctx.train_problems()
    sampler = DecoderRolloutSampler(functools.partial(ctx.runtime, problems),
                                    max_steps=ctx.config.decode.max_steps)
    collect_rollouts(list(range(len(problems))), sampler, reward_fn(ctx, problems),
                     per_problem=ctx.config.collect.rollouts_per_problem,
                     temperature=ctx.config.collect.temperature, out_path=ctx.rollouts_path,
                     max_steps=ctx.config.decode.max_steps,
                     batch_problems=ctx.searches_per_batch(
                         ctx.config.collect.rollouts_per_problem + 1, full_rows=True))


def labelled_pairs(ctx: RunContext, problems, rollouts) -> list[StepPair]:
    """The (s, a) pairs of ``rollouts`` the label stage labels: every one, or with
    label.live_states_only those taken in a state that can still succeed."""
    pairs = step_pairs(rollouts)
    if ctx.config.label.live_states_only:
        pairs = [p for p in pairs
                 if ctx.task.can_still_succeed(problems[p.problem_index], p.prefix_steps)]
    return pairs


def label(ctx: RunContext) -> None:
    """One label per distinct (s, a) of the rollouts, by the configured estimator; the
    rollout-based estimators journal each finished batch, so a killed stage resumes."""
    if ctx.labels_path.exists():
        return
    cfg = ctx.config
    problems = ctx.train_problems()
    rollouts = list(read_rollouts(ctx.rollouts_path))
    collected = {r.problem_index for r in rollouts}
    if not collected >= set(range(len(problems))):  # a collect stage killed, not rerun
        raise ConfigError(f"{ctx.rollouts_path} holds the rollouts of {len(collected)} of the "
                          f"{len(problems)} training problems: their collection was cut "
                          "short; list collect in stages to finish it")
    pairs = labelled_pairs(ctx, problems, rollouts)
    prompts = ctx.prompts(problems)
    features, step_logprobs = last_step_features(ctx.policy.model, ctx.policy.tokenizer,
                                                  *step_texts(prompts, pairs))
    reward = reward_fn(ctx, problems)
    journal = LabelJournal(ctx.out / "labels.partial.jsonl")
    # The completions' rewards, kept for the PRM's per-step labels (stage train_prm).
    outcomes = OutcomeJournal(ctx.step_outcomes_path)
    method = cfg.label.method
    if method == LabelMethod.best_of_rollouts:
        sampler = DecoderRolloutSampler(functools.partial(ctx.runtime, problems),
                                        max_steps=cfg.decode.max_steps)
        steps = best_of_rollouts_labels(pairs, sampler, reward, BestOfRolloutsConfig(
            rollouts=cfg.label.rollouts_per_state, temperature=cfg.collect.temperature,
            discount=cfg.label.gamma, max_steps=cfg.decode.max_steps,
            batch_pairs=pairs_per_call(ctx), trace_is_a_rollout=cfg.label.trace_is_a_rollout),
            journal=journal, outcomes=outcomes, traces=trace_continuations(rollouts))
    elif method == LabelMethod.stronger_model:
        steps = stronger_completion_labels(
            pairs, _stronger_sampler(ctx, problems), reward,
            discount=cfg.label.gamma, max_steps=cfg.decode.max_steps,
            batch_pairs=pairs_per_call(ctx), journal=journal)
    else:
        steps = fitted_q_labels(ctx, pairs, features)
    save_labelled(ctx.labels_path, steps, features=features, step_logprobs=step_logprobs)
    journal.remove()
    outcomes.close()
