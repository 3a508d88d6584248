"""The paged cache: forks share pages, writes copy on write, counts never leak, and a
forked slot decodes exactly as a freshly prefilled one (and as the slot pool does)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.kv_cache import SlotPoolExhausted, init_cache
from qstar_jax.decoding.page_table import PagePoolExhausted, PageTable
from qstar_jax.decoding.paged_cache import Paging, copy_pages, fork_slot_state, init_paged_cache
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.models import cache_pages
from qstar_jax.models.cache_pages import PagedRows
from qstar_jax.models.llama import LlamaModel
from qstar_kernels import paged_decode_attention

PAGE_SIZE, MAX_LEN = 4, 32


class PagedModel:
    """The random tiny model over a paged cache, fed through its forward call as the
    samplers feed it: reserve, copy on write, write, trim."""

    def __init__(self, model, *, slots=6, pages=40, attention="jnp"):
        self.model, self.attention = model, attention
        self.cache = init_paged_cache(model.config, slots=slots, pages=pages,
                                      page_size=PAGE_SIZE, max_len=MAX_LEN, attention=attention)
        self.table = PageTable(num_slots=slots, num_pages=pages, page_size=PAGE_SIZE,
                               max_len=MAX_LEN)
        self.lengths = np.zeros(slots, np.int64)

    def reserve(self, slots, ends):
        """Give the slots pages of their own up to ``ends``, copying on write."""
        sources, targets = self.table.reserve(slots, self.lengths[slots], ends)
        if len(sources):
            self.cache = copy_pages(self.cache, jnp.asarray(sources), jnp.asarray(targets))
        self.cache = dataclasses.replace(self.cache, page_table=jnp.asarray(self.table.table))

    def feed(self, slots, token_lists):
        """Append each token list to its slot; returns hidden [B, T, E]."""
        starts = self.lengths[slots]
        ends = starts + [len(t) for t in token_lists]
        self.reserve(slots, ends)
        width = max(len(t) for t in token_lists)
        tokens = np.zeros((len(slots), width), np.int32)
        positions = np.full((len(slots), width), MAX_LEN, np.int32)
        for row, (t, start) in enumerate(zip(token_lists, starts)):
            tokens[row, :len(t)] = t
            positions[row, :len(t)] = start + np.arange(len(t))
        rows = PagedRows(page_table=jnp.asarray(self.table.table[slots]),
                         attention=self.attention)
        hidden, k, v = self.model(jnp.asarray(tokens), jnp.asarray(positions), rows,
                                  self.cache.k, self.cache.v)
        self.cache = dataclasses.replace(self.cache, k=k, v=v)
        self.lengths[slots] = ends
        self.table.trim(slots, ends)
        return np.asarray(hidden)

    def fork(self, parents, children):
        self.table.fork(parents, children)
        self.cache = fork_slot_state(self.cache, jnp.asarray(parents, jnp.int32),
                                     jnp.asarray(children, jnp.int32))
        self.lengths[children] = self.lengths[parents]

    def tokens_of(self, slot):
        """The slot's keys in position order [L, K, length, D], as stored."""
        pages = self.table.table[slot, :self.table.pages_held[slot]]
        keys = np.asarray(self.cache.k)[:, pages]  # [L, n, K, S, D]
        keys = keys.transpose(0, 2, 1, 3, 4).reshape(keys.shape[0], keys.shape[2], -1,
                                                     keys.shape[4])
        return keys[:, :, :self.lengths[slot]]


PREFIX = [3, 14, 15, 9, 26, 5, 35, 8, 9, 7]  # 10 tokens: the third page is partly filled


