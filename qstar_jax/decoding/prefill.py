"""Writing token sequences into cache slots, in length and batch buckets.

Shapes: B rows (a batch bucket), T tokens per row (a length bucket), S slots, M max
cache length, E hidden size.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from qstar_jax.decoding.kv_cache import KVCache
from qstar_jax.decoding.paged_cache import PagedKVCache
from qstar_jax.decoding.weights import DecoderWeights

MIN_PREFILL_BUCKET = 16


def prefill(graphdef: nnx.GraphDef, weights: DecoderWeights, cache: KVCache | PagedKVCache,
            tokens: jax.Array, num_tokens: jax.Array,
            slots: jax.Array) -> KVCache | PagedKVCache:
    """Write ``tokens[b, :num_tokens[b]]`` into slot ``slots[b]`` from position 0.

    tokens: [B, T] int32; num_tokens, slots: [B] int32. A slot of ``S`` marks a padding
    row. Sets each slot's length to ``num_tokens`` and its last_hidden to the hidden state
    of its last written token. weights: the model's, as the decoder holds them. Pure: jit
    it with the cache donated. On a PagedKVCache the slots must own their pages for the
    tokens (``PageTable.reserve``). Attention reads the T positions the rows write, not
    all M: every position a query sees is below T.
    """
    model = nnx.merge(graphdef, weights.model)
    num_slots, max_len = cache.num_slots, cache.max_len
    steps = jnp.arange(tokens.shape[1])
    positions = jnp.where(steps[None, :] < num_tokens[:, None], steps, max_len)
    hidden, k, v = model(tokens, positions, cache.model_rows(jnp.minimum(slots, num_slots - 1)),
                         cache.k, cache.v, layers=weights.layers, key_len=tokens.shape[1])
    last = jnp.take_along_axis(hidden, jnp.maximum(num_tokens - 1, 0)[:, None, None], axis=1)
    return dataclasses.replace(
        cache, k=k, v=v, lengths=cache.lengths.at[slots].set(num_tokens, mode="drop"),
        last_hidden=cache.last_hidden.at[slots].set(last[:, 0].astype(jnp.float32),
                                                    mode="drop"))
