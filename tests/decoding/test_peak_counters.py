"""The host pools' peak counters (what experiments/bench_search.py reports as peak KV):
the most slots allocated, and the most pages out of the free list, reservations and
lent pages included."""

from qstar_jax.decoding.kv_cache import SlotPool
from qstar_jax.decoding.page_table import PageTable


def test_slot_pool_peak_is_the_most_slots_allocated_at_once():
    pool = SlotPool(8)
    first = pool.allocate(3)
    pool.free(first[:2])
    pool.allocate(4)
    assert pool.peak_allocated == 5
    pool.reset_peak()
    assert pool.peak_allocated == 5  # five are still allocated
    pool.free(pool.allocate(1))
    assert pool.peak_allocated == 6
    pool.free(first[2:])
    assert pool.allocate(1) == [2]  # 5 allocated again: under the peak, which stays
    assert pool.peak_allocated == 6


def test_page_table_peak_counts_reserved_and_lent_pages_until_trimmed():
    table = PageTable(num_slots=4, num_pages=20, page_size=4, max_len=32)
    parent, child = table.allocate(2)
    table.reserve([parent], [0], [10])  # 3 pages
    table.trim([parent], [6])  # 2 kept
    assert (table.pages_in_use, table.peak_pages_in_use) == (2, 3)
    table.fork([parent], [child])  # shares both pages: nothing new
    assert table.pages_in_use == 2
    # The child writes from 6: its partly filled page is replaced by a copy, then 1 more
    # page, and 2 pages are lent: 2 + 2 + 2 in use at the peak.
    table.reserve([child], [6], [10])
    table.lend([2])
    assert table.peak_pages_in_use == 6
    table.settle([], [], [])
    table.trim([child], [7])
    table.free([parent, child])
    assert table.pages_in_use == 0 and table.peak_pages_in_use == 6
    # A reservation and a loan under the peak leave it where it was.
    table.reserve(table.allocate(1), [0], [4])
    table.lend([1])
    assert (table.pages_in_use, table.peak_pages_in_use) == (2, 6)
    table.reset_peak()
    assert table.peak_pages_in_use == 2
    table.check_counts()
