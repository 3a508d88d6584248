"""Decode attention for rows that share a prefix, read once per group (cascade attention).

Shapes: R rows, one query token each; G groups; C the most rows of one group; H query
heads, K kv heads, g = H // K; D head_dim; W the prefix window, Ws the suffix window;
L layers.

A trie round (``decoding.trie_sampler``) feeds rows whose sequences are their group's
prefix (the node the trie expands: positions below ``starts``) followed by each row's
own step. Attending over each row's whole window reads the group's prefix keys once per
row, and on CPU that read dominated a round (``experiments/cascade_attention.py``). Here
each group's prefix keys are read once, from one row that holds them, and all of the
group's queries meet them in one matrix product; each row's own keys (positions from its
start, at most ``Ws`` of them) are read apart; the two partial softmaxes are merged
exactly by log-sum-exp, as FlashInfer's and Hydragen's cascade attention does.

The rows are addressed as the cache holds them: slot ids on the slot pool, or
``PagedRows`` on a paged cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from qstar_jax.models.cache_pages import PagedRows


@struct.dataclass
class SharedPrefixRows:
    """rows: the R rows (slot ids [R] int32 or PagedRows); prefix_rows: each group's
    row holding its prefix, addressed the same way ([G]); prefix_len: [G] int32, the
    prefix's tokens (positions below it); members: [G, C] int32, each group's rows (R:
    none); row_group, row_member: [R] int32, where each row sits in ``members`` (a row
    outside it gets some group's prefix: its output is not read); prefix_window: W,
    static, above every prefix_len; suffix_window: Ws, static, above every row's
    position minus its group's prefix_len."""

    rows: jax.Array | PagedRows
    prefix_rows: jax.Array | PagedRows
    prefix_len: jax.Array
    members: jax.Array
    row_group: jax.Array
    row_member: jax.Array
    prefix_window: int = struct.field(pytree_node=False)
    suffix_window: int = struct.field(pytree_node=False)

    def write(self, cache, layer, new: jax.Array, positions: jax.Array) -> jax.Array:
        """The rows' new keys or values [R, 1, K, D] written at positions [R, 1]."""
        if isinstance(self.rows, PagedRows):
            return self.rows.write(cache, layer, new, positions)
        return write_slot_rows(cache, layer, self.rows, new, positions)

    def attend_one_token(self, q: jax.Array, cache_k, cache_v, layer,
                         positions: jax.Array, scale: float) -> jax.Array:
        """q [R, 1, H, D] at positions [R, 1] (written already) -> [R, 1, H, D], each
        row attending to its group's prefix and its own keys up to its position, logits
        scaled by ``scale``."""
        rows, _, heads, head_dim = q.shape
        kv_heads = cache_k.shape[2]
        f32 = jnp.float32
        qg = q[:, 0].reshape(rows, kv_heads, heads // kv_heads, head_dim).astype(f32)

        # The prefix: each group's keys once, all its rows' queries against them.
        prefix_k = self._prefix_keys(cache_k, layer).astype(f32)  # [G, K, W, D]
        prefix_v = self._prefix_keys(cache_v, layer).astype(f32)
        padded = jnp.concatenate([qg, jnp.zeros_like(qg[:1])])  # row R: no row
        q_groups = padded[self.members]  # [G, C, K, g, D]
        scores = jnp.einsum("gckhd,gkpd->gckhp", q_groups, prefix_k) * scale
        visible = jnp.arange(prefix_k.shape[2]) < self.prefix_len[:, None, None, None, None]
        top_p, sum_p, out_p = _partial_softmax(
            jnp.where(visible, scores, -jnp.inf),
            lambda w: jnp.einsum("gckhp,gkpd->gckhd", w, prefix_v))
        where = (self.row_group, jnp.minimum(self.row_member, self.members.shape[1] - 1))
        top_p, sum_p, out_p = top_p[where], sum_p[where], out_p[where]  # [R, K, g, ...]

        # Each row's own keys, from its group's prefix length to its position.
        starts = self.prefix_len[self.row_group]
        own_k, own_pos = self._own_keys(cache_k, layer, starts)  # [R, K, Ws', D], [R, Ws']
        own_v, _ = self._own_keys(cache_v, layer, starts)
        scores = (qg[:, :, :, None, :] * own_k.astype(f32)[:, :, None]).sum(-1) * scale
        visible = (own_pos >= starts[:, None]) & (own_pos <= positions)  # [R, Ws']
        top_s, sum_s, out_s = _partial_softmax(
            jnp.where(visible[:, None, None], scores, -jnp.inf),
            lambda w: (w[..., None] * own_v.astype(f32)[:, :, None]).sum(-2))

        top = jnp.maximum(top_p, top_s)
        weight_p, weight_s = jnp.exp(top_p - top), jnp.exp(top_s - top)
        total = weight_p * sum_p + weight_s * sum_s
        out = (weight_p * out_p + weight_s * out_s) / jnp.where(total > 0, total, 1.0)
        return out.reshape(rows, 1, heads, head_dim).astype(q.dtype)

    def _prefix_keys(self, cache, layer) -> jax.Array:
        """[G, K, W', D] the groups' prefix rows' first W' >= W positions."""
        if isinstance(self.prefix_rows, PagedRows):
            return self.prefix_rows.gather(cache, layer, self.prefix_window)
        window = min(self.prefix_window, cache.shape[3])
        return cache[layer, self.prefix_rows, :, :window]

    def _own_keys(self, cache, layer, starts: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Each row's keys from its start on, [R, K, Ws', D], and their positions
        [R, Ws'] (Ws' >= Ws: on pages, the whole pages from the start's on)."""
        if isinstance(self.rows, PagedRows):
            table = self.rows.page_table
            page_size = cache.shape[3]
            count = -(-self.suffix_window // page_size) + 1
            entries = starts[:, None] // page_size + jnp.arange(count)  # [R, n]
            pages = jnp.take_along_axis(table, jnp.minimum(entries, table.shape[1] - 1), axis=1)
            rows = cache[layer][pages]  # [R, n, K, S, D]
            batch, _, kv_heads, _, head_dim = rows.shape
            keys = rows.transpose(0, 2, 1, 3, 4).reshape(batch, kv_heads, -1, head_dim)
            return keys, (entries[:, :1] * page_size + jnp.arange(count * page_size))
        window = min(self.suffix_window, cache.shape[3])
        begin = jnp.minimum(starts, cache.shape[3] - window)
        keys = jax.vmap(lambda slot, at: jax.lax.dynamic_slice_in_dim(
            cache[layer, slot], at, window, axis=1))(self.rows, begin)  # [R, K, Ws, D]
        return keys, begin[:, None] + jnp.arange(window)


def write_slot_rows(cache: jax.Array, layer, slots: jax.Array, new: jax.Array,
                    positions: jax.Array) -> jax.Array:
    """cache [L, S, K, M, D] with ``new`` [B, T, K, D] written into slot ``slots[b]`` at
    ``positions`` [B, T] (a position of M or more: dropped)."""
    row_slots = jnp.broadcast_to(slots[:, None], positions.shape)
    # Advanced indices [B, T] around a slice put the result dims first: [B, T, K, D].
    return cache.at[layer, row_slots, :, positions].set(new.astype(cache.dtype), mode="drop")


def _partial_softmax(scores: jax.Array, weighted_values):
    """(max [..., 1], sum of exponentials [..., 1], unnormalised output) of masked
    scores over their last axis, the sum and output taken against the max; a fully
    masked row gives (-inf, 0, 0), which the merge weighs 0."""
    top = jnp.max(scores, axis=-1, keepdims=True)
    weights = jnp.exp(scores - jnp.where(jnp.isfinite(top), top, 0.0))
    return top, weights.sum(-1, keepdims=True), weighted_values(weights)
