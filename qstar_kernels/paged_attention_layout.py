"""Query rows as both Pallas kernels lay them out: one block of rows per (slot, kv head).

Shapes: B slots, T query tokens, H query heads, K kv heads, G = H // K, D head_dim,
R >= T * G rows (row r is query token r // G of query head g = r % G of its kv head).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_rows(q: jax.Array, kv_heads: int, rows: int) -> jax.Array:
    """q [B, T, H, D] -> [B, K, R, D], zero rows appended past T * G."""
    batch, num_queries, heads, head_dim = q.shape
    grouped = q.reshape(batch, num_queries, kv_heads, heads // kv_heads, head_dim)
    flat = grouped.transpose(0, 2, 1, 3, 4).reshape(batch, kv_heads, -1, head_dim)
    return jnp.pad(flat, ((0, 0), (0, 0), (0, rows - flat.shape[2]), (0, 0)))


def from_rows(out: jax.Array, q_shape: tuple[int, ...]) -> jax.Array:
    """[B, K, R, D] -> [B, T, H, D], the padding rows dropped."""
    batch, num_queries, heads, head_dim = q_shape
    kv_heads = out.shape[1]
    flat = out[:, :, :num_queries * (heads // kv_heads)]
    grouped = flat.reshape(batch, kv_heads, num_queries, heads // kv_heads, head_dim)
    return grouped.transpose(0, 2, 1, 3, 4).reshape(q_shape)


def row_positions(length, num_queries: int, group: int, rows: int) -> jax.Array:
    """[R, 1] the position of each row's query token (negative: it sees no key)."""
    return length - num_queries + jax.lax.broadcasted_iota(jnp.int32, (rows, 1), 0) // group


def first_page(length, num_queries: int, page_size: int, window: int | None):
    """The first page any query of the slot can see: pages wholly before the earliest
    query's window are skipped."""
    if window is None:
        return 0
    return jnp.maximum(length - num_queries - window + 1, 0) // page_size
