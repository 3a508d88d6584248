"""How a model call addresses a paged KV cache: each row's page table instead of a slot.

Shapes: B rows, T new tokens per row, L layers, P pages, K kv heads, S page size,
D head_dim, N page-table entries per row (N * S = the longest a row can grow), H query
heads.

Row b's token at position p lives in page ``page_table[b, p // S]`` at offset ``p % S``.
A position of N * S or more is padding, as with the slot pool: its write is dropped.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from qstar_kernels import paged_decode_attention, resolve_implementation


@functools.partial(jax.tree_util.register_dataclass, data_fields=["page_table"],
                   meta_fields=["attention"])
@dataclasses.dataclass(frozen=True, kw_only=True)
class PagedRows:
    """page_table: [B, N] int32 page ids; ``attention``: the decode-step attention,
    "auto" (a Pallas kernel on GPU/TPU, the model's own jnp attention on CPU), "pallas"
    or "jnp" (see ``qstar_kernels.paged_attention``)."""

    page_table: jax.Array
    attention: str = "auto"

    def write(self, pages: jax.Array, layer, new: jax.Array, positions: jax.Array) -> jax.Array:
        """pages: [L, P, K, S, D]; new: [B, T, K, D] at positions [B, T] -> pages."""
        page_size = pages.shape[3]
        entries = self.page_table.shape[1]
        entry = positions // page_size
        page = jnp.take_along_axis(self.page_table, jnp.minimum(entry, entries - 1), axis=1)
        page = jnp.where(entry < entries, page, pages.shape[1])  # padding: dropped
        # Advanced indices [B, T] around a slice put the result dims first: [B, T, K, D].
        return pages.at[layer, page, :, positions % page_size].set(new.astype(pages.dtype),
                                                                 mode="drop")

    def gather(self, pages: jax.Array, layer, key_len: int | None = None) -> jax.Array:
        """Each row's keys or values in position order: [B, K, N * S, D], or with a static
        ``key_len`` only the pages that hold positions below it: [B, K, n * S, D] with
        n = cdiv(key_len, S)."""
        table = self.page_table
        if key_len is not None:
            table = table[:, :-(-key_len // pages.shape[3])]
        rows = pages[layer][table]  # [B, n, K, S, D]
        batch, entries, kv_heads, page_size, head_dim = rows.shape
        return rows.transpose(0, 2, 1, 3, 4).reshape(batch, kv_heads, entries * page_size,
                                                       head_dim)

    def uses_kernel(self) -> bool:
        return resolve_implementation(self.attention) != "jnp"

    def attend_one_token(self, q, cache_k, cache_v, layer, positions, window):
        """The decode step through the paged-attention kernel: q [B, 1, H, D] at positions
        [B, 1] -> [B, 1, H, D]. A padding row reads nothing and gets zeros."""
        entries = self.page_table.shape[1]
        page_size = cache_k.shape[3]
        lengths = jnp.where(positions[:, 0] < entries * page_size, positions[:, 0] + 1, 0)
        return paged_decode_attention(q, cache_k, cache_v, self.page_table,
                                      lengths.astype(jnp.int32), layer, window=window,
                                      implementation=self.attention)