def test_paged_rows_address_each_position_in_its_page_and_padding_past_the_pool():
    """Rows of 3 entries of 4-token pages in a pool of 9: position p lies in entry p // 4
    at offset p % 4; from 12 on (a full row's padding too) it is page 9, past the pool,
    so its write is dropped and its row holds no tokens."""
    positions = jnp.asarray([[0, 5, 11, 12], [3, 4, 13, 40]], jnp.int32)
    # One layer of one kv head whose key at offset o of page q is 10 q + o.
    pages = (10 * jnp.arange(9)[:, None] + jnp.arange(4)).astype(jnp.float32)[None, :, None,
                                                                             :, None]

    @jax.jit  # one compile, not one per operation
    def addressed(table):
        rows = PagedRows(page_table=table)
        return (rows.targets(positions, 4, 9), rows.lengths(positions[:, 2:3], 4, 9),
                rows.write(pages, 0, -jnp.ones((2, 4, 1, 1)), positions),
                rows.gather(pages, 0, key_len=5), rows.gather(pages, 0))
    (page, offset), lengths, written, first_keys, keys = addressed(
        jnp.asarray([[7, 2, 5], [4, 0, 6]], jnp.int32))
    assert page.tolist() == [[7, 2, 5, 9], [4, 0, 9, 9]]
    assert offset.tolist() == [[0, 1, 3, 0], [3, 0, 1, 0]]
    assert lengths.tolist() == [12, 0]  # after the steps at 11 and 13
    np.testing.assert_array_equal(written[0, :, 0, :, 0] < 0,
                                  np.isin(pages[0, :, 0, :, 0], [70, 21, 53, 43, 0]))
    # The pages that hold positions 0 to 4: each row's first two.
    assert first_keys[:, 0, :, 0].tolist() == [[70, 71, 72, 73, 20, 21, 22, 23],
                                               [40, 41, 42, 43, 0, 1, 2, 3]]
    assert keys.shape == (2, 1, 12, 1)


def test_forked_slot_decodes_exactly_as_a_fresh_prefill_and_as_the_slot_pool_does(random_model):
    paged = PagedModel(random_model)
    parent, child, fresh = paged.table.allocate(3)
    paged.feed([parent], [PREFIX])
    paged.fork([parent], [child])
    assert paged.table.refcounts[paged.table.table[parent, :3]].tolist() == [2, 2, 2]
    # One row per call, as the fresh slot is fed: XLA may round a batch of two otherwise.
    paged.feed([parent], [[11]])
    forked = paged.feed([child], [[12]])[0, 0]
    assert paged.table.table[child, 2] != paged.table.table[parent, 2]  # copied on write
    assert paged.table.table[child, 0] == paged.table.table[parent, 0]  # full pages shared
    paged.feed([fresh], [PREFIX])
    fresh_hidden = paged.feed([fresh], [[12]])[0, 0]
    np.testing.assert_array_equal(forked, fresh_hidden)

    cache = init_cache(random_model.config, slots=2, max_len=MAX_LEN)
    slots = jnp.asarray([0], jnp.int32)
    _, k, v = random_model(jnp.asarray([PREFIX]), jnp.arange(10)[None], slots, cache.k, cache.v)
    slot_hidden, _, _ = random_model(jnp.asarray([[12]]), jnp.asarray([[10]]), slots, k, v)
    # XLA fuses the two layouts' programs differently: equal to float32 rounding.
    np.testing.assert_allclose(np.asarray(slot_hidden)[0, 0], fresh_hidden, rtol=1e-5, atol=1e-6)


def test_a_paged_decoder_samples_exactly_what_the_slot_pool_decoder_samples(random_model):
    steps, decoders = [], []
    for paging in (None, Paging(page_size=PAGE_SIZE, num_pages=24)):
        decoder = Decoder(random_model, num_slots=4, max_len=MAX_LEN,
                          newline_table=np.zeros(64, bool), eos_ids=[], min_batch_bucket=4,
                          paging=paging)
        parent, first, second = decoder.allocate(3)
        decoder.prefill([parent], [PREFIX])
        decoder.fork([parent, parent], [first, second])
        rows = [parent, first, second]
        steps.append(decoder.sample_steps(rows, problem_keys=_keys(3), node_ids=[0, 1, 2],
                                          params=SamplingParams.make(3, temperature=1.0),
                                          max_tokens=5))
        decoder.free([second])
        decoder.fork([first], [parent])  # a slot with pages of its own takes a sibling's
        steps.append(decoder.sample_steps([parent, first], problem_keys=_keys(2),
                                          node_ids=[3, 4],
                                          params=SamplingParams.make(2, temperature=1.0),
                                          max_tokens=7))
        decoders.append(decoder)
    for slot_step, paged_step in zip(steps[:2], steps[2:]):
        assert slot_step.tokens[0].tolist() != slot_step.tokens[1].tolist()
        for name in ("slots", "tokens", "num_tokens", "end_reason"):
            np.testing.assert_array_equal(getattr(paged_step, name), getattr(slot_step, name))
        for name in ("logprobs", "hidden"):  # to float32 rounding, as above
            np.testing.assert_allclose(getattr(paged_step, name), getattr(slot_step, name),
                                       rtol=1e-5, atol=1e-6)
    paged = decoders[1]
    paged.pages.check_counts()
    # Two slots of 22 tokens share pages 0-2 (the prefix) and own 3 each.
    assert paged.pages.num_free_pages == 24 - (3 + 2 * 3)
    paged.free([s for s in range(4) if paged.pool.is_allocated(s)])
    assert paged.pages.num_free_pages == 24 and not paged.pages.refcounts.any()


