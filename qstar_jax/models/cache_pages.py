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

from qstar_kernels import (paged_decode_attention, resolve_implementation,
                           resolve_rows_implementation)
from qstar_kernels.paged_attention_gpu import paged_decode_attention_gpu_rows, query_rows
from qstar_kernels.qkv_into_pages_gpu import PAIRS, qkv_into_pages_gpu


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
        page, offset = self.targets(positions, pages.shape[3], pages.shape[1])
        # Advanced indices [B, T] around a slice put the result dims first: [B, T, K, D].
        return pages.at[layer, page, :, offset].set(new.astype(pages.dtype), mode="drop")

    def targets(self, positions: jax.Array, page_size: int, num_pages: int):
        """(page, offset) [B, T] of each token at ``positions`` [B, T]: a padding row's
        page is ``num_pages``, past the pool."""
        entries = self.page_table.shape[1]
        entry = positions // page_size
        page = jnp.take_along_axis(self.page_table, jnp.minimum(entry, entries - 1), axis=1)
        return jnp.where(entry < entries, page, num_pages), positions % page_size

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

    def attend_one_token(self, q, cache_k, cache_v, layer, positions, window, scale):
        """The decode step through the paged-attention kernel: q [B, 1, H, D] at positions
        [B, 1] -> [B, 1, H, D], logits scaled by ``scale``. A padding row reads nothing and
        gets zeros."""
        return paged_decode_attention(q, cache_k, cache_v, self.page_table,
                                      self.lengths(positions, cache_k.shape[3],
                                                   cache_k.shape[1]), layer,
                                      window=window, scale=scale,
                                      implementation=self.attention)

    def lengths(self, positions: jax.Array, page_size: int, num_pages: int) -> jax.Array:
        """[B] int32: the tokens each row holds once its decode step at ``positions``
        [B, 1] is written, 0 for a padding row (whose write ``targets`` sends past the
        pool)."""
        page, _ = self.targets(positions, page_size, num_pages)
        return jnp.where(page[:, 0] < num_pages, positions[:, 0] + 1, 0).astype(jnp.int32)

    def fused_qkv_implementation(self, row_kernels: str, tokens: int,
                                 head_dim: int) -> str | None:
        """How a decode step's q/k/v projection, RoPE and cache writes run with row kernels
        ``row_kernels`` on ``tokens`` rows: "pallas_gpu" or "pallas_interpret" where both
        the row kernels and this attention take the GPU's kernels (then as one
        ``qkv_into_pages_gpu`` call, whose programs take a head's rotary pairs
        ``PAIRS`` at a time), None otherwise."""
        rows = resolve_rows_implementation(row_kernels, tokens)
        chosen = resolve_implementation(self.attention)
        fits = head_dim % (2 * PAIRS) == 0
        return rows if rows in ("pallas_gpu", "pallas_interpret") and chosen == rows \
            and fits else None

    def project_write_attend(self, x, norm_weight, eps, qkv_rows, bias, cache_k, cache_v,
                             layer, positions, inv_freq, *, num_heads: int,
                             window: int | None, scale: float, implementation: str):
        """A decode step's attention from the layer's input in two GPU kernels: the
        normed q/k/v rows, RoPE and the key and value written into their pages
        (``qkv_into_pages_gpu``), then the paged attention on the queries as that left
        them. x [B, E] (one token per row) at positions [B, 1] -> (the heads' outputs as
        the attention kernel left them, in its padded rows [B, K * R * D], where a kv
        head's G query heads' outputs are the first G * D of its R * D columns; the
        segments (G * D, R * D), which ``rows_product``'s ``x_segments`` reads them by;
        cache_k, cache_v)."""
        num_pages, page_size = cache_k.shape[1], cache_k.shape[3]
        kv_heads, head_dim = cache_k.shape[2], cache_k.shape[4]
        group = num_heads // kv_heads
        rows = query_rows(1, group)
        page, offset = self.targets(positions, page_size, num_pages)
        lengths = self.lengths(positions, page_size, num_pages)  # 0: a padding row
        interpret = implementation == "pallas_interpret"
        q_rows, cache_k, cache_v = qkv_into_pages_gpu(
            x, norm_weight, qkv_rows, bias, positions[:, 0], page[:, 0], offset[:, 0],
            lengths > 0, cache_k, cache_v, layer, inv_freq, num_heads=num_heads,
            num_kv_heads=kv_heads, query_rows=rows, eps=eps, interpret=interpret)
        out = paged_decode_attention_gpu_rows(
            q_rows, cache_k, cache_v, self.page_table, lengths, layer, num_queries=1,
            group=group, window=window, scale=scale, interpret=interpret)
        return out.reshape(x.shape[0], -1), (group * head_dim, rows * head_dim), cache_k, \
            cache_v
