"""What Q̂ reads of each labelled (s, a): the policy's hidden state at a's last token, and
a's log-probability under the policy.

These are the features Q̂ reads at search time (the decoder's hidden after the step's
final newline, and the sampled step's summed log-probability under the unmodified
distribution), recomputed here with one full-sequence pass per bucket of texts.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qstar_jax.decoding.token_batch import bucket_size, last_positions, pad_token_batch
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.tokenizer import Tokenizer
from qstar_jax.parallel import replicated


class StepFeatures:
    """``last_step_features`` for one model, its jitted pass built once: what scores the
    steps of every search round (``scorers.SecondOpinion``) without tracing again."""

    def __init__(self, model: LlamaModel, tokenizer: Tokenizer, *, batch_size: int = 64):
        self._tokenizer, self._batch_size = tokenizer, batch_size
        self._hidden_size = model.config.hidden_size
        graphdef, self._state = nnx.split(model)

        def forward(state, tokens, last, step_positions, step_targets, in_step):
            module = nnx.merge(graphdef, state)
            hidden = module.forward_sequence(tokens)
            # Logits only where a step's token is predicted ([B, S] positions, S a few dozen),
            # not at every position of every row: the vocabulary projection and its
            # softmax over [B, T, V] cost more than the whole pass otherwise.
            at_steps = jnp.take_along_axis(hidden, step_positions[..., None], axis=1)
            logprobs = jax.nn.log_softmax(module.logits(at_steps), axis=-1)
            token_logprobs = jnp.take_along_axis(logprobs, step_targets[..., None], axis=-1)[..., 0]
            step_logprob = jnp.sum(jnp.where(in_step, token_logprobs, 0.0), axis=1)
            return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0], step_logprob

        # A model restored onto a mesh returns its results replicated, which every process
        # can read whole.
        mesh = getattr(jax.tree.leaves(self._state)[0].sharding, "mesh", None)
        self._forward = jax.jit(forward, out_shardings=None if mesh is None else replicated(mesh))

    def __call__(self, states: Sequence[str], steps: Sequence[str]
                 ) -> tuple[np.ndarray, np.ndarray]:
        tokenizer, batch_size = self._tokenizer, self._batch_size
        state_lengths = [len(tokenizer.encode(s)) for s in states]
        token_lists = [tokenizer.encode(s + a) for s, a in zip(states, steps)]
        hidden_out = np.zeros((len(states), self._hidden_size), np.float32)
        logprob_out = np.zeros(len(states), np.float32)
        # Similar lengths share a bucket.
        order = np.argsort([len(t) for t in token_lists], kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            lists = [token_lists[r] for r in rows]
            # A few texts (a search round's children, a small label set) pad to a few rows.
            padded_rows = min(bucket_size(len(rows), minimum=8), batch_size)
            batch = pad_token_batch(lists, pad_id=tokenizer.pad_id, batch=padded_rows,
                                    length=bucket_size(max(map(len, lists)), minimum=16,
                                                       fine=True))
            hidden, step_logprob = self._forward(
                self._state, batch.tokens, last_positions(batch),
                *_step_predictions(lists, [state_lengths[r] for r in rows], padded_rows))
            hidden_out[rows] = np.asarray(hidden, np.float32)[:len(rows)]
            logprob_out[rows] = np.asarray(step_logprob, np.float32)[:len(rows)]
        return hidden_out, logprob_out


def _step_predictions(token_lists: Sequence[Sequence[int]], state_lengths: Sequence[int],
                      rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each row's step tokens are predicted: [rows, S] int32 positions (the
    token before each step token), int32 the step tokens, and bool which entries are
    real. S is a power of two, so calls share a few compiled shapes."""
    # A step shorter than nothing (its first token merged into the state's last) has none.
    step_lengths = [max(len(t) - n, 0) for t, n in zip(token_lists, state_lengths)]
    width = bucket_size(max(step_lengths), minimum=8)
    positions = np.zeros((rows, width), np.int32)
    targets = np.zeros((rows, width), np.int32)
    in_step = np.zeros((rows, width), bool)
    for row, (tokens, start, n) in enumerate(zip(token_lists, state_lengths, step_lengths)):
        positions[row, :n] = np.arange(start - 1, start - 1 + n)
        targets[row, :n] = tokens[start:]
        in_step[row, :n] = True
    return positions, targets, in_step


def last_step_features(model: LlamaModel, tokenizer: Tokenizer, states: Sequence[str],
                       steps: Sequence[str], *, batch_size: int = 64
                       ) -> tuple[np.ndarray, np.ndarray]:
    """For each text ``states[i] + steps[i]``: float32 [N, E], the final-norm hidden state
    at its last token, and float32 [N], the summed log-probability of the step's tokens
    after the state's (the state is tokenized alone, so a step starts on a token
    boundary, as it does when the decoder samples it)."""
    return StepFeatures(model, tokenizer, batch_size=batch_size)(states, steps)
