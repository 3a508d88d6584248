"""Before any stage runs: each stage that will run finds what it reads from the others,
on disk or written by a stage listed before it. A run that leaves a stage out, or lists
them out of order, is refused at once, naming the stage to add, not after minutes of
work with a traceback."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from qstar_jax.config import SCRATCH, ConfigError, QBackbone, Utility
from qstar_jax.stages.context import RunContext
from qstar_jax.outputs.reports import SECOND_POLICY_GREEDY
from qstar_jax.stages.evaluate import reads_q_hat, reported_methods
from qstar_jax.stages.prm import LEARNED_PRM_MARKER, PRM_DIR, SUMMARY_FILE as PRM_SUMMARY
from qstar_jax.stages.train_q import SUMMARY_FILE as Q_SUMMARY


@dataclasses.dataclass(frozen=True)
class Input:
    """``what`` a stage reads, found when ``marker`` exists (``shown``: the path named in
    messages), written by stage ``producer``."""

    what: str
    marker: Path
    producer: str
    shown: Path | None = None


def check_stage_inputs(ctx: RunContext) -> None:
    """Raise ConfigError for the first stage of ``ctx.config.stages`` that will run (its
    outputs are not all there) and reads something no earlier stage writes and the output
    folder does not hold."""
    stages = ctx.config.stages
    for at, stage in enumerate(stages):
        for needed in stage_inputs(ctx, stage):
            if needed.producer not in stages[:at] and not needed.marker.exists():
                raise ConfigError(
                    f"stage {stage} reads {needed.what} ({needed.shown or needed.marker}), "
                    f"which is not there and which stage {needed.producer} writes: list "
                    f"{needed.producer} before {stage} in stages, or --reuse a run that "
                    "has it")


def stage_inputs(ctx: RunContext, stage: str) -> list[Input]:
    """What ``stage`` reads that another stage writes; nothing where its own outputs are
    there already (the stage will be skipped)."""
    cfg, out = ctx.config, ctx.out
    rollouts = Input("the rollouts", ctx.rollouts_path, "collect")
    labels = Input("the labels", ctx.labels_path, "label")
    policy = ([Input("the policy trained from scratch", ctx.policy_dir / "config.json",
                     "train_policy", ctx.policy_dir)]
              if cfg.policy.source == SCRATCH else [])
    second = ([Input("the second policy", ctx.second_opinion_dir / "config.json",
                     "train_policy", ctx.second_opinion_dir)]
              if cfg.q_train.second_opinion == SCRATCH else [])
    on_policy = cfg.q_train.backbone == QBackbone.policy
    if stage == "collect" and not ctx.rollouts_path.exists():
        return policy
    if stage == "label" and not ctx.labels_path.exists():
        return [rollouts, *policy]
    if stage == "train_q" and not (out / Q_SUMMARY).exists():
        return [labels, *(policy + second if on_policy else [])]
    if stage == "train_prm" and not (out / PRM_SUMMARY).exists():
        return [labels, rollouts, *policy]
    if stage == "evaluate":
        needs = list(policy)
        if reads_q_hat(cfg):
            needs.append(Input("Q-hat", out / Q_SUMMARY, "train_q", ctx.q_dir))
        if reads_q_hat(cfg) or SECOND_POLICY_GREEDY in reported_methods(ctx):
            needs += second
        if cfg.search.utility == Utility.prm and cfg.search.prm_model is None:
            needs.append(Input("the learned PRM", out / PRM_DIR / LEARNED_PRM_MARKER,
                               "train_prm", out / PRM_DIR))
        return needs
    return []
