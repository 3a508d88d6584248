"""Writing token sequences into cache slots, in length and batch buckets.

Shapes: B rows (a batch bucket), T tokens per row (a length bucket), S slots, M max
cache length, E hidden size.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qstar_jax.decoding.kv_cache import KVCache
from qstar_jax.decoding.weights import DecoderWeights

MIN_PREFILL_BUCKET = 16


def check_token_lists(token_lists: Sequence[Sequence[int]], *, room: Sequence[int],
                      vocab_size: int) -> None:
    """Raise ValueError unless every list is non-empty, fits its row's ``room`` (free
    cache positions) and holds ids in [0, vocab_size)."""
    for row, (tokens, free) in enumerate(zip(token_lists, room, strict=True)):
        if len(tokens) == 0:
            raise ValueError(f"row {row} has no tokens; every prompt needs at least one "
                             "token (e.g. BOS)")
        if len(tokens) > free:
            raise ValueError(f"row {row} has {len(tokens)} tokens but its slot has room for "
                             f"{free}; shorten the prompt or build the decoder with a larger "
                             "max_len")
        ids = np.asarray(tokens)
        if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(f"row {row} holds token ids outside [0, {vocab_size})")


def prefill(graphdef: nnx.GraphDef, weights: DecoderWeights, cache: KVCache,
            tokens: jax.Array, num_tokens: jax.Array, starts: jax.Array,
            slots: jax.Array) -> KVCache:
    """Write ``tokens[b, :num_tokens[b]]`` into slot ``slots[b]`` from position ``starts[b]``.

    tokens: [B, T] int32; num_tokens, starts, slots: [B] int32. A slot of ``S`` marks a
    padding row. Sets each slot's length to ``starts + num_tokens`` and its last_hidden to
    the hidden state of its last written token. weights: the model's, as the decoder
    holds them. Pure: jit it with the cache donated.
    """
    model = nnx.merge(graphdef, weights.model)
    num_slots, max_len = cache.num_slots, cache.max_len
    steps = jnp.arange(tokens.shape[1])
    positions = jnp.where(steps[None, :] < num_tokens[:, None], starts[:, None] + steps, max_len)
    hidden, k, v = model(tokens, positions, jnp.minimum(slots, num_slots - 1), cache.k, cache.v,
                         layers=weights.layers)
    last = jnp.take_along_axis(hidden, jnp.maximum(num_tokens - 1, 0)[:, None, None], axis=1)
    return KVCache(k=k, v=v,
                   lengths=cache.lengths.at[slots].set(starts + num_tokens, mode="drop"),
                   last_hidden=cache.last_hidden.at[slots].set(last[:, 0].astype(jnp.float32),
                                                               mode="drop"))
