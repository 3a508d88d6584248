"""The policy's hidden state at the last token of a step, for every labelled (s, a).

These are the features Q̂ reads at search time (the decoder's hidden after the step's
final newline), recomputed here with one full-sequence pass per bucket of texts.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qstar_jax.decoding.token_batch import last_positions, pad_token_batch
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.tokenizer import Tokenizer


def last_token_hidden(model: LlamaModel, tokenizer: Tokenizer, texts: Sequence[str], *,
                      batch_size: int = 64) -> np.ndarray:
    """float32 [len(texts), E]: the final-norm hidden state at each text's last token."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, tokens, last):
        hidden = nnx.merge(graphdef, state).forward_sequence(tokens)
        return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]

    token_lists = [tokenizer.encode(t) for t in texts]
    out = np.zeros((len(texts), model.config.hidden_size), np.float32)
    order = np.argsort([len(t) for t in token_lists], kind="stable")  # similar lengths share a bucket
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = pad_token_batch([token_lists[r] for r in rows], pad_id=tokenizer.pad_id,
                                batch=batch_size, min_length=16)
        out[rows] = np.asarray(forward(state, batch.tokens, last_positions(batch)),
                               np.float32)[:len(rows)]
    return out
