"""Decode attention over a paged KV cache, in plain ``jnp``: the reference every Pallas
kernel in ``qstar_kernels/`` is tested against, and the path the decoder takes on CPU.

Shapes: B slots (one per row), T query tokens per slot (1 for a decode step, a few for a
trie round or a speculative check), H query heads, K kv heads, G = H // K, D head_dim,
L layers, P pages in the pool, S page size, N page-table entries per slot.

Contract shared by every implementation: slot b holds ``lengths[b]`` tokens, token i in
page ``page_table[b, i // S]`` at offset ``i % S``; its T queries are its last T tokens,
so query t sits at position ``lengths[b] - T + t`` and sees the keys at positions up to
its own (and, with a sliding ``window``, the last ``window`` of them). Page-table entries
past the slot's last page are never read. A query that sees no key (an empty slot, or
``lengths[b] < T``) gets zeros.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_paged_inputs(q, k_pages, v_pages, page_table, lengths) -> None:
    """Raise ValueError naming the first argument whose shape or dtype breaks the contract."""
    if q.ndim != 4:
        raise ValueError(f"q must be [slots, queries, heads, head_dim], got shape {q.shape}")
    if k_pages.ndim != 5 or k_pages.shape != v_pages.shape:
        raise ValueError("k_pages and v_pages must both be [layers, pages, kv_heads, page_size,"
                         f" head_dim], got {k_pages.shape} and {v_pages.shape}")
    batch, _, heads, head_dim = q.shape
    kv_heads = k_pages.shape[2]
    if k_pages.shape[4] != head_dim:
        raise ValueError(f"q's head_dim {head_dim} differs from the pages' {k_pages.shape[4]}")
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} kv heads evenly")
    if page_table.ndim != 2 or page_table.shape[0] != batch \
            or not jnp.issubdtype(page_table.dtype, jnp.integer):
        raise ValueError(f"page_table must be integer [{batch}, pages_per_slot], got "
                         f"{page_table.dtype} {page_table.shape}")
    if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be integer [{batch}], got {lengths.dtype} {lengths.shape}")


def query_positions(lengths: jax.Array, num_queries: int) -> jax.Array:
    """[B] lengths -> [B, T] the position of each query token (negative: sees no key)."""
    return lengths[:, None] - num_queries + jnp.arange(num_queries)[None, :]


def paged_decode_attention_reference(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array,
                                     page_table: jax.Array, lengths: jax.Array,
                                     layer: jax.Array | int, *, window: int | None = None,
                                     scale: float | None = None) -> jax.Array:
    """q: [B, T, H, D]; k_pages, v_pages: [L, P, K, S, D]; page_table: [B, N] int32;
    lengths: [B] int32; layer: the layer whose pages to read. Returns [B, T, H, D] in
    q's dtype, computed in float32. ``scale`` defaults to D ** -0.5."""
    check_paged_inputs(q, k_pages, v_pages, page_table, lengths)
    batch, num_queries, heads, head_dim = q.shape
    kv_heads = k_pages.shape[2]
    scale = head_dim ** -0.5 if scale is None else scale
    f32 = jnp.float32

    def gather(pages):  # [L, P, K, S, D] -> [B, K, N * S, D]
        rows = pages[layer][page_table]  # [B, N, K, S, D]
        return rows.transpose(0, 2, 1, 3, 4).reshape(batch, kv_heads, -1, head_dim).astype(f32)

    keys, values = gather(k_pages), gather(v_pages)
    grouped = q.reshape(batch, num_queries, kv_heads, heads // kv_heads, head_dim).astype(f32)
    scores = jnp.einsum("btkgd,bkmd->btkgm", grouped, keys) * scale
    key_pos = jnp.arange(keys.shape[2])
    q_pos = query_positions(lengths, num_queries)[:, :, None, None, None]
    visible = key_pos <= q_pos
    if window is not None:
        visible &= key_pos > q_pos - window
    scores = jnp.where(visible, scores, -jnp.inf)
    top = jnp.max(scores, axis=-1, keepdims=True)
    weights = jnp.exp(scores - jnp.where(jnp.isfinite(top), top, 0.0))
    total = weights.sum(-1, keepdims=True)
    out = jnp.einsum("btkgm,bkmd->btkgd", weights / jnp.where(total > 0, total, 1.0), values)
    return out.reshape(q.shape).astype(q.dtype)