def test_a_paged_decoder_that_runs_out_of_pages_says_so_before_it_writes(random_model):
    decoder = Decoder(random_model, num_slots=4, max_len=MAX_LEN,
                      newline_table=np.zeros(64, bool), eos_ids=[], min_batch_bucket=4,
                      paging=Paging(page_size=PAGE_SIZE, num_pages=4))
    parent, child = decoder.allocate(2)
    decoder.prefill([parent], [PREFIX])
    decoder.fork([parent], [child])
    with pytest.raises(PagePoolExhausted, match="needs 4 new pages .* only 1 of 4"):
        decoder.sample_steps([parent, child], problem_keys=_keys(2), node_ids=[0, 1],
                             params=SamplingParams.make(2), max_tokens=5)
    assert decoder.lengths([parent, child]).tolist() == [10, 10]
    decoder.pages.check_counts()


def _keys(n):
    return jax.random.split(jax.random.key(11), n)


def test_copy_on_write_never_changes_a_siblings_tokens(random_model):
    paged = PagedModel(random_model)
    parent, first, second = paged.table.allocate(3)
    paged.feed([parent], [PREFIX])
    paged.fork([parent, parent], [first, second])
    before = paged.tokens_of(parent)
    paged.feed([first], [[1, 2, 3, 4, 5]])
    paged.feed([second], [[6]])  # the partly filled page is still shared with the parent
    written = {slot: paged.tokens_of(slot) for slot in (first, second)}
    paged.feed([parent], [[7, 8]])
    np.testing.assert_array_equal(paged.tokens_of(parent)[:, :, :10], before)
    for slot in (first, second):  # the prefix, and what each wrote after the fork
        np.testing.assert_array_equal(paged.tokens_of(slot)[:, :, :10], before)
        np.testing.assert_array_equal(paged.tokens_of(slot), written[slot])
    # The parent's write went to the page it shared with no one, not to a sibling's.
    pages = paged.table.table[[parent, first, second], 2]
    assert len(set(pages.tolist())) == 3, pages
    paged.table.check_counts()


@pytest.mark.parametrize("window", [None, 3], ids=["full attention", "sliding window"])
def test_decode_through_the_pallas_kernel_matches_the_jnp_path(random_model, window,
                                                               monkeypatch):
    """With a sliding window of 3, the decode step at position 10 sees 3 of its 11 keys:
    the window reaches the kernel as it does the jnp path. Under "pallas" the decode step
    (not the prefill) asks the kernel's dispatch for "pallas"; under "jnp" it never asks."""
    model = random_model
    if window is not None:
        config = dataclasses.replace(random_model.config, sliding_windows=(window,) * 2)
        model = LlamaModel(config, rngs=nnx.Rngs(0))
    asked = []

    def recording_dispatch(*args, implementation, **options):
        asked.append((args[0].shape, implementation))
        return paged_decode_attention(*args, implementation=implementation, **options)
    monkeypatch.setattr(cache_pages, "paged_decode_attention", recording_dispatch)
    hidden, dispatched = {}, {}
    for attention in ("jnp", "pallas"):  # "pallas" interprets the GPU kernel on CPU
        paged = PagedModel(model, attention=attention)
        parent, child = paged.table.allocate(2)
        paged.feed([parent], [PREFIX])
        paged.fork([parent], [child])
        hidden[attention] = paged.feed([parent, child], [[11], [12]])
        dispatched[attention], asked[:] = set(asked), []
    np.testing.assert_allclose(hidden["pallas"], hidden["jnp"], atol=1e-5)
    heads, head_dim = model.config.num_heads, model.config.head_dim
    assert dispatched == {"jnp": set(), "pallas": {((2, 1, heads, head_dim), "pallas")}}


