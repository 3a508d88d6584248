"""Host bookkeeping of a paged cache (``paged_cache``): slots, their page tables and
every page's reference count.

Shapes: P pages, S page size, N pages per slot (N * S = max_len).

A slot's table lists exactly the pages that hold its tokens, ``cdiv(length, S)`` of them.
A fork copies the parent's table and bumps the counts. Before a write, ``reserve`` gives
every page the write touches to the writer alone: a page shared with another slot is
replaced by a new one, copied first when it holds tokens the writer keeps (the last,
partly filled page of a fork), so a write never changes a sibling's tokens. When the
pool cannot supply the pages, ``PagePoolExhausted`` is raised before anything changes.

A call that takes pages on the device (the trie sampler, whose rows take pages as they
reach them and whose splits fork page tables) is lent free pages (``lend``): it builds
its rows' tables from their entries and the lent pages itself; ``recall`` takes back the
lent pages no row took, and ``settle`` counts what each slot holds after it and takes
back the lent pages none of them kept.

On a mesh the host keeps a free list per data shard, and a slot only ever holds pages of
its own shard, so a fork (which shares pages) needs its child on its parent's shard; a
device call addresses a page by its index within the shard (``device_table``).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from qstar_jax.decoding.kv_cache import SlotPool


class PagePoolExhausted(RuntimeError):
    """A write needs more free pages than the pool has."""


class PageTable:
    """Host bookkeeping of a paged cache: slots, their page tables, page reference counts.

    ``table``: [slots, N] int32, the page ids of each slot's tokens in order; entries past a
    slot's pages hold P (no page: a write there is dropped, a read is never made).
    """

    def __init__(self, *, num_slots: int, num_pages: int, page_size: int, max_len: int,
                 shards: int = 1):
        if max_len % page_size:
            raise ValueError(f"max_len {max_len} must be a multiple of the page size "
                             f"{page_size}")
        if num_pages % shards:
            raise ValueError(f"{num_pages} pages do not split into {shards} equal data "
                             "shards; make the page count a multiple of the shards")
        self.num_pages, self.page_size = num_pages, page_size
        self.slots = SlotPool(num_slots, shards)
        self.pages_per_shard = num_pages // shards
        self.table = np.full((num_slots, max_len // page_size), num_pages, np.int32)
        self.pages_held = np.zeros(num_slots, np.int64)  # live entries of each table row
        self.refcounts = np.zeros(num_pages, np.int64)
        # One heap per data shard, of the pages its devices hold; sorted is a valid heap.
        per_shard = self.pages_per_shard
        self._free_pages = [list(range(s * per_shard, (s + 1) * per_shard))
                            for s in range(shards)]
        self._lent: set[int] = set()  # pages a device call may take until ``settle``
        self.peak_pages_in_use = 0  # the most ``pages_in_use`` since built or ``reset_peak``

    @property
    def shards(self) -> int:
        return self.slots.shards

    @property
    def num_free_pages(self) -> int:
        return sum(len(free) for free in self._free_pages)

    @property
    def pages_in_use(self) -> int:
        """Pages out of the free lists: held by slots, reserved for a write or lent."""
        return self.num_pages - self.num_free_pages

    def reset_peak(self) -> None:
        """Start ``peak_pages_in_use`` again from the pages in use now."""
        self.peak_pages_in_use = self.pages_in_use

    def shard_of_pages(self, pages) -> np.ndarray:
        """The data shard whose devices hold each page, int64."""
        return np.asarray(pages, np.int64) // self.pages_per_shard

    def device_table(self) -> np.ndarray:
        """A new copy of ``table`` as the devices address pages: each slot's entries
        counted within its shard's pages, no page as ``pages_per_shard`` (one shard: the
        table itself)."""
        return self.local_tables(self.table, self.slots.shard_of(np.arange(len(self.table))))

    def local_tables(self, tables: np.ndarray, row_shards: np.ndarray) -> np.ndarray:
        """Page-table rows [n, N] of rows on shards ``row_shards`` [n], in shard-local
        page ids (no page: ``pages_per_shard``)."""
        offsets = np.asarray(row_shards, np.int64)[:, None] * self.pages_per_shard
        return np.where(tables >= self.num_pages, self.pages_per_shard,
                        tables - offsets).astype(np.int32)

    def global_tables(self, tables: np.ndarray, row_shards: np.ndarray) -> np.ndarray:
        """``local_tables`` undone: shard-local rows [n, N] back to page ids."""
        offsets = np.asarray(row_shards, np.int64)[:, None] * self.pages_per_shard
        return np.where(tables >= self.pages_per_shard, self.num_pages,
                        tables + offsets).astype(np.int32)

    def allocate(self, n: int) -> list[int]:
        return self.slots.allocate(n)

    def free(self, slots: Sequence[int]) -> None:
        """Drop the slots' pages and hand the slots back."""
        self.slots.free(slots)
        for slot in slots:
            self._release(slot, keep=0)

    def fork(self, parents: Sequence[int], children: Sequence[int]) -> None:
        """Each child (allocated, on its parent's data shard; its old pages are dropped)
        shares its parent's pages."""
        unallocated = [s for s in (*parents, *children) if not self.slots.is_allocated(s)]
        if unallocated:
            raise ValueError(f"cannot fork: slots {unallocated} are not allocated")
        shard_of = self.slots.shard_of
        apart = [c for p, c in zip(parents, children, strict=True) if shard_of(p) != shard_of(c)]
        if apart:
            raise ValueError(f"cannot fork into slots {apart}: a child shares its parent's "
                             "pages, so it must lie on the parent's data shard "
                             "(allocate(n, near=parents))")
        rows = [self.table[p, :self.pages_held[p]].copy() for p in parents]
        for row in rows:  # counted before any child lets go, so a page a child held and
            np.add.at(self.refcounts, row, 1)  # inherits again is never freed in between
        for child, row in zip(children, rows, strict=True):
            self._release(child, keep=0)
            self.table[child, :len(row)] = row
            self.pages_held[child] = len(row)

    def trim(self, slots: Sequence[int], lengths: Sequence[int]) -> None:
        """Drop the pages past each slot's length (reserved for a write that stopped short)."""
        for slot, length in zip(slots, lengths, strict=True):
            self._release(slot, keep=-(-int(length) // self.page_size))

    def reserve(self, slots: Sequence[int], starts: Sequence[int], ends: Sequence[int]
                ) -> tuple[np.ndarray, np.ndarray]:
        """Give each slot pages of its own for positions [start, end), which it may then
        write, from its data shard's pages. Returns (sources, targets) [n]: the pages to
        copy on the device before the write (``copy_pages``; a source and its target lie
        on one shard); after it, ``trim`` to the lengths written. Raises
        PagePoolExhausted, changing nothing, when a shard is short."""
        if len(set(slots)) != len(slots):
            raise ValueError(f"cannot reserve for slots {list(slots)}: a slot is listed twice")
        plan = [self._pages_to_replace(s, int(a), int(b)) for s, a, b in
                zip(slots, starts, ends, strict=True)]
        shard_of = self.slots.shard_of(np.asarray(slots, np.int64))
        self.check_free(self.new_pages(slots, [len(entries) for entries, _ in plan]))
        sources, targets = [], []
        for slot, shard, (entries, copy_first) in zip(slots, shard_of, plan):
            for entry in entries:
                page = heapq.heappop(self._free_pages[shard])
                self.refcounts[page] = 1
                if entry < self.pages_held[slot]:
                    old = self.table[slot, entry]
                    if entry == copy_first:
                        sources.append(old)
                        targets.append(page)
                    self._drop_page(old)
                self.table[slot, entry] = page
            if entries:
                self.pages_held[slot] = max(self.pages_held[slot], entries[-1] + 1)
        self._read_peak()
        return np.asarray(sources, np.int32), np.asarray(targets, np.int32)

    def new_pages(self, slots: Sequence[int], counts: Sequence[int]) -> np.ndarray:
        """[shards] int64: ``counts[i]`` pages on slot i's data shard, summed per shard."""
        shard_of = self.slots.shard_of(np.asarray(slots, np.int64))
        return np.bincount(shard_of, weights=np.asarray(counts, np.float64),
                           minlength=self.shards).astype(np.int64)

    def check_free(self, needed: Sequence[int]) -> None:
        """Raise PagePoolExhausted unless each data shard has ``needed[shard]`` free pages."""
        needed = np.asarray(needed, np.int64)
        free = np.array([len(f) for f in self._free_pages])
        short = np.flatnonzero(needed > free)
        if short.size:
            shard = int(short[0])
            where = "" if self.shards == 1 else f" on data shard {shard}"
            raise PagePoolExhausted(
                f"this write needs {needed[shard]} new pages of {self.page_size} tokens"
                f"{where} but only {free[shard]} of {self.pages_per_shard} are free; free "
                "finished slots, run fewer rows at once, or build the cache with more pages")

    def lend(self, counts: Sequence[int]) -> np.ndarray:
        """Lend ``counts[shard]`` free pages of each data shard to a device call that
        takes pages itself (``lent``; ``recall`` or ``settle`` after it) and return them,
        sorted. Raises PagePoolExhausted, changing nothing, when a shard is short."""
        counts = np.asarray(counts, np.int64)
        if counts.shape != (self.shards,) or np.any(counts < 0):
            raise ValueError(f"a loan gives a count >= 0 for each of the {self.shards} "
                             f"data shards, got {counts.tolist()}")
        self.check_free(counts)
        loan = [heapq.heappop(self._free_pages[shard])
                for shard, count in enumerate(counts) for _ in range(count)]
        self._lent.update(loan)
        self._read_peak()
        return np.sort(np.asarray(loan, np.int32))

    def _read_peak(self) -> None:
        # Only a reservation or a loan takes pages from the free lists: the peak is read
        # after each.
        self.peak_pages_in_use = max(self.peak_pages_in_use, self.pages_in_use)

    def recall(self, kept: np.ndarray) -> None:
        """Take back the lent pages not in ``kept`` (the page tables a device call left,
        any shape): those it did not take."""
        back = self._lent - set(np.unique(kept).tolist())
        for page in back:
            heapq.heappush(self._free_pages[page // self.pages_per_shard], page)
        self._lent -= back

    @property
    def lent(self) -> np.ndarray:
        """The pages lent and not yet settled, in the order a device call takes them
        (each shard's in turn)."""
        return np.asarray(sorted(self._lent), np.int32)

    def settle(self, slots: Sequence[int], tables: np.ndarray, lengths: Sequence[int]) -> None:
        """After a device call that wrote ``slots`` (allocated) with the lent pages: slot i
        now holds ``lengths[i]`` tokens in the pages of ``tables[i]`` ([N], its page-table
        row as the call left it). Each slot lets go of its old pages and holds the first
        ``cdiv(lengths[i], S)`` of its new ones, counted; the lent pages no slot holds go
        back to the free list."""
        slots = [int(s) for s in slots]
        unallocated = [s for s in slots if not self.slots.is_allocated(s)]
        if unallocated or len(set(slots)) != len(slots):
            raise ValueError(f"cannot settle slots {slots}: each must be allocated, once")
        rows = [np.asarray(row[:-(-int(n) // self.page_size)], np.int32)
                for row, n in zip(tables, lengths, strict=True)]
        strays = {int(p) for row in rows for p in row
                  if not (0 <= p < self.num_pages) or (self.refcounts[p] == 0
                                                       and p not in self._lent)}
        if strays:
            raise ValueError(f"settled slots hold pages {sorted(strays)} that were neither in "
                             "use nor lent")
        for row in rows:  # counted before any slot lets go, as in ``fork``
            np.add.at(self.refcounts, row, 1)
        for slot, row in zip(slots, rows):
            self._release(slot, keep=0)
            self.table[slot, :len(row)] = row
            self.pages_held[slot] = len(row)
        for page in self._lent:
            if self.refcounts[page] == 0:
                heapq.heappush(self._free_pages[page // self.pages_per_shard], page)
        self._lent.clear()

    def check_counts(self) -> None:
        """Raise AssertionError unless every page's count is the number of table entries
        that hold it and the free pages are exactly those counted zero (for tests)."""
        held = np.zeros(self.num_pages, np.int64)
        for slot in range(len(self.table)):
            np.add.at(held, self.table[slot, :self.pages_held[slot]], 1)
        assert np.array_equal(held, self.refcounts), "page counts disagree with the tables"
        free = [page for pages in self._free_pages for page in pages]
        assert sorted([*free, *self._lent]) == np.flatnonzero(
            self.refcounts == 0).tolist(), "the free and lent pages disagree with the counts"
        assert all(np.all(self.shard_of_pages(pages) == shard)
                   for shard, pages in enumerate(self._free_pages)), \
            "a shard's free list holds another shard's page"
        held_by = self.slots.shard_of(np.arange(len(self.table)))[:, None]
        entries = np.arange(self.table.shape[1]) < self.pages_held[:, None]
        assert np.all(self.shard_of_pages(self.table)[entries] == np.broadcast_to(
            held_by, self.table.shape)[entries]), "a slot holds a page of another shard"

    def _pages_to_replace(self, slot: int, start: int, end: int) -> tuple[list[int], int]:
        """(table entries that need a new page, the entry whose old page must be copied
        into its new one, or -1) for a write of positions [start, end)."""
        if not self.slots.is_allocated(slot):
            raise ValueError(f"cannot write to slot {slot}: it is not allocated")
        limit = self.table.shape[1] * self.page_size
        if not 0 <= start <= end <= limit:
            raise ValueError(f"cannot write positions [{start}, {end}) of slot {slot}: a slot "
                             f"holds at most {limit} tokens")
        held = int(self.pages_held[slot])
        if start > held * self.page_size:
            raise ValueError(f"a write from position {start} would leave a gap in slot "
                             f"{slot}, whose pages end at {held * self.page_size}")
        entries = [e for e in range(start // self.page_size, -(-end // self.page_size))
                   if e >= held or self.refcounts[self.table[slot, e]] > 1]
        first = start // self.page_size
        keeps_tokens = start % self.page_size and first < held
        return entries, first if keeps_tokens and first in entries else -1

    def _release(self, slot: int, *, keep: int) -> None:
        for page in self.table[slot, keep:self.pages_held[slot]]:
            self._drop_page(page)
        self.table[slot, keep:] = self.num_pages
        self.pages_held[slot] = min(self.pages_held[slot], keep)

    def _drop_page(self, page: int) -> None:
        self.refcounts[page] -= 1
        if self.refcounts[page] == 0:
            heapq.heappush(self._free_pages[page // self.pages_per_shard], int(page))
