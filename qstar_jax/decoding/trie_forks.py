"""How a trie round gives each row that splits off its parent's cache
(``trie_sampler``).

On the slot pool the new row's slot gets a copy of the parent's row, positions below the
call's window alone. On a paged cache the new row forks the parent's page table: the full
pages below the split are shared (no row writes below its own position), the partly
filled page at the split is copied into a page the host lent (copy on write), and every
later page a row writes in is taken from the lent pages when it first writes there, so
a step holds the pages its tokens fill. Copies run in chunks of ``FORK_CHUNK`` pairs, a
loop of as many chunks as the round split rows.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from qstar_jax.decoding.paged_cache import copied_pages
from qstar_jax.models.cache_pages import PagedRows

FORK_CHUNK = 16  # cache copies per inner iteration: rounds rarely split more rows


@struct.dataclass
class TriePages:
    """A paged cache's rows while a trie is sampled: their page tables and the lent pages
    that splits take (N page-table entries per row, P pages, F lent-page capacity)."""

    rows: PagedRows        # page_table [R, N] int32: each row's pages (P: none), as the
                           # model call addresses them
    lent: jax.Array        # [F] int32 the pages the host lent, in the order splits take
                           # them (P past the loan)
    taken: jax.Array       # [] int32 lent pages taken so far


def copy_caches(k, v, children, parents, num_new, window):
    """k/v of slot ``parents[i]`` into slot ``children[i]`` for i < num_new, positions
    below ``window`` (static) only."""
    return _copy_in_chunks(
        k, v, parents, children, num_new,
        lambda x, parent, child: x.at[:, child, :, :window].set(x[:, parent, :, :window],
                                                                mode="drop"))


def _copy_in_chunks(k, v, sources, targets, num_new, copy):
    """``copy(array, sources, targets)`` of k and v for the first ``num_new`` pairs, in
    chunks of FORK_CHUNK (the index arrays are padded to whole chunks)."""
    def copy_chunk(i, kv):
        source = jax.lax.dynamic_slice(sources, (i * FORK_CHUNK,), (FORK_CHUNK,))
        target = jax.lax.dynamic_slice(targets, (i * FORK_CHUNK,), (FORK_CHUNK,))
        return tuple(copy(x, source, target) for x in kv)

    chunks = (num_new + FORK_CHUNK - 1) // FORK_CHUNK
    return jax.lax.fori_loop(0, chunks, copy_chunk, (k, v))


def fork_pages(k: jax.Array, v: jax.Array, pages: TriePages, positions: jax.Array,
               children: jax.Array, parents: jax.Array, num_new: jax.Array
               ) -> tuple[jax.Array, jax.Array, TriePages]:
    """The paged splits of one round: row ``children[i]`` (R: none; the real ones first,
    ``num_new`` of them) forks row ``parents[i]`` at the parent's position. The child's
    table takes the parent's entries below that position's page; the parent's partly
    filled page there, if any, is copied into a lent page of the child's (copy on write:
    the parent goes on writing its own). The child's later pages are taken as it reaches
    them (``pages_for_writes``). positions: [R] int32 each row's next write. Returns (k,
    v, pages)."""
    table = pages.rows.page_table
    num_pages, page_size = k.shape[1], k.shape[3]
    forks = children < table.shape[0]
    position = positions[parents]
    first = position // page_size  # the first entry the child writes
    partial = forks & (position % page_size != 0)
    own, pages = _take_lent(pages, partial, num_pages)  # no page where not partial
    entries = jnp.arange(table.shape[1])[None, :]
    parent_tables = table[parents]
    child_tables = jnp.where(entries < first[:, None], parent_tables,
                             jnp.where(entries == first[:, None], own[:, None], num_pages))
    sources = jnp.take_along_axis(parent_tables, first[:, None], axis=1, mode="clip")[:, 0]
    k, v = _copy_pages(k, v, jnp.where(partial, sources, num_pages), own, num_new)
    pages = pages.replace(rows=dataclasses.replace(
        pages.rows, page_table=table.at[children].set(child_tables, mode="drop")))
    return k, v, pages


def _take_lent(pages: TriePages, takes: jax.Array, no_page: int
               ) -> tuple[jax.Array, TriePages]:
    """The next lent page for each row of ``takes`` [n] bool, in row order (``no_page``
    for the others, and past the loan), and the pages with them taken."""
    need = takes.astype(jnp.int32)
    offsets = pages.taken + jnp.cumsum(need) - need
    taken = jnp.take(pages.lent, offsets, mode="fill", fill_value=no_page)
    return (jnp.where(takes, taken, no_page),
            pages.replace(taken=pages.taken + jnp.sum(need)))


def pages_for_writes(pages: TriePages, positions: jax.Array, no_page: int,
                      page_size: int) -> TriePages:
    """Each row writing at ``positions`` [R] (M or more: no write) in a page its table
    lacks takes the next lent page there: a row's pages beyond the one it starts in are
    taken as it reaches them, so a step that ends early holds no pages past its end."""
    table = pages.rows.page_table
    entry = jnp.minimum(positions // page_size, table.shape[1] - 1)
    current = jnp.take_along_axis(table, entry[:, None], axis=1)[:, 0]
    lacking = (positions < table.shape[1] * page_size) & (current == no_page)
    page, pages = _take_lent(pages, lacking, no_page)
    rows = jnp.arange(table.shape[0])
    return pages.replace(rows=dataclasses.replace(
        pages.rows, page_table=table.at[rows, entry].set(jnp.where(lacking, page, current))))


def _copy_pages(k, v, sources, targets, num_new):
    """k/v page ``sources[i]`` into page ``targets[i]`` (P: none) for i < num_new. No
    target is a source: targets are freshly lent pages."""
    return _copy_in_chunks(k, v, sources, targets, num_new, copied_pages)
