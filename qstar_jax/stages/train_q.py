"""Stage train_q: fit the Q̂ head on the labelled steps' policy features (optax), with
orbax checkpoints so a killed run resumes; and load the trained Q̂ for search."""

from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np
from flax import nnx

from qstar_jax.config import ConfigError, Loss, QBackbone
from qstar_jax.outputs.durable import write_text_atomically
from qstar_jax.parallel import is_writer
from qstar_jax.qvalue.checkpoint import BackboneIdentity, QCheckpointer, load_q_head
from qstar_jax.qvalue.dataset import LabelledStep, load_labelled, load_step_logprobs
from qstar_jax.qvalue.head import QHead, QHeadConfig, QHeadModel, head_inputs
from qstar_jax.qvalue.scorers import PolicyHiddenQ, SecondOpinion, SeparateBackboneQ
from qstar_jax.qvalue.train import TrainConfig, train_q_model
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.separate_q import train_separate_q

SUMMARY_FILE = "q_training.json"  # in the run folder: written when Q-hat's training ends


def head_output(ctx: RunContext) -> str:
    """The head's squashing: a probability for BCE, a raw value for MSE."""
    return "sigmoid" if ctx.config.q_train.loss == Loss.bce else "raw"


def head_config(ctx: RunContext) -> QHeadConfig:
    q = ctx.config.q_train
    width = ctx.policy.config.hidden_size
    return QHeadConfig(hidden_size=width, mlp_widths=(width,) * q.hidden_layers,
                       output=head_output(ctx),
                       step_logprob=q.step_logprob,
                       second_opinion=q.second_opinion is not None)


def second_opinion(ctx: RunContext, problems) -> SecondOpinion | None:
    """The second policy's log-probabilities over ``problems``' steps (None: not set)."""
    return (None if ctx.second_opinion_dir is None
            else SecondOpinion(ctx.second_policy, ctx.prompts(problems)))


def labelled_head_inputs(ctx: RunContext, steps: Sequence[LabelledStep],
                         features: np.ndarray) -> np.ndarray:
    """What the head reads of the label stage's ``steps`` (their saved ``features`` and
    log-probabilities, and the second policy's opinion where there is one)."""
    opinion = second_opinion(ctx, ctx.train_problems())
    return head_inputs(features, load_step_logprobs(ctx.labels_path), head_config(ctx),
                       None if opinion is None else opinion(steps))


def train_config(ctx: RunContext, examples: int) -> TrainConfig:
    q = ctx.config.q_train
    # Too few labels to hold any out: train on all of them, without early stopping.
    holdout = q.holdout_fraction if examples * q.holdout_fraction >= 1 else 0.0
    train_examples = examples - round(examples * holdout)  # as split_indices holds out
    if train_examples < 1:
        raise ConfigError(f"q_train.holdout_fraction={q.holdout_fraction} holds out all "
                          f"{examples} labelled examples, leaving none to train on: lower it")
    batch_size = min(q.batch_size, train_examples)  # a small label set is one batch
    steps_per_epoch = math.ceil(train_examples / batch_size)
    return TrainConfig(loss=q.loss.value, learning_rate=q.learning_rate,
                       max_steps=q.max_epochs * steps_per_epoch, batch_size=batch_size,
                       heldout_fraction=holdout, eval_every=steps_per_epoch,
                       patience=q.patience, checkpoint_every=steps_per_epoch,
                       warmup_steps=min(steps_per_epoch, 100, q.max_epochs * steps_per_epoch - 1),
                       seed=ctx.config.seed)


def train_q(ctx: RunContext) -> None:
    done = ctx.out / SUMMARY_FILE
    if done.exists():
        return
    if ctx.config.q_train.backbone == QBackbone.separate:
        # The policy is not loaded: the separate backbone alone reads the steps.
        result, labels = train_separate_q(ctx, head_output(ctx), train_config)
        write_training_summary(done, result, labels)
        return
    steps, features = load_labelled(ctx.labels_path)
    labels = np.array([s.label for s in steps], np.float32)
    config = head_config(ctx)
    features = labelled_head_inputs(ctx, steps, features)
    head = QHead(config, rngs=nnx.Rngs(ctx.config.seed))
    identity = BackboneIdentity.of_policy(ctx.policy.config)
    with QCheckpointer(ctx.q_dir, identity=identity, head_config=config) as checkpointer:
        result = train_q_model(head, features, labels, train_config(ctx, len(labels)),
                               checkpointer=checkpointer, mesh=ctx.mesh)
    write_training_summary(done, result, labels)


def write_training_summary(path, result, labels: np.ndarray) -> None:
    """The JSON at ``path`` that marks a head's training done (Q̂'s, the PRM's): how it
    went (``result``: the TrainResult) and what it learnt from (``labels``)."""
    if not is_writer():
        return
    # Whole or not at all: it marks the stage done, and an empty one was taken as done.
    summary = {"steps": result.steps, "stopped_early": result.stopped_early,
               "best_heldout_loss": result.best_heldout_loss,
               "constant_heldout_loss": result.constant_heldout_loss,
               "heldout_auc": result.heldout_auc, "examples": len(labels),
               "positive_fraction": float((labels > 0.5).mean())}
    write_text_atomically(path, json.dumps(summary) + "\n")


def load_q_function(ctx: RunContext, problems):
    """Q̂ for search over ``problems``, on the backbone it was trained with."""
    if ctx.config.q_train.backbone == QBackbone.separate:
        return SeparateBackboneQ(ctx, problems)
    head = load_q_head(ctx.q_dir, policy_config=ctx.policy.config, mesh=ctx.mesh)
    return PolicyHiddenQ(QHeadModel(head), second_opinion(ctx, problems))
