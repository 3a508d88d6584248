"""The host-side page bookkeeping the decoder does around its calls on a paged cache.

Shapes: P pages, G trie groups.

Before a call writes, its slots get pages of their own up to where the call may write
(``own_pages``; a trie is also lent pages for its splits, ``own_trie_pages``), the
shared pages they keep tokens of copied on the device and the page tables uploaded. After
it, what a trie's splits kept is settled (``settle_trie_pages``) and the pages reserved
past what the slots now hold go back (``trim_pages``). A fork only forks the page tables
(``fork_pages``).

Each function takes the decoder's ``PageTable``, or (all but ``fork_pages``) None for a
decoder on the slot pool, and then changes nothing. ``lengths`` is the decoder's host
mirror of each slot's length, [num_slots]; a function that changes the device cache takes
the cache and returns the new one. On a mesh the device sees each data shard's pages
numbered from 0: tables are uploaded (``with_page_table``), copies made and loans handed
out per shard in those local ids, and a trie's tables read back into the host's.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from qstar_jax.decoding.data_shards import RowLayout
from qstar_jax.decoding.paged_cache import PagedKVCache, PageTable, copy_pages
from qstar_jax.decoding.token_batch import bucket_size


def own_pages(pages: PageTable | None, cache, slots: np.ndarray, starts: np.ndarray,
              ends: np.ndarray, copy=copy_pages):
    """Give the slots pages of their own for positions [start, end) before a write,
    copying shared ones that hold earlier tokens with ``copy`` (``copy_pages``, or on a
    mesh the decoder's per-shard copy) (raises PagePoolExhausted before any change)."""
    if pages is None:
        return cache
    return _copy_reserved(pages, cache, *pages.reserve(slots, starts, ends), copy)


def own_trie_pages(pages: PageTable | None, cache, slots: np.ndarray, lengths: np.ndarray,
                   counts: np.ndarray, max_tokens: int, max_len: int, copy=copy_pages):
    """Give the groups' slots pages of their own up to the cap, as ``own_pages`` does
    before a step, and borrow pages for the trie's splits (``lent_pages``) on each
    group's data shard: a group's ``counts - 1`` splits each take at most the pages from
    its start's page to its cap's. Raises PagePoolExhausted before any change when a
    shard is short."""
    if pages is None:
        return cache
    size = pages.page_size
    starts = lengths[slots]
    ends = np.minimum(starts + max_tokens, max_len)
    per_split = -(-ends // size) - starts // size
    lend = np.bincount(pages.slots.shard_of(slots), weights=(counts - 1) * per_split,
                       minlength=pages.shards).astype(np.int64)
    sources, targets = pages.reserve(slots, starts, ends, lend=lend)
    return _copy_reserved(pages, cache, sources, targets, copy)


def lent_pages(pages: PageTable | None, tables: np.ndarray | None, layout: RowLayout,
               cap_bucket: int) -> np.ndarray | None:
    """The lent pages a trie call of rows laid out as ``layout`` may take, on each data
    shard ``block * per_row`` of that shard's, in shard-local ids padded with
    ``pages_per_shard`` (per_row: the most a split can take with a cap of
    ``cap_bucket``), [shards * block * per_row] int32: those no row's page table in
    ``tables`` (the trie's rows so far, None before its first call) holds, in the order
    splits take them (a split keeps the pages it takes in its table); None on the slot
    pool."""
    if pages is None:
        return None
    lent = pages.lent
    if tables is not None:
        lent = lent[~np.isin(lent, tables)]
    per_row = min(-(-cap_bucket // pages.page_size) + 1, pages.table.shape[1])
    room = layout.block * per_row
    shard_of = pages.shard_of_pages(lent)
    return np.concatenate([
        _pad(lent[shard_of == shard][:room] - shard * pages.pages_per_shard, room,
             pages.pages_per_shard) for shard in range(layout.shards)])


def fork_pages(pages: PageTable, cache: PagedKVCache, parents: np.ndarray,
               children: np.ndarray) -> PagedKVCache:
    """Fork the parents' page tables into the children's and upload them: the children
    share their parents' pages, nothing is copied."""
    pages.fork(parents, children)
    return with_page_table(pages, cache)


def return_lent_pages(pages: PageTable | None) -> None:
    """After a trie call that failed: nothing was forked, so the lent pages go back."""
    if pages is not None:
        pages.settle([], [], [])


def settle_trie_pages(pages: PageTable | None, slots: np.ndarray, row_slots: np.ndarray,
                      live: np.ndarray, page_table: np.ndarray,
                      lengths: np.ndarray) -> None:
    """After a trie call on groups ``slots`` [G] whose rows went to ``row_slots`` (the
    groups' slots, then the spares): each used spare (``live``, past the groups) holds the
    pages of its tokens from ``page_table`` (the call's table per row), the lent pages
    none kept go back, and the groups' slots give back the pages past their tokens."""
    if pages is None:
        return
    forked = live & (np.arange(len(row_slots)) >= len(slots))
    pages.settle(row_slots[forked], page_table[forked], lengths[row_slots[forked]])
    trim_pages(pages, slots, lengths)


def trim_pages(pages: PageTable | None, slots: np.ndarray, lengths: np.ndarray) -> None:
    """Free the pages reserved past what the slots now hold. The device's page table
    keeps the stale entries until the next write uploads it, and nothing reads them
    before."""
    if pages is not None:
        pages.trim(slots, lengths[slots])


def _copy_reserved(pages: PageTable, cache: PagedKVCache, sources: np.ndarray,
                   targets: np.ndarray, copy) -> PagedKVCache:
    """Copy the pages a reservation replaced (``PageTable.reserve``) and upload the page
    tables. ``copy(cache, sources, targets)`` takes each data shard's copies as a block
    of the same size, in shard-local page ids (a target of ``pages_per_shard`` is
    padding)."""
    if len(sources):
        shard_of = pages.shard_of_pages(sources)
        copies = bucket_size(int(np.bincount(shard_of).max()))
        offsets = np.arange(pages.shards) * pages.pages_per_shard
        blocks = [(_pad(sources[shard_of == s] - offsets[s], copies, 0),
                   _pad(targets[shard_of == s] - offsets[s], copies, pages.pages_per_shard))
                  for s in range(pages.shards)]
        cache = copy(cache, *(np.concatenate(block) for block in zip(*blocks)))
    return with_page_table(pages, cache)


def with_page_table(pages: PageTable, cache: PagedKVCache) -> PagedKVCache:
    """``cache`` with the host's page tables uploaded as the devices address pages
    (``PageTable.device_table``), laid out as the cache's own table is (on a mesh, each
    data shard's rows on its devices; every process passes the same table).

    The upload reads a table made for it alone: ``jnp.asarray`` of a NumPy array on the
    CPU backend may read it after returning, and on jax 0.10.2 220 of 300 uploads of the
    live table made while the device was busy saw a write the host made after the call
    (trim, free, reserve); a stale or half-new table sends rows to other rows' pages."""
    table = pages.device_table()
    return dataclasses.replace(cache, page_table=jax.make_array_from_callback(
        table.shape, cache.page_table.sharding, lambda index: table[index]))


def _pad(values: np.ndarray, batch: int, fill: int) -> np.ndarray:
    """values [n] -> int32 [batch], padded with ``fill``."""
    padded = np.full(batch, fill, np.int32)
    padded[:len(values)] = values
    return padded
