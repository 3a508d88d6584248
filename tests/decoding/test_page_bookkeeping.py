"""The host's page table reaches the device as it was when uploaded, whatever the host
writes to it next (the paged cache mutates its table after every upload); a trie call's
loan is what its rows can reach in its rounds."""

import jax.numpy as jnp
import numpy as np
import pytest

from qstar_jax.decoding.data_shards import RowLayout
from qstar_jax.decoding.page_bookkeeping import (lend_trie_pages, own_trie_pages,
                                                 with_page_table)
from qstar_jax.decoding.page_table import PagePoolExhausted, PageTable
from qstar_jax.decoding.paged_cache import init_paged_cache
from tests.decoding.tiny_models import tiny_config


def test_an_uploaded_table_does_not_see_later_host_writes_even_under_load():
    pages = PageTable(num_slots=1280, num_pages=2048, page_size=16, max_len=384)
    cache = init_paged_cache(tiny_config(64), slots=1280, pages=2048, page_size=16,
                             max_len=384)
    busy = jnp.ones((1024, 1024))
    seen = []
    for i in range(100):
        pages.table[:] = i
        _ = busy @ busy  # keep the device busy, as a decode step does
        device = with_page_table(pages, cache).page_table
        pages.table[:] = 2047  # what trim, free and reserve do to the host's table
        seen.append(int(device[5, 5]))
    # jnp.asarray(pages.table) here saw the later write in most rounds on jax 0.10.2.
    assert seen == list(range(100))


def test_a_trie_call_is_lent_what_its_rows_reach_in_its_rounds_per_shard():
    # Two shards of 4 slots and 20 four-token pages. Groups a (shard 0, 1 token) and b
    # (shard 1, 10 tokens: pages 20-22), a spare beside each.
    pages = PageTable(num_slots=8, num_pages=40, page_size=4, max_len=32, shards=2)
    a, b = pages.allocate(2)
    spares = pages.slots.allocate(2, near=[a, b])
    pages.reserve([a, b], [0, 0], [1, 10])
    rows = np.array([a, b, *spares])
    # 6 rounds of a 12-token cap: a's step, 1 token in, reaches 6 more (2 pages), b's, 8
    # in, 4 more (1 page); a spare 6 (2 pages) and the page it splits off in: 5 pages on
    # shard 0 (1-5), 4 on shard 1 (23-26), each shard's in a block of 2 rows x 3 pages
    # (6 tokens reach 2 pages and a split one more), padded with 20, in local ids.
    loan = lend_trie_pages(pages, None, RowLayout.of(pages.slots.shard_of(rows), shards=2),
                           rows, np.array([True, True, False, False]), np.array([1, 8, 0, 0]),
                           6, 12, 16)
    assert loan.tolist() == [1, 2, 3, 4, 5, 20, 3, 4, 5, 6, 20, 20]
    assert pages.lent.tolist() == [1, 2, 3, 4, 5, 23, 24, 25, 26]
    # The call's a took page 1; b ended. The next call, of 16 rounds (past the cap), takes
    # the rest back and lends a's 6 tokens left (2 pages) and each spare 12 tokens and
    # its split's page (4): pages 2-7 and 23-26, in blocks of 2 rows x 5 pages.
    tables = np.full((4, 8), 40, np.int32)
    tables[0, :2], tables[1, :3] = [0, 1], [20, 21, 22]
    rows = np.array([a, *spares])
    loan = lend_trie_pages(pages, tables, RowLayout.of(pages.slots.shard_of(rows), shards=2),
                           rows, np.array([True, False, False]), np.array([6, 0, 0]), 16, 12,
                           16)
    assert loan.tolist() == [2, 3, 4, 5, 6, 7, *[20] * 4, 3, 4, 5, 6, *[20] * 6]
    assert pages.lent.tolist() == [1, 2, 3, 4, 5, 6, 7, 23, 24, 25, 26]
    assert pages.num_free_pages == 40 - 4 - 11


def test_a_trie_near_a_full_slot_needs_the_pages_up_to_the_slot_and_copies_its_shared_page():
    # A group's slot shares 30 tokens (8 four-token pages, the last partly filled) with
    # its sibling; 4 of 12 pages are free. Its steps, capped at 8 tokens, end at the
    # slot's 32: each takes at most the one page it is in, so 3 steps fit, 5 do not.
    pages = PageTable(num_slots=4, num_pages=12, page_size=4, max_len=32)
    cache = init_paged_cache(tiny_config(64), slots=4, pages=12, page_size=4, max_len=32)
    sibling, group = pages.allocate(2)
    pages.reserve([sibling], [0], [30])
    pages.fork([sibling], [group])
    lengths = np.array([30, 30, 0, 0])
    copies = []

    def copy(cache, sources, targets):
        copies.append((sources.tolist(), targets.tolist()))
        return cache

    with pytest.raises(PagePoolExhausted, match="needs 5 new pages .* only 4 of 12"):
        own_trie_pages(pages, cache, np.array([group]), lengths, np.array([5]), 8, 32, copy)
    assert copies == [] and pages.num_free_pages == 4
    cache = own_trie_pages(pages, cache, np.array([group]), lengths, np.array([3]), 8, 32,
                           copy)
    # Only the partly filled page is the group's own now: a copy of page 7 into page 8.
    assert copies == [([7], [8])]
    assert pages.table[group].tolist() == [0, 1, 2, 3, 4, 5, 6, 8]
    np.testing.assert_array_equal(cache.page_table, pages.table)
    assert pages.num_free_pages == 3
    pages.check_counts()
