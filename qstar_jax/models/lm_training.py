"""Supervised next-token training of a ``LlamaModel`` from scratch (small synthetic worlds).

Examples are (prompt ids, completion ids); the loss covers the completion only, so the
policy learns to continue prompts, not to write them. The model is split once into
(graphdef, params, rest) and one jitted step updates the params with optax.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from qstar_jax.models.compile_options import training_compiler_options
from qstar_jax.models.llama import LlamaModel


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMTrainingConfig:
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float = 0.01
    seed: int = 0


def pack_examples(examples: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded token rows [N, T] and a loss mask [N, T] over each row's next-token
    targets that belong to the completion."""
    length = max(len(p) + len(c) for p, c in examples)
    tokens = np.full((len(examples), length), pad_id, np.int32)
    mask = np.zeros((len(examples), length), np.float32)
    for row, (prompt, completion) in enumerate(examples):
        ids = list(prompt) + list(completion)
        tokens[row, :len(ids)] = ids
        # Position t predicts token t + 1: completion tokens sit at len(prompt) onwards.
        mask[row, len(prompt) - 1:len(ids) - 1] = 1.0
    return tokens, mask


def train_causal_lm(model: LlamaModel, tokens: np.ndarray, mask: np.ndarray,
                    config: LMTrainingConfig, *, desc: str = "train policy") -> list[float]:
    """Trains ``model`` in place on packed rows; returns the loss every 50 steps."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, max(config.steps, config.warmup_steps + 1))
    optimizer = optax.adamw(schedule, weight_decay=config.weight_decay)
    opt_state = optimizer.init(params)

    def loss_fn(params, batch_tokens, batch_mask):
        module = nnx.merge(graphdef, params, rest)
        logits = module.logits(module.forward_sequence(batch_tokens))
        losses = optax.softmax_cross_entropy_with_integer_labels(
            logits[:, :-1], batch_tokens[:, 1:])
        weights = batch_mask[:, :-1]
        return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)

    @functools.partial(jax.jit, compiler_options=training_compiler_options())
    def train_step(params, opt_state, batch_tokens, batch_mask):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch_tokens, batch_mask)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(config.seed)
    losses = []
    progress = tqdm(range(config.steps), desc=desc, mininterval=2.0)
    for step in progress:
        rows = rng.integers(0, len(tokens), config.batch_size)
        params, opt_state, loss = train_step(params, opt_state, tokens[rows], mask[rows])
        if step % 50 == 0 or step == config.steps - 1:
            losses.append(float(loss))
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
    nnx.update(model, params)
    return losses
