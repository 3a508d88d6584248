"""A paged KV cache whose forks share pages: a tree's cache costs its distinct tokens.

Shapes: L layers, P pages, K kv heads, S page size, D head_dim, E hidden size, N pages
per slot (N * S = max_len), n copies.

The device holds the pages and, per slot, its page table, length and last hidden state
(``PagedKVCache``); the host holds each slot's page table and every page's reference
count (``page_table.PageTable``), and gives the device calls their tables. A fork
copies the parent's table and bumps the counts; on the device only the parent's length
and last hidden state are copied to the child (``fork_slot_state``). A page shared with
another slot is copied (``copy_pages``) before a write that keeps its tokens, so a write
never changes a sibling's tokens.

On a mesh the pages split over the ``data`` axis as the slots do: each shard's devices
hold ``P / shards`` pages (``paged_cache_shardings``), and a device call addresses a page
by its index within the shard.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from qstar_jax.decoding.kv_cache import cache_shardings
from qstar_jax.models.cache_pages import PagedRows
from qstar_jax.models.config import ModelConfig
from qstar_kernels import resolve_implementation
from qstar_kernels.paged_attention_gpu import gpu_kernel_refusal


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["k", "v", "page_table", "lengths", "last_hidden"],
                   meta_fields=["attention"])
@dataclasses.dataclass(frozen=True, kw_only=True)
class PagedKVCache:
    """k, v: [L, P, K, S, D]; page_table: [slots, N] int32, the device copy of
    ``PageTable.table``; lengths: [slots] int32; last_hidden: [slots, E] float32.
    attention: the decode step's attention ("auto", "pallas" or "jnp"; PagedRows)."""

    k: jax.Array
    v: jax.Array
    page_table: jax.Array
    lengths: jax.Array
    last_hidden: jax.Array
    attention: str = "auto"

    @property
    def num_slots(self) -> int:
        return self.lengths.shape[0]

    @property
    def max_len(self) -> int:
        return self.page_table.shape[1] * self.k.shape[3]

    def model_rows(self, slots: jax.Array) -> PagedRows:
        """What the model's forward call takes to address the rows of ``slots`` [B]."""
        return PagedRows(page_table=self.page_table[slots], attention=self.attention)


def init_paged_cache(cfg: ModelConfig, *, slots: int, pages: int, page_size: int,
                     max_len: int, dtype=jnp.float32, attention: str = "auto") -> PagedKVCache:
    """An empty cache of ``pages`` pages for ``slots`` slots of up to ``max_len`` tokens
    (a multiple of ``page_size``)."""
    if min(slots, pages, page_size, max_len) < 1 or max_len % page_size:
        raise ValueError(f"a paged cache needs slots, pages, page_size >= 1 and a max_len "
                         f"that is a multiple of page_size, got {slots=} {pages=} "
                         f"{page_size=} {max_len=}")
    shape = (cfg.num_layers, pages, cfg.num_kv_heads, page_size, cfg.head_dim)
    return PagedKVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                        page_table=jnp.full((slots, max_len // page_size), pages, jnp.int32),
                        lengths=jnp.zeros((slots,), jnp.int32),
                        last_hidden=jnp.zeros((slots, cfg.hidden_size), jnp.float32),
                        attention=attention)


def copied_pages(pages: jax.Array, sources: jax.Array, targets: jax.Array) -> jax.Array:
    """pages [L, P, ...] with page ``sources[i]`` copied to ``targets[i]`` in every layer;
    [n] int32, a target of P is padding. All sources are read before any target is
    written."""
    return pages.at[:, targets].set(jnp.take(pages, sources, axis=1, mode="clip"),
                                    mode="drop")


@functools.partial(jax.jit, donate_argnums=0)
def copy_pages(cache: PagedKVCache, sources: jax.Array, targets: jax.Array) -> PagedKVCache:
    """``copied_pages`` of the cache's keys and values."""
    return dataclasses.replace(cache, k=copied_pages(cache.k, sources, targets),
                               v=copied_pages(cache.v, sources, targets))


@functools.partial(jax.jit, donate_argnums=0)
def fork_slot_state(cache: PagedKVCache, parents: jax.Array,
                    children: jax.Array) -> PagedKVCache:
    """The per-slot half of a fork: each child takes its parent's length and last hidden
    state. [n] int32; a child equal to the slot count is padding."""
    return dataclasses.replace(
        cache, lengths=cache.lengths.at[children].set(cache.lengths[parents], mode="drop"),
        last_hidden=cache.last_hidden.at[children].set(cache.last_hidden[parents],
                                                       mode="drop"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Paging:
    """A decoder's paged cache: ``num_pages`` pages of ``page_size`` tokens; ``attention``
    picks the decode step's attention ("auto": the Pallas kernel on GPU/TPU, jnp on CPU;
    "pallas" or "jnp" to force one)."""

    page_size: int = 16
    num_pages: int
    attention: str = "auto"

    def uses_kernel(self) -> bool:
        """Whether the decode step attends through the paged-attention kernel here (not
        the model's jnp attention: "auto" on a CPU)."""
        return resolve_implementation(self.attention) != "jnp"

    def for_heads(self, head_dim: int) -> Paging:
        """This paging as a decoder of ``head_dim``-wide heads runs it: where the decode
        step would take the compiled GPU kernel and the kernel cannot read these pages or
        heads, "auto" takes the jnp attention instead and "pallas" is a ValueError saying
        why (before anything compiles, where the kernel met it at the first step)."""
        if resolve_implementation(self.attention) != "pallas_gpu":
            return self
        refusal = gpu_kernel_refusal(self.page_size, head_dim)
        if refusal is None:
            return self
        if self.attention == "pallas":
            raise ValueError(f"Paging(attention='pallas') with {self.page_size}-token pages "
                             f"and heads of {head_dim}: {refusal}")
        return dataclasses.replace(self, attention="jnp")


def paged_cache_shardings(mesh: Mesh, rules, paging: Paging) -> PagedKVCache:
    """A PagedKVCache of NamedShardings: its pages and slots on the rules' ``slots`` mesh
    axis (each data shard holds its slots and the pages they use), kv heads on
    ``kv_heads``, as ``kv_cache.cache_shardings`` lays out a slot pool."""
    rows = cache_shardings(mesh, rules)
    return PagedKVCache(k=rows.k, v=rows.v,
                        page_table=NamedSharding(mesh, rules.spec("slots", None)),
                        lengths=rows.lengths, last_hidden=rows.last_hidden,
                        attention=paging.attention)
