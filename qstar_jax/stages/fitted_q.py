"""Fitted Q-iteration labels with the Q̂ head itself as the per-round function fit."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from flax import nnx

from qstar_jax.config import Loss
from qstar_jax.qvalue.dataset import LabelledStep, StepPair
from qstar_jax.qvalue.head import QHead, QHeadConfig, QHeadModel
from qstar_jax.qvalue.labels_fqi import FittedQConfig, fitted_q_iteration_labels
from qstar_jax.qvalue.train import train_q_model
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.train_q import train_config


def fitted_q_labels(ctx: RunContext, pairs: Sequence[StepPair],
                    features: np.ndarray) -> list[LabelledStep]:
    """``features`` [len(pairs), E]: the policy hidden state of each pair's step."""
    row = {p.key: k for k, p in enumerate(pairs)}
    q = ctx.config.q_train
    config = QHeadConfig(hidden_size=features.shape[1],
                         mlp_widths=(features.shape[1],) * q.hidden_layers, output="raw")

    def fit(fit_pairs: Sequence[StepPair], targets: np.ndarray):
        head = QHead(config, rngs=nnx.Rngs(ctx.config.seed))
        rows = np.array([row[p.key] for p in fit_pairs])
        settings = dataclasses.replace(train_config(ctx, len(rows)), loss=Loss.mse.value)
        train_q_model(head, features[rows], np.asarray(targets, np.float32), settings,
                      progress=False, mesh=ctx.mesh)
        model = QHeadModel(head)
        # Rewards are 0 or 1 and γ <= 1, so every true Q lies in [0, 1]; the raw MSE head
        # overshoots both ways, and a value outside would become a label that BCE
        # training rejects (and compound over rounds).
        return lambda candidates: np.clip(
            model.score_hidden(features[[row[c.key] for c in candidates]]), 0.0, 1.0)

    steps, _ = fitted_q_iteration_labels(pairs, fit, FittedQConfig(
        rounds=ctx.config.label.rounds, discount=ctx.config.label.gamma))
    return steps
