"""The host-side page bookkeeping the decoder does around its calls on a paged cache.

Shapes: P pages, G trie groups.

Before a call writes, its slots get pages of their own up to where the call may write
(``own_pages``), the shared pages they keep tokens of copied on the device and the page
tables uploaded; after it, the pages reserved past what the slots now hold go back
(``trim_pages``). A trie takes its pages on the device as its rows reach them: its
groups' slots own the page they start in (``own_trie_pages``), each of its calls is lent
what its rows may reach in its rounds (``lend_trie_pages``) and the trie's tables are
settled at its end (``settle_trie_pages``). A fork only forks the page tables
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
from qstar_jax.decoding.page_table import PageTable
from qstar_jax.decoding.paged_cache import PagedKVCache, copy_pages
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
    """Before a trie: give each group's slot its own copy of the partly filled page it
    starts in, if shared, as ``own_pages`` does before a step; the trie's other pages are
    lent chunk by chunk (``lend_trie_pages``). Raises PagePoolExhausted, changing
    nothing, unless each data shard has free the most pages the trie could take: every
    step of a group's ``counts`` to its cap, from the page its group starts in."""
    if pages is None:
        return cache
    size = pages.page_size
    starts = lengths[slots]
    ends = np.minimum(starts + max_tokens, max_len)
    pages.check_free(pages.new_pages(slots, counts * (-(-ends // size) - starts // size)))
    return _copy_reserved(pages, cache, *pages.reserve(slots, starts, starts), copy)


def lend_trie_pages(pages: PageTable | None, tables: np.ndarray | None, layout: RowLayout,
                    row_slots: np.ndarray, going: np.ndarray, num_tokens: np.ndarray,
                    rounds: int, max_tokens: int, cap_bucket: int) -> np.ndarray | None:
    """Before a trie call of at most ``rounds`` rounds on ``row_slots`` [n] (its rows:
    ``going`` steps with ``num_tokens`` tokens so far, and spares), laid out as
    ``layout``: take back the lent pages no row took (not in ``tables``, the trie's page
    tables so far, None before its first call) and lend what the call's rows may reach:
    a going step's next ``min(rounds, max_tokens - num_tokens)`` tokens take at most that
    many over the page size pages (it holds the page it is in), a spare's at most one
    more (the page it splits off in). So a loan is a chunk's, not a whole step's, and
    goes back unused when the step ends.

    Returns the loan as the call takes it: on each data shard ``block * per_row`` of
    that shard's pages (per_row: the most a row can take writing ``min(rounds,
    cap_bucket)`` tokens), in shard-local ids padded with ``pages_per_shard``,
    [shards * block * per_row] int32, in the order the rows take them; None on the slot
    pool."""
    if pages is None:
        return None
    if tables is not None:
        pages.recall(tables)
    size = pages.page_size
    reach = np.where(going, np.minimum(rounds, max_tokens - num_tokens), min(rounds, max_tokens))
    loan = pages.lend(pages.new_pages(row_slots, -(-reach // size) + np.where(going, 0, 1)))
    per_row = min(-(-min(rounds, cap_bucket) // size) + 1, pages.table.shape[1])
    room = layout.block * per_row
    shard_of = pages.shard_of_pages(loan)
    return np.concatenate([
        _pad(loan[shard_of == shard][:room] - shard * pages.pages_per_shard, room,
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


def settle_trie_pages(pages: PageTable | None, row_slots: np.ndarray, live: np.ndarray,
                      page_table: np.ndarray, lengths: np.ndarray) -> None:
    """After a trie whose rows went to ``row_slots`` (the groups' slots, then the spares):
    each ``live`` row's slot holds the pages of its tokens from ``page_table`` (the
    trie's table per row), and the lent pages none kept go back."""
    if pages is not None:
        slots = row_slots[live]
        pages.settle(slots, page_table[live], lengths[slots])


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
