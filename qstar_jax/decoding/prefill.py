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
            tokens: jax.Array, num_tokens: jax.Array, starts: jax.Array, slots: jax.Array,
            key_len: int) -> KVCache | PagedKVCache:
    """Write ``tokens[b, :num_tokens[b]]`` into slot ``slots[b]`` from position
    ``starts[b]``: the slot's first ``starts[b]`` tokens stay and are attended to (a
    prompt continuing a prefix the slot already holds), what lay past them is replaced.

    tokens: [B, T] int32; num_tokens, starts, slots: [B] int32. A slot of ``S`` marks a
    padding row. Sets each slot's length to ``starts + num_tokens`` and its last_hidden to
    the hidden state of its last written token. weights: the model's, as the decoder holds
    them. key_len (static): attention reads cache positions [0, key_len) only, so it must
    exceed every row's ``starts + num_tokens - 1`` (T when every start is 0). Pure: jit it
    with the cache donated. On a PagedKVCache the slots must own their pages for the new
    tokens (``PageTable.reserve``).

    The layers are read as ``DecoderWeights.prefill_layer_arguments`` says: a scan over
    the stacked weights on a CPU, where a prefill call's products dwarf the scan's
    per-layer weight copies and the scan compiles in a fraction of an unrolled stack's
    time (every row and length bucket is a compiled variant); the decoder's per-layer
    copy on a GPU, where those copies cost more than a short prompt's products.
    """
    model = nnx.merge(graphdef, weights.model)
    num_slots, max_len = cache.num_slots, cache.max_len
    steps = jnp.arange(tokens.shape[1])
    positions = jnp.where(steps[None, :] < num_tokens[:, None], starts[:, None] + steps,
                          max_len)
    hidden, k, v = model(tokens, positions, cache.model_rows(jnp.minimum(slots, num_slots - 1)),
                         cache.k, cache.v, key_len=key_len,
                         **weights.prefill_layer_arguments())
    last = jnp.take_along_axis(hidden, jnp.maximum(num_tokens - 1, 0)[:, None, None], axis=1)
    return dataclasses.replace(
        cache, k=k, v=v, lengths=cache.lengths.at[slots].set(starts + num_tokens, mode="drop"),
        last_hidden=cache.last_hidden.at[slots].set(last[:, 0].astype(jnp.float32),
                                                    mode="drop"))
