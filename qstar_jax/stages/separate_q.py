"""Train Q̂ on a separate, trainable backbone: a loadable model plus the Q̂ head, reading
the text of (question ⊕ steps ⊕ candidate step) instead of the policy's hidden state.
Search scores with it through ``qvalue.scorers.SeparateBackboneQ``."""

from __future__ import annotations

from typing import Callable

import numpy as np
from flax import nnx

from qstar_jax.decoding.token_batch import pad_token_batch
from qstar_jax.qvalue.backbone import BackboneQ, backbone_update_mask
from qstar_jax.qvalue.checkpoint import BackboneIdentity, QCheckpointer
from qstar_jax.qvalue.dataset import load_labelled
from qstar_jax.qvalue.head import QHeadConfig
from qstar_jax.qvalue.train import TrainConfig, TrainResult, train_q_model
from qstar_jax.stages.context import RunContext
from qstar_jax.tasks.base import state_text


def train_separate_q(ctx: RunContext, output: str,
                     make_train_config: Callable[[RunContext, int], TrainConfig]
                     ) -> tuple[TrainResult, np.ndarray]:
    """Fit backbone and head on the labelled texts (``output``: the head's squashing;
    ``make_train_config(ctx, examples)``: the optimiser settings, shared with the head-only
    path). Returns the training result and the labels it fitted."""
    q = ctx.config.q_train
    loaded = ctx.load(q.separate_model)
    config = QHeadConfig(hidden_size=loaded.config.hidden_size,
                         mlp_widths=(loaded.config.hidden_size,) * q.hidden_layers,
                         output=output)
    model = BackboneQ(loaded.config, config, rngs=nnx.Rngs(ctx.config.seed))
    nnx.update(model.backbone, nnx.state(loaded.model))  # start from the pretrained weights
    steps, _ = load_labelled(ctx.labels_path)
    problems = ctx.train_problems()
    prompts = ctx.prompts(problems)
    tokens = [loaded.tokenizer.encode_input(state_text(prompts[s.problem_index],
                                                 (*s.prefix_steps, s.step_text))) for s in steps]
    labels = np.array([s.label for s in steps], np.float32)
    mask = backbone_update_mask(model, None if q.trainable_layers < 0 else q.trainable_layers)
    identity = BackboneIdentity.of_separate_backbone(loaded.config)
    with QCheckpointer(ctx.q_dir, identity=identity, head_config=config) as checkpointer:
        # One static shape for all of training, rounded to a multiple of 16 rather than a
        # power of two, which could nearly double every step's work.
        batch = pad_token_batch(tokens, pad_id=loaded.tokenizer.pad_id, multiple_of=16)
        result = train_q_model(model, batch, labels, make_train_config(ctx, len(labels)),
                               update_mask=mask, checkpointer=checkpointer, mesh=ctx.mesh)
    return result, labels
