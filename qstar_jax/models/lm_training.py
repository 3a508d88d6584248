"""Supervised next-token training of a ``LlamaModel`` from scratch (small synthetic worlds).

Examples are (prompt ids, completion ids); the loss covers the completion only, so the
policy learns to continue prompts, not to write them. The model is split once into
(graphdef, params, rest) and one jitted step updates the params with optax.

Optionally a value head is trained jointly (``ValueRows``): each step also reads a batch
of traces, some with a wrong step in them, whose step ends carry the exact value of the
state there (1 while the trace can still reach the answer, 0 once it cannot), and adds
the head's BCE on them to the loss. The head is thrown away after training; what it
leaves behind is a trunk whose hidden state at a step's end carries whether the trace
has gone wrong, which is what Q̂, a head fitted later on those hidden states, needs.

Given a ``checkpoint_dir``, training saves its state there every
``LMTrainingConfig.checkpoint_every`` steps and after the last (``lm_checkpoint``), and a
run started again resumes from the newest checkpoint that reads back, to the parameters
and log a run never stopped ends with (bit for bit, at the same seed, where the step
computes deterministically, as on CPUs); a checkpoint of other settings or data is not
resumed from: training starts over, with a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from qstar_jax.models.compile_options import training_compiler_options
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.lm_checkpoint import LMCheckpointer, training_fingerprint
from qstar_jax.parallel import replicate, shard_rows


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMTrainingConfig:
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float = 0.01
    seed: int = 0
    value_weight: float = 0.0  # weight of the joint value head's BCE (0: no value head)
    value_batch_size: int = 32
    max_grad_norm: float | None = None  # clip the gradient's global norm to this (None: no clip)
    # Steps between checkpoints, when train_causal_lm is given a checkpoint_dir (it also
    # saves after the last step); resuming under another value gives the same result.
    checkpoint_every: int = 100

    def __post_init__(self):
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1, got {self.checkpoint_every}")


@dataclasses.dataclass(frozen=True)
class ValueRows:
    """Traces for the joint value head: tokens [M, T] (right-padded), targets [M, T] in
    [0, 1] and weights [M, T] (1 at a step's last token, where a target applies)."""

    tokens: np.ndarray
    targets: np.ndarray
    weights: np.ndarray


def pack_value_rows(rows: Sequence[tuple[Sequence[int], Sequence[tuple[int, float]]]],
                    pad_id: int, length: int | None = None) -> ValueRows:
    """``rows``: (token ids, [(position, value target), ...]) -> ``ValueRows`` of
    ``length`` tokens (default: the longest row)."""
    length = length or max(len(ids) for ids, _ in rows)
    tokens = np.full((len(rows), length), pad_id, np.int32)
    targets = np.zeros((len(rows), length), np.float32)
    weights = np.zeros((len(rows), length), np.float32)
    for row, (ids, labelled) in enumerate(rows):
        tokens[row, :len(ids)] = ids
        for position, value in labelled:
            targets[row, position], weights[row, position] = value, 1.0
    return ValueRows(tokens, targets, weights)


class ValueHead(nnx.Module):
    """hidden [..., E] -> a value logit [...]: one GELU layer, then a linear read-out."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(width, width, rngs=rngs)
        self.out = nnx.Linear(width, 1, rngs=rngs)

    def __call__(self, hidden):
        return self.out(jax.nn.gelu(self.hidden(hidden.astype(jnp.float32))))[..., 0]


def pack_examples(examples: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int,
                  length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded token rows [N, T] and a loss mask [N, T] over each row's next-token
    targets that belong to the completion; T = ``length`` or the longest example."""
    length = length or max(len(p) + len(c) for p, c in examples)
    tokens = np.full((len(examples), length), pad_id, np.int32)
    mask = np.zeros((len(examples), length), np.float32)
    for row, (prompt, completion) in enumerate(examples):
        ids = list(prompt) + list(completion)
        tokens[row, :len(ids)] = ids
        # Position t predicts token t + 1: completion tokens sit at len(prompt) onwards.
        mask[row, len(prompt) - 1:len(ids) - 1] = 1.0
    return tokens, mask


def train_causal_lm(model: LlamaModel, tokens: np.ndarray, mask: np.ndarray,
                    config: LMTrainingConfig, *, value_rows: ValueRows | None = None,
                    desc: str = "train policy",
                    mesh: jax.sharding.Mesh | None = None,
                    checkpoint_dir: str | os.PathLike | None = None) -> dict[str, list[float]]:
    """Trains ``model`` in place on packed rows (and, with ``value_rows`` and
    ``config.value_weight`` > 0, a joint value head on them); returns the next-token loss
    every 50 steps (``loss``) and the value head's BCE (``value_loss``, joint only).
    With a ``mesh`` the parameters are replicated and each batch's rows split over its
    ``data`` axis (``parallel.shard_rows``).

    With a ``checkpoint_dir`` the parameters, optimizer state, batch generator and log
    are saved there every ``config.checkpoint_every`` steps and after the last
    (``lm_checkpoint.LMCheckpointer``); a run that finds a checkpoint of the same
    training there resumes from its newest readable step (one line says so; its progress
    bar starts there) and ends as a run never stopped would, bit for bit. A checkpoint
    written for other settings, data or initial model is not resumed from, nor one that
    does not read back: training starts over from step 0, with a warning, and replaces
    it. The caller deletes the folder once it has saved the result. Every process of a
    multi-process run calls this alike."""
    joint = value_rows is not None and config.value_weight > 0
    if joint and value_rows.tokens.shape[1] != tokens.shape[1]:
        raise ValueError(f"value rows are {value_rows.tokens.shape[1]} tokens long and LM rows "
                         f"{tokens.shape[1]}: pack both to one length")
    head = ValueHead(model.config.hidden_size, rngs=nnx.Rngs(config.seed + 1))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    head_def, head_params = nnx.split(head)
    params = {"model": params, "value_head": head_params} if joint else {"model": params}
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, max(config.steps, config.warmup_steps + 1))
    optimizer = optax.adamw(schedule, weight_decay=config.weight_decay)
    if config.max_grad_norm is not None:
        optimizer = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optimizer)
    opt_state = optimizer.init(params)
    fingerprint = None
    if checkpoint_dir is not None:
        data = {"tokens": tokens, "mask": mask}
        if joint:
            data.update(value_tokens=value_rows.tokens, value_targets=value_rows.targets,
                        value_weights=value_rows.weights)
        fingerprint = training_fingerprint(config, model.config, params, data)
    if mesh is not None:  # the optimizer's step counts too, as the step returns them
        params, rest, opt_state = replicate((params, rest, opt_state), mesh)

    def loss_fn(params, batch):
        module = nnx.merge(graphdef, params["model"], rest)
        lm_rows = batch["tokens"].shape[0]
        row_tokens = batch["tokens"]
        if joint:  # one forward pass over both batches
            row_tokens = jnp.concatenate([row_tokens, batch["value_tokens"]])
        hidden = module.forward_sequence(row_tokens)
        logits = module.logits(hidden[:lm_rows])
        losses = optax.softmax_cross_entropy_with_integer_labels(
            logits[:, :-1], batch["tokens"][:, 1:])
        weights = batch["mask"][:, :-1]
        loss = jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)
        value_loss = jnp.zeros(())
        if joint:
            value_logits = nnx.merge(head_def, params["value_head"])(hidden[lm_rows:])
            bce = optax.sigmoid_binary_cross_entropy(value_logits, batch["value_targets"])
            value_weights = batch["value_weights"]
            value_loss = jnp.sum(bce * value_weights) / jnp.maximum(jnp.sum(value_weights), 1.0)
        return loss + config.value_weight * value_loss, (loss, value_loss)

    @functools.partial(jax.jit, compiler_options=training_compiler_options())
    def train_step(params, opt_state, batch):
        batch = shard_rows(batch, mesh)
        (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, parts

    rng = np.random.default_rng(config.seed)
    log: dict[str, list[float]] = {"loss": [], **({"value_loss": []} if joint else {})}
    start = 0
    with contextlib.ExitStack() as stack:  # a checkpointer waits for its last save on exit
        checkpointer = None
        if checkpoint_dir is not None:
            checkpointer = stack.enter_context(
                LMCheckpointer(checkpoint_dir, fingerprint=fingerprint))
            resumed = checkpointer.restore(params=params, opt_state=opt_state)
            if resumed is not None:
                start, params, opt_state = resumed.step, resumed.params, resumed.opt_state
                rng.bit_generator.state = resumed.rng_state
                log = {key: list(resumed.log[key]) for key in log}
                tqdm.write(f"[qstar] {desc}: resuming at step {start} of {config.steps} "
                           f"from {checkpointer.directory}")
        progress = tqdm(range(start, config.steps), desc=desc, mininterval=2.0,
                        initial=start, total=config.steps)
        for step in progress:
            rows = rng.integers(0, len(tokens), config.batch_size)
            batch = {"tokens": tokens[rows], "mask": mask[rows]}
            if joint:
                rows = rng.integers(0, len(value_rows.tokens), config.value_batch_size)
                batch.update(value_tokens=value_rows.tokens[rows],
                             value_targets=value_rows.targets[rows],
                             value_weights=value_rows.weights[rows])
            params, opt_state, loss = train_step(params, opt_state, batch)
            if step % 50 == 0 or step == config.steps - 1:
                log["loss"].append(float(loss[0]))
                if joint:
                    log["value_loss"].append(float(loss[1]))
                progress.set_postfix({k: f"{v[-1]:.3f}" for k, v in log.items()})
            done = step + 1
            if checkpointer is not None and (done % config.checkpoint_every == 0
                                             or done == config.steps):
                checkpointer.save(done, params=params, opt_state=opt_state,
                                  rng_state=rng.bit_generator.state, log=log)
    nnx.update(model, params["model"])
    return log

