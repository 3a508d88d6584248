"""The host's page table reaches the device as it was when uploaded, whatever the host
writes to it next (the paged cache mutates its table after every upload)."""

import jax.numpy as jnp

from qstar_jax.decoding.page_bookkeeping import with_page_table
from qstar_jax.decoding.paged_cache import PageTable, init_paged_cache
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
