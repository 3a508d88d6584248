"""The trie sampler on a paged cache: a split is a page-table fork (the parent's full pages
shared, its partly filled page copied), a row takes lent pages as it reaches them, its
steps are the slot pool's, a sibling's tokens never change, no page leaks, a chunk's loan
is what its rows can reach, and a short pool says so before anything changes."""

import itertools

import jax
import numpy as np
import pytest

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.page_table import PagePoolExhausted
from qstar_jax.decoding.paged_cache import Paging
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.step_sampler import EndReason
from qstar_jax.decoding.trie_steps import sample_trie_steps
from tests.decoding.stepping import assert_same_step_batch, assert_same_trie_groups
from tests.decoding.tiny_models import RANDOM_MAX_LEN, STEP_BUCKET

PAGE_SIZE, CAP = 4, 12
NEWLINES, EOS = [5, 17, 40], 11  # some of the random model's likelier tokens end a step early
PROMPT = [3, 14, 15, 9, 26, 5, 35, 8, 9, 7]  # 10 tokens: its third page is partly filled
# The groups: a fork of PROMPT's slot (its partly filled page shared with a sibling), and
# prompts of 8 (whole pages), 3 and 57 tokens (57 + 12 > 64: its steps end on a full slot).
OTHER_PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1], [(7 * i) % 64 for i in range(56)] + [3]]
COUNTS = [6, 5, 6, 4]
PARAMS = SamplingParams.make(4, temperature=[0.5, 0.7, 0.7, 1.0])
KEYS = jax.random.split(jax.random.key(3), 4)


def trie_decoder(model, paging=None, shared_prefix=False, step_chunk=0):
    newline_table = np.zeros(64, bool)
    newline_table[NEWLINES] = True
    return Decoder(model, num_slots=64, max_len=RANDOM_MAX_LEN, newline_table=newline_table,
                   eos_ids=[EOS], min_batch_bucket=2, min_step_bucket=STEP_BUCKET,
                   paging=paging, shared_prefix=shared_prefix, step_chunk=step_chunk)


def _groups(decoder):
    """PROMPT's slot and the four groups' slots, prefilled."""
    sibling = decoder.allocate(1)
    decoder.prefill(sibling, [PROMPT])
    forked = decoder.allocate(1, near=sibling)
    decoder.fork(sibling, forked)
    others = decoder.allocate(3)
    decoder.prefill(others, OTHER_PROMPTS)
    return sibling[0], [*forked, *others]


def _trie(decoder, slots, group_ids=(1, 2, 3, 4), cap=CAP):
    return sample_trie_steps(decoder, slots, COUNTS, key_table=KEYS, key_rows=[0, 1, 2, 3],
                             group_ids=list(group_ids), params=PARAMS, max_tokens=cap)


def _next_steps(decoder, steps):
    """One more step from every trie step's slot: it reads each slot's whole cache."""
    rows = [s.slot for group in steps for s in group]
    return decoder.sample_steps(rows, problem_keys=jax.random.split(jax.random.key(4), len(rows)),
                                node_ids=range(len(rows)),
                                params=SamplingParams.make(len(rows), temperature=1.0),
                                max_tokens=6)


def _slot_keys(decoder, slot):
    """A paged slot's keys in position order [L, K, length, D], as stored."""
    pages = decoder.pages.table[slot, :decoder.pages.pages_held[slot]]
    keys = np.asarray(decoder.cache.k)[:, pages]  # [L, n, K, S, D]
    keys = keys.transpose(0, 2, 1, 3, 4).reshape(keys.shape[0], keys.shape[2], -1,
                                                 keys.shape[4])
    return keys[:, :, :decoder.lengths([slot])[0]]


def assert_same_tries(expected_decoder, decoder):
    """The groups' tries on both decoders, and a step after each: the same tokens,
    slots, counts and tokens fed, log-probabilities and hidden states to float32
    rounding, and caches that the next step reads alike. Returns the first's tries."""
    results = []
    for each in (expected_decoder, decoder):
        _, slots = _groups(each)
        steps, fed = _trie(each, slots)
        results.append((steps, fed, _next_steps(each, steps)))
    (expected, expected_fed, expected_after), (got, got_fed, got_after) = results
    assert got_fed == expected_fed
    assert_same_trie_groups(got, expected, logprob_atol=1e-5)
    assert_same_step_batch(got_after, expected_after)
    return expected