@pytest.mark.parametrize("shards", [1, 3])
def test_counts_return_to_zero_over_1000_random_fork_and_free_sequences(shards):
    """Also with the pages split over 3 data shards: a slot only ever holds pages of its
    own shard (``check_counts``), a child going on its parent's. A slot always holds
    exactly the pages of its tokens, one a page's end included."""
    rng = np.random.default_rng(0)
    table = PageTable(num_slots=12, num_pages=48, page_size=PAGE_SIZE, max_len=MAX_LEN,
                      shards=shards)
    shard_of = table.slots.shard_of
    lengths = np.zeros(12, np.int64)
    stopped_on_a_page_end = 0
    for _ in range(1000):
        held = [s for s in range(12) if table.slots.is_allocated(s)]
        op = rng.integers(4)
        if op == 0 and table.slots.num_free:
            slot = table.allocate(1)[0]
            lengths[slot] = 0
        elif op == 1 and held:  # into a new slot, or over a held one (itself included)
            parent = int(rng.choice(held))
            beside = [s for s in held if shard_of(s) == shard_of(parent)]
            try:
                child = (table.slots.allocate(1, near=[parent])[0] if rng.random() < 0.7
                         else int(rng.choice(beside)))
            except SlotPoolExhausted:  # the parent's shard is full
                child = int(rng.choice(beside))
            table.fork([parent], [child])
            lengths[child] = lengths[parent]
        elif op == 2 and held:
            slot = int(rng.choice(held))
            end = min(MAX_LEN, lengths[slot] + int(rng.integers(1, 9)))
            try:
                table.reserve([slot], [lengths[slot]], [end])
            except PagePoolExhausted:
                continue
            lengths[slot] = int(rng.integers(lengths[slot], end + 1))  # a step may stop short
            table.trim([slot], [lengths[slot]])
            # Stopped short on a page's end, with the next page reserved: trim drops it.
            stopped_on_a_page_end += 0 < lengths[slot] < end and lengths[slot] % PAGE_SIZE == 0
        elif op == 3 and held:
            table.free([int(rng.choice(held))])
        table.check_counts()
        held = [s for s in range(12) if table.slots.is_allocated(s)]
        np.testing.assert_array_equal(table.pages_held[held], -(-lengths[held] // PAGE_SIZE))
    assert stopped_on_a_page_end >= 10
    table.free([s for s in range(12) if table.slots.is_allocated(s)])
    assert not table.refcounts.any() and table.num_free_pages == 48


def test_pages_split_over_data_shards_go_to_their_own_shards_slots():
    """Two shards of 2 slots and 5 pages each: a slot takes its shard's pages, one shard
    can run short while the other has pages free, a child must share its parent's shard,
    loans are per shard, and the devices see each shard's pages from 0."""
    table = PageTable(num_slots=4, num_pages=10, page_size=PAGE_SIZE, max_len=MAX_LEN,
                      shards=2)
    a, b = table.slots.allocate(2)  # spread: one on each shard
    assert table.slots.shard_of([a, b]).tolist() == [0, 1]
    table.reserve([a, b], [0, 0], [10, 5])  # 3 pages on shard 0, 2 on shard 1
    assert table.table[a, :3].tolist() == [0, 1, 2] and table.table[b, :2].tolist() == [5, 6]
    with pytest.raises(PagePoolExhausted, match="needs 3 new pages .* on data shard 0 but "
                                                "only 2 of 5 are free"):
        table.reserve([a], [10], [24])
    with pytest.raises(ValueError, match="must lie on the parent's data shard"):
        table.fork([a], [b])
    child = table.slots.allocate(1, near=[b])[0]
    table.fork([b], [child])
    table.reserve([b], [5], [6])  # copy on write of b's shared page 6
    table.lend([1, 2])
    assert sorted(table.lent.tolist()) == [3, 8, 9] and table.table[b, 1] == 7
    device = table.device_table()
    assert device[a, :4].tolist() == [0, 1, 2, 5]  # 5: no page, within a shard
    assert device[b, :3].tolist() == [0, 2, 5] and device[child, :2].tolist() == [0, 1]
    assert np.array_equal(table.global_tables(device, table.slots.shard_of(range(4))),
                          table.table)
    table.settle([], [], [])
    table.check_counts()
    table.free([a, b, child])
    assert table.num_free_pages == 10


def test_pool_exhaustion_is_raised_before_anything_changes():
    table = PageTable(num_slots=3, num_pages=5, page_size=PAGE_SIZE, max_len=MAX_LEN)
    a, b = table.allocate(2)
    table.reserve([a], [0], [10])  # 3 pages
    table.fork([a], [b])
    snapshot = (table.table.copy(), table.refcounts.copy(), table.num_free_pages)
    with pytest.raises(PagePoolExhausted, match="needs 4 new pages .* only 2 of 5 are free"):
        table.reserve([a, b], [10, 10], [13, 16])  # two copies of page 2, a page more each
    assert np.array_equal(table.table, snapshot[0])
    assert np.array_equal(table.refcounts, snapshot[1])
    assert table.num_free_pages == snapshot[2]
    with pytest.raises(ValueError, match="at most 32 tokens"):
        table.reserve([a], [10], [33])
    with pytest.raises(ValueError, match="leave a gap"):
        table.reserve([a], [20], [21])


def test_a_write_copies_a_shared_page_only_when_it_keeps_tokens_of_it():
    table = PageTable(num_slots=3, num_pages=8, page_size=PAGE_SIZE, max_len=MAX_LEN)
    a, b, c = table.allocate(3)
    table.reserve([a], [0], [6])  # pages 0 and 1, positions 4 and 5 in page 1
    table.fork([a, a], [b, c])
    # From page 1's start b keeps none of its tokens: a new page, nothing copied.
    sources, targets = table.reserve([b], [4], [8])
    assert (sources.tolist(), targets.tolist()) == ([], [])
    # From position 5 c keeps position 4: page 1 is copied into its new page.
    sources, targets = table.reserve([c], [5], [8])
    assert (sources.tolist(), targets.tolist()) == ([1], [3])
    assert table.table[b, :2].tolist() == [0, 2] and table.table[c, :2].tolist() == [0, 3]
    assert table.refcounts[:4].tolist() == [3, 1, 1, 1]
    table.check_counts()


def test_a_write_from_before_a_forked_slots_end_lets_go_of_the_pages_past_it():
    """A prompt continuing a shorter prefix of what a forked slot holds (prefill with
    ``starts``): the child writes [2, 6) of its parent's 10 tokens, replacing only the
    shared page 0 (copied, it keeps 2 tokens) and page 1; after trimming to 6 it holds two
    pages of its own, and its share of the parent's page 2 is given back."""
    table = PageTable(num_slots=2, num_pages=8, page_size=PAGE_SIZE, max_len=MAX_LEN)
    parent, child = table.allocate(2)
    table.reserve([parent], [0], [10])  # pages 0, 1, 2
    table.fork([parent], [child])
    sources, targets = table.reserve([child], [2], [6])
    assert (sources.tolist(), targets.tolist()) == ([0], [3])
    assert table.table[child, :3].tolist() == [3, 4, 2] and table.pages_held[child] == 3
    table.trim([child], [6])
    assert table.table[child, :3].tolist() == [3, 4, 8] and table.pages_held[child] == 2
    assert table.refcounts[:5].tolist() == [1, 1, 1, 1, 1]
    table.check_counts()
    table.free([parent, child])
    assert table.num_free_pages == 8


def test_lent_pages_come_back_unless_a_forked_slot_holds_them():
    table = PageTable(num_slots=4, num_pages=10, page_size=PAGE_SIZE, max_len=MAX_LEN)
    parent, child, other = table.allocate(3)
    table.reserve([parent], [0], [10])  # 3 pages of its own
    with pytest.raises(PagePoolExhausted, match="needs 8 new pages"):
        table.lend([8])
    assert table.num_free_pages == 7 and table.lent.size == 0
    with pytest.raises(ValueError, match="a count >= 0 for each of the 1 data shards"):
        table.lend([-1])
    table.lend([5])
    assert len(table.lent) == 5 and table.num_free_pages == 2
    # A call took two of them (in some row's table): recall returns the other three.
    taken = table.lent[[1, 3]]
    table.recall(np.array([[taken[0], 10], [taken[1], 10]]))
    assert table.lent.tolist() == sorted(taken.tolist()) and table.num_free_pages == 5
    table.lend([2])  # the next call's loan, beside the two taken
    lent = table.lent
    assert len(lent) == 4 and table.num_free_pages == 3
    table.check_counts()
    # A fork on the device at position 9: the parent's two full pages, then lent pages.
    row = np.full(MAX_LEN // PAGE_SIZE, 10, np.int32)
    row[:2], row[2:5] = table.table[parent, :2], lent[:3]
    with pytest.raises(ValueError, match=r"pages \[9\] that were neither in use nor lent"):
        table.settle([child], [np.where(row == lent[0], 9, row)], [14])
    table.settle([child], [row], [14])  # 14 tokens: 4 pages, lent[2:] unused
    assert table.table[child, :4].tolist() == row[:4].tolist()
    assert table.refcounts[row[:4]].tolist() == [2, 2, 1, 1]
    assert table.num_free_pages == 5 and table.lent.size == 0
    table.check_counts()
    table.free([parent, child, other])
    assert not table.refcounts.any() and table.num_free_pages == 10


@pytest.mark.parametrize("settings, message", [
    (dict(max_len=30), "max_len 30 must be a multiple of the page size 4"),
    (dict(num_pages=10, shards=4), "10 pages do not split into 4 equal data shards"),
])
def test_a_page_table_that_cannot_hold_whole_pages_is_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        PageTable(**{**dict(num_slots=4, num_pages=8, page_size=PAGE_SIZE, max_len=MAX_LEN),
                     **settings})


def test_writes_forks_and_settles_of_slots_not_allocated_or_listed_twice_change_nothing():
    table = PageTable(num_slots=4, num_pages=8, page_size=PAGE_SIZE, max_len=MAX_LEN)
    a, b = table.allocate(2)
    free_slot = 3
    table.reserve([a], [0], [6])  # pages 0 and 1
    snapshot = (table.table.copy(), table.refcounts.copy(), table.num_free_pages)
    refusals = [
        (lambda: table.reserve([free_slot], [0], [4]), "cannot write to slot 3: it is not "
                                                       "allocated"),
        (lambda: table.reserve([a, a], [6, 6], [8, 8]), r"slots \[0, 0\]: a slot is listed "
                                                        "twice"),
        (lambda: table.reserve([a], [7], [6]), r"cannot write positions \[7, 6\) of slot 0"),
        (lambda: table.fork([a], [free_slot]), r"cannot fork: slots \[3\] are not allocated"),
        (lambda: table.fork([free_slot], [b]), r"cannot fork: slots \[3\] are not allocated"),
        (lambda: table.settle([b, b], [table.table[a]] * 2, [6, 6]),
         r"cannot settle slots \[1, 1\]: each must be allocated, once"),
        (lambda: table.settle([free_slot], [table.table[a]], [6]),
         r"cannot settle slots \[3\]: each must be allocated, once"),
    ]
    for refuse, message in refusals:
        with pytest.raises(ValueError, match=message):
            refuse()
        assert np.array_equal(table.table, snapshot[0])
        assert np.array_equal(table.refcounts, snapshot[1])
        assert table.num_free_pages == snapshot[2]
    table.check_counts()