def _common_prefix(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_paged_tries_sample_exactly_the_slot_pools_steps(random_model):
    """Tries that split at several depths, with steps ending early (newline, EOS, a full
    slot), after prompts of whole and partly filled pages: the same tokens, slots and
    counts, log-probabilities and hidden states to float32 rounding, and caches that the
    next step reads alike."""
    rows = assert_same_tries(trie_decoder(random_model),
                             trie_decoder(random_model, Paging(page_size=PAGE_SIZE,
                                                               num_pages=400)))
    # What the comparison covered: splits at several depths, steps that end early.
    depths = {_common_prefix(a.tokens, b.tokens) for group in rows
              for a, b in itertools.combinations(group, 2)}
    reasons = {s.end_reason for group in rows for s in group}
    assert len(depths) >= 3 and max(depths) >= PAGE_SIZE, depths
    assert {EndReason.NEWLINE, EndReason.CAP, EndReason.CACHE_FULL} <= reasons, reasons
    assert any(len(s.tokens) < CAP and s.end_reason != EndReason.CACHE_FULL
               for group in rows for s in group)


@pytest.mark.parametrize("paged", [False, True])
def test_tries_attending_to_each_groups_prefix_once_sample_the_same_steps(random_model,
                                                                          paged):
    """``shared_prefix``: each group's prefix read once for all its rows (cascade
    attention, merged by log-sum-exp), on the slot pool and on pages: the same steps,
    log-probabilities and hidden states to float32 rounding, as each row attending over
    its own window; the groups' prefixes end mid-page and on a page's end, and one group
    is a fork sharing its prefix's pages."""
    paging = Paging(page_size=PAGE_SIZE, num_pages=400) if paged else None
    assert_same_tries(trie_decoder(random_model, paging),
                      trie_decoder(random_model, paging, shared_prefix=True))


def test_a_split_shares_the_full_pages_above_it_and_owns_the_rest(random_model):
    """Two steps of a group that agree on their first d tokens hold the same pages below
    position start + d's page and no page in common from it on; the sibling that shares
    the forked group's prompt keeps its pages and tokens."""
    decoder = trie_decoder(random_model, Paging(page_size=PAGE_SIZE, num_pages=400))
    sibling, slots = _groups(decoder)
    before = _slot_keys(decoder, sibling)
    sibling_pages = decoder.pages.table[sibling].copy()
    steps, _ = _trie(decoder, slots)
    table = decoder.pages.table
    np.testing.assert_array_equal(table[sibling], sibling_pages)
    np.testing.assert_array_equal(_slot_keys(decoder, sibling), before)
    assert table[slots[0], 2] != table[sibling, 2]  # its partly filled page: copied on write
    np.testing.assert_array_equal(table[slots[0], :2], table[sibling, :2])  # full: shared
    starts = [len(PROMPT)] + [len(p) for p in OTHER_PROMPTS]
    splits = 0
    for start, group in zip(starts, steps):
        for a, b in itertools.combinations(group, 2):
            shared = (start + _common_prefix(a.tokens, b.tokens)) // PAGE_SIZE
            held_a = table[a.slot, shared:decoder.pages.pages_held[a.slot]]
            held_b = table[b.slot, shared:decoder.pages.pages_held[b.slot]]
            np.testing.assert_array_equal(table[a.slot, :shared], table[b.slot, :shared])
            assert not set(held_a.tolist()) & set(held_b.tolist())
            splits += shared > start // PAGE_SIZE  # a page of the step itself is shared
        for s in group:
            assert decoder.pages.pages_held[s.slot] == -(-(start + len(s.tokens)) // PAGE_SIZE)
    assert splits > 0
    decoder.pages.check_counts()
    # Row copies would hold each step's pages apart; the trie holds each prefix once.
    held = sum(decoder.pages.pages_held[s.slot] for group in steps for s in group)
    assert decoder.pages.num_pages - decoder.pages.num_free_pages < held


def test_a_chunked_trie_borrows_pages_a_chunk_at_a_time(random_model):
    """Rows take pages as they reach them, from a loan sized to one chunk's rounds: with a
    24-token cap, chunks of 4 rounds and 4-token pages, the most pages the trie has out
    at once is what its steps hold at the end and at most two pages per row (a going
    row's 4 tokens reach one new page, a split's one more: the page it splits off in),
    well below borrowing every step's pages to its cap up front."""
    cap, chunk = 24, 4
    decoder = trie_decoder(random_model, Paging(page_size=PAGE_SIZE, num_pages=400),
                           step_chunk=chunk)
    _, slots = _groups(decoder)
    starts = decoder.lengths(slots)
    up_front = sum(count * (-(-min(start + cap, RANDOM_MAX_LEN) // PAGE_SIZE)
                            - start // PAGE_SIZE) for count, start in zip(COUNTS, starts))
    decoder.pages.reset_peak()
    before = decoder.pages.pages_in_use
    steps, _ = _trie(decoder, slots, cap=cap)
    held = decoder.pages.pages_in_use - before
    peak = decoder.pages.peak_pages_in_use - before
    rows = sum(COUNTS)
    assert held < peak <= held + 2 * rows, (held, peak)
    assert peak < up_front - rows, (peak, up_front)
    lengths = [len(s.tokens) for group in steps for s in group]
    assert min(lengths) < cap // 2 and lengths.count(cap) >= rows // 3  # short and long steps
    decoder.pages.check_counts()
    assert decoder.pages.lent.size == 0


def test_repeated_tries_leave_no_page_behind(random_model):
    decoder = trie_decoder(random_model, Paging(page_size=PAGE_SIZE, num_pages=200))
    for call in range(3):
        sibling, slots = _groups(decoder)
        steps, _ = _trie(decoder, slots, group_ids=range(10 * call, 10 * call + 4))
        decoder.pages.check_counts()
        _next_steps(decoder, steps)
        decoder.pages.check_counts()
        decoder.free([sibling, *(s.slot for group in steps for s in group)])
        assert decoder.pool.num_free == decoder.num_slots
        assert not decoder.pages.refcounts.any() and decoder.pages.num_free_pages == 200
        assert decoder.pages.lent.size == 0
    assert decoder.trace_counts["sample_trie"] == 1


def test_a_trie_whose_call_fails_gives_back_its_loan_and_its_spares(random_model):
    """A trie call that raises (a device error, an interrupt) hands back the pages lent to
    it and the spare slots: once the rows are freed the whole pool is free again."""
    decoder = trie_decoder(random_model, Paging(page_size=PAGE_SIZE, num_pages=200))
    sibling, slots = _groups(decoder)
    free_slots = decoder.pool.num_free

    def failing_call(*args):
        assert decoder.pages.lent.size > 0  # the call was lent its pages
        raise RuntimeError("the device call failed")
    decoder._sample_trie = failing_call
    with pytest.raises(RuntimeError, match="the device call failed"):
        _trie(decoder, slots)
    assert decoder.pages.lent.size == 0 and decoder.pool.num_free == free_slots
    decoder.pages.check_counts()
    decoder.free([sibling, *slots])
    assert decoder.pages.num_free_pages == 200


def test_a_trie_that_needs_more_pages_than_are_free_says_so_before_it_writes(random_model):
    """A group of 4 after a 10-token prompt shared with a sibling, cap 12: its own slot
    needs pages for positions 10-21 (4, the first a copy) and each of 3 splits at most 4."""
    decoder = trie_decoder(random_model, Paging(page_size=PAGE_SIZE, num_pages=13))
    sibling = decoder.allocate(1)
    decoder.prefill(sibling, [PROMPT])
    group = decoder.allocate(1, near=sibling)
    decoder.fork(sibling, group)
    cache, table = decoder.cache, decoder.pages.table.copy()
    refcounts, free_slots = decoder.pages.refcounts.copy(), decoder.pool.num_free
    args = dict(key_table=KEYS, key_rows=[0], group_ids=[1],
                params=SamplingParams.make(1, temperature=2.0), max_tokens=CAP)
    with pytest.raises(PagePoolExhausted, match="needs 16 new pages .* only 10 of 13"):
        sample_trie_steps(decoder, group, [4], **args)
    assert decoder.cache is cache and decoder.pool.num_free == free_slots
    np.testing.assert_array_equal(decoder.pages.table, table)
    np.testing.assert_array_equal(decoder.pages.refcounts, refcounts)
    assert decoder.pages.num_free_pages == 10 and decoder.pages.lent.size == 0
    assert decoder.lengths([*sibling, *group]).tolist() == [10, 10]
    decoder.pages.check_counts()
    (steps,), _ = sample_trie_steps(decoder, group, [2], **args)  # 4 + 4 pages: it fits
    assert sum(s.count for s in steps) == 2
    decoder.pages.check_counts()


def test_paged_tries_through_the_pallas_kernel_match_the_jnp_path(random_model):
    """The decode attention a GPU or TPU takes ("pallas", interpreted on CPU) reads the
    forked page tables as the jnp path does."""
    results = []
    for attention in ("jnp", "pallas"):
        decoder = trie_decoder(random_model, Paging(page_size=PAGE_SIZE, num_pages=400,
                                                    attention=attention))
        _, slots = _groups(decoder)
        results.append(_trie(decoder, slots)[0])
    for group, pallas_group in zip(*results):
        assert [(s.slot, s.tokens, s.count) for s in pallas_group] == \
            [(s.slot, s.tokens, s.count) for s in group]
        for s, p in zip(group, pallas_group):
            np.testing.assert_allclose(p.hidden, s.hidden, atol=1e-5)
