"""A trie sampled in chunks (``Decoder(step_chunk=...)``, ``trie_chunks``) is the trie one
call samples: the same rows, tokens, counts, groups, end reasons and page tables,
log-probabilities and hidden states to float32 rounding, on the slot pool and on pages;
and each chunk holds only the steps still going and the spares they may split into."""

import functools

import jax
import numpy as np
import pytest

from qstar_jax.decoding.data_shards import RowLayout
from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.paged_cache import Paging
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.step_sampler import EndReason
from qstar_jax.decoding.trie_chunks import ChunkedTrie
from qstar_jax.decoding.trie_sampler import TrieOutput, TrieStop
from qstar_jax.decoding.trie_steps import sample_trie_steps
from tests.decoding.tiny_models import (COUNTING_MAX_LEN, COUNTING_VOCAB, RANDOM_MAX_LEN,
                                        STEP_BUCKET)

CAP, PAGE_SIZE, NUM_PAGES = 12, 4, 400
NEWLINES, EOS = [5, 17, 40], 11  # some of the random model's likelier tokens end a step early
# Groups after prompts of whole and partly filled pages, one of 57 tokens (57 + 12 > 64:
# its steps end on a full slot), with counts 1 to 4.
PROMPTS = [[3, 14, 15, 9, 26, 5, 35, 8, 9, 7], [3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1],
           [(7 * i) % 64 for i in range(56)] + [3], [30, 31], [42]]
COUNTS = [4, 3, 1, 4, 2, 4]
PARAMS = SamplingParams.make(6, temperature=[0.7, 1.0, 0.5, 1.0, 0.7, 2.0],
                             top_k=[0, 0, 0, 0, 40, 0])
KEYS = jax.random.split(jax.random.key(7), 6)
OUTPUT_FIELDS = ("group", "count", "tokens", "num_tokens", "end_reason", "fed", "page_table")


def _random_decoder(model, step_chunk, paging=None):
    newline_table = np.zeros(64, bool)
    newline_table[NEWLINES] = True
    return Decoder(model, num_slots=64, max_len=RANDOM_MAX_LEN, newline_table=newline_table,
                   eos_ids=[EOS], min_batch_bucket=1, min_step_bucket=STEP_BUCKET,
                   step_chunk=step_chunk, paging=paging)


def _trie(decoder, prompts, counts, params, *, group_ids, max_tokens):
    """A trie after ``prompts`` sampled by ``Decoder.sample_trie``: (its row slots, its
    output, the slots' lengths); every slot freed again."""
    slots = decoder.allocate(len(prompts))
    decoder.prefill(slots, prompts)
    spares = decoder.allocate(sum(counts) - len(counts),
                              near=np.repeat(slots, np.subtract(counts, 1)))
    row_slots, out = decoder.sample_trie(
        slots, counts, spares, key_table=KEYS, key_rows=np.arange(len(counts)) % len(KEYS),
        group_ids=group_ids, params=params, max_tokens=max_tokens)
    lengths = decoder.lengths(row_slots)
    if decoder.pages is not None:
        decoder.pages.check_counts()
        np.testing.assert_array_equal(  # a step's slot holds exactly its tokens' pages
            decoder.pages.pages_held[row_slots], -(-lengths // PAGE_SIZE))
    decoder.free(row_slots)
    return row_slots, out, lengths


def _assert_same_trie(ours, theirs):
    (our_slots, our_out, our_lengths), (their_slots, their_out, their_lengths) = ours, theirs
    np.testing.assert_array_equal(our_slots, their_slots)
    np.testing.assert_array_equal(our_lengths, their_lengths)
    for name in OUTPUT_FIELDS:
        np.testing.assert_array_equal(getattr(our_out, name), getattr(their_out, name), name)
    for name in ("logprob", "hidden"):
        np.testing.assert_allclose(getattr(our_out, name), getattr(their_out, name),
                                   rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def one_call(random_model):
    return {"rows": _random_decoder(random_model, 0),
            "pages": _random_decoder(random_model, 0, Paging(page_size=PAGE_SIZE,
                                                              num_pages=NUM_PAGES))}


def _same_tries_as_one_call(chunked: Decoder, one_call: Decoder):
    """Three seeds' tries of PROMPTS by ``chunked``, each asserted to be ``one_call``'s;
    yields ``chunked``'s."""
    for seed in range(3):
        group_ids = [10 * seed + g for g in range(len(COUNTS))]
        ours = _trie(chunked, PROMPTS, COUNTS, PARAMS, group_ids=group_ids, max_tokens=CAP)
        theirs = _trie(one_call, PROMPTS, COUNTS, PARAMS, group_ids=group_ids,
                       max_tokens=CAP)
        _assert_same_trie(ours, theirs)
        yield ours


@pytest.mark.parametrize("cache", ["rows", "pages"])
@pytest.mark.parametrize("step_chunk", [2, 4])
def test_chunked_tries_are_the_one_call_tries(random_model, one_call, cache, step_chunk):
    paging = Paging(page_size=PAGE_SIZE, num_pages=NUM_PAGES) if cache == "pages" else None
    chunked = _random_decoder(random_model, step_chunk, paging)
    one_call_rounds = one_call[cache].trie_work["row_rounds"]
    ends, late_splits = set(), 0
    for ours in _same_tries_as_one_call(chunked, one_call[cache]):
        out = ours[1]
        steps = out.group >= 0
        ends.update(zip(out.num_tokens[steps].tolist(), out.end_reason[steps].tolist()))
        # A spare's step split off after the tokens it did not feed itself.
        split_at = (out.num_tokens - out.fed)[steps & (np.arange(len(out.group)) >= 6)]
        late_splits += int(np.sum(split_at >= step_chunk))
    if paging is not None:
        assert chunked.pages.num_free_pages == NUM_PAGES and chunked.pages.lent.size == 0
        assert not chunked.pages.refcounts.any()
    # What the comparison covered: steps that split off in a later chunk, and steps ending
    # for every reason, inside chunks and on their edges.
    assert late_splits > 0
    reasons = {reason for _, reason in ends}
    assert {EndReason.CAP, EndReason.NEWLINE, EndReason.EOS, EndReason.CACHE_FULL} <= reasons
    assert {n for n, _ in ends} >= {1, 3, 4, 5, 7, CAP}, ends
    # The chunks computed fewer rows' rounds than one call.
    one_call_rounds = one_call[cache].trie_work["row_rounds"] - one_call_rounds
    assert chunked.trie_work["row_rounds"] < one_call_rounds


@pytest.mark.parametrize("cache", ["rows", "pages"])
def test_a_trie_that_fails_after_a_chunk_leaves_its_slot_as_it_found_it(random_model, cache):
    """The first 2-round chunk writes its rows' positions and hidden states back to the
    device; when the next call fails (an interrupt, a device error), the group's slot holds
    its prompt alone again, on the host and on the device: its next steps are those of a
    slot the prompt was just prefilled into."""
    paging = Paging(page_size=PAGE_SIZE, num_pages=NUM_PAGES) if cache == "pages" else None
    decoder = _random_decoder(random_model, 2, paging)
    slot = decoder.allocate(1)
    decoder.prefill(slot, PROMPTS[:1])
    real, calls = decoder._sample_trie, []

    def second_call_fails(*args):
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return real(*args)
    decoder._sample_trie = second_call_fails
    with pytest.raises(RuntimeError, match="interrupted"):
        sample_trie_steps(decoder, slot, [3], key_table=KEYS, key_rows=[0], group_ids=[1],
                          params=SamplingParams.make(1, temperature=2.0),
                          max_tokens=CAP)
    assert len(calls) == 2
    length = len(PROMPTS[0])
    assert decoder.lengths(slot).tolist() == [length]
    assert np.asarray(decoder.cache.lengths)[slot].tolist() == [length]
    fresh = decoder.allocate(1)
    decoder.prefill(fresh, PROMPTS[:1])
    steps = [decoder.sample_steps(rows, problem_keys=KEYS[:1], node_ids=[0],
                                  params=SamplingParams.make(1, temperature=1.0), max_tokens=8)
             for rows in (slot, fresh)]
    assert steps[0].row_tokens(0) == steps[1].row_tokens(0)
    np.testing.assert_allclose(steps[0].hidden, steps[1].hidden, atol=1e-5)


def test_a_chunk_holds_the_steps_still_going_and_the_spares_they_may_take(counting_model):
    """The counting model continues i with i + 1, greedily; token 7 holds a newline, 9 is
    EOS. Chunks of 2 rounds: the first holds all 9 rows (5 groups, 4 spares; a bucket of
    16), the next three the steps still going (three, then the two that reach the cap)
    and the one spare the group of 2 among them may still take (a bucket of 4), and end
    the steps as the one call of 16 rows does."""
    newline_table = np.zeros(COUNTING_VOCAB, bool)
    newline_table[7] = True
    prompts, counts = [[1, 2, 3], [5], [10], [8], [20]], [1, 2, 2, 3, 1]
    expected = [([4, 5, 6, 7], EndReason.NEWLINE, 1), ([6, 7], EndReason.NEWLINE, 2),
                ([11, 12, 13, 14, 15, 16, 17, 18], EndReason.CAP, 2), ([9], EndReason.EOS, 3),
                ([21, 22, 23, 24, 25, 26, 27, 28], EndReason.CAP, 1)]
    tries, work = [], []
    for step_chunk in (2, 0):
        decoder = Decoder(counting_model, num_slots=16, max_len=COUNTING_MAX_LEN,
                          newline_table=newline_table, eos_ids=[9], min_batch_bucket=1,
                          min_step_bucket=STEP_BUCKET, step_chunk=step_chunk)
        tries.append(_trie(decoder, prompts, counts, SamplingParams.make(5),
                           group_ids=range(5), max_tokens=8))
        out = tries[-1][1]
        assert [(out.tokens[g, :out.num_tokens[g]].tolist(), out.end_reason[g], out.count[g])
                for g in range(5)] == expected
        np.testing.assert_array_equal(out.group, [0, 1, 2, 3, 4, -1, -1, -1, -1])
        work.append((dict(decoder.trie_work), decoder.trace_counts["sample_trie"]))
    _assert_same_trie(*tries)
    assert work == [({"calls": 4, "rows": 16 + 3 * 4, "row_rounds": 16 * 2 + 3 * 4 * 2}, 2),
                    ({"calls": 1, "rows": 16, "row_rounds": 16 * 8}, 1)]


def test_counts_up_to_eight_share_one_compiled_trie_call(counting_model):
    """K, the static bound on a group's count, is at least 8 (``MIN_COUNT_BUCKET``): tries
    of count 1 (best-of-N's later steps) and of counts up to 8 (its first) in row and draw
    blocks of the same size run one compiled program; each still samples its own
    counts."""
    decoder = Decoder(counting_model, num_slots=16, max_len=COUNTING_MAX_LEN,
                      newline_table=np.zeros(COUNTING_VOCAB, bool), eos_ids=[9],
                      min_batch_bucket=16, min_step_bucket=STEP_BUCKET)
    for counts in ([1, 1, 1], [8, 3], [5]):
        out = _trie(decoder, [[10 + g] for g in range(len(counts))], counts,
                    SamplingParams.make(len(counts)), group_ids=range(len(counts)),
                    max_tokens=4)[1]
        np.testing.assert_array_equal(out.count[:len(counts)], counts)
    assert decoder.trace_counts["sample_trie"] == 1


@pytest.fixture
def tiny_spare_budget(monkeypatch):
    """ChunkedTrie's rule with no floor and no share: a chunk holds only the spares that
    fill the padded block of its going rows, far fewer than the tries split into."""
    monkeypatch.setattr(ChunkedTrie, "spare_floor", 0)
    monkeypatch.setattr(ChunkedTrie, "spare_share", 0.0)


def _chunk_stops(monkeypatch) -> list[tuple[int, int, bool]]:
    """(rounds run, rounds asked, starved) of every chunk the decoders run from now on
    (one device: every row of a chunk ran its rounds)."""
    stops = []
    add = ChunkedTrie.add

    def recording_add(self, out, stop, rounds):
        add(self, out, stop, rounds)
        stops.append((int(stop.rounds.max()), rounds, bool(self.starved.any())))

    monkeypatch.setattr(ChunkedTrie, "add", recording_add)
    return stops


@pytest.mark.parametrize("cache", ["rows", "pages"])
def test_chunks_short_of_spares_stop_before_the_round_and_sample_the_one_call_tries(
        random_model, one_call, tiny_spare_budget, monkeypatch, cache):
    """Chunks of 3 rounds that hold too few spares stop before a round that needs more
    (at a chunk's first round and at a later one), leave every row as it was, and the
    next chunk, given the spares that round needs, draws its tokens again: the tries one
    call samples, the same spares taken and page tables, no page left over."""
    paging = Paging(page_size=PAGE_SIZE, num_pages=NUM_PAGES) if cache == "pages" else None
    chunked = _random_decoder(random_model, 3, paging)
    stops = _chunk_stops(monkeypatch)
    list(_same_tries_as_one_call(chunked, one_call[cache]))
    if paging is not None:
        assert chunked.pages.num_free_pages == NUM_PAGES and chunked.pages.lent.size == 0
        assert not chunked.pages.refcounts.any()
    starved_after = {ran for ran, rounds, starved in stops if starved}
    assert all(ran < rounds for ran, rounds, starved in stops if starved)
    assert 0 in starved_after and max(starved_after) > 0, stops
    assert chunked.trie_work["starved"] == len([s for s in stops if s[2]])


def test_chunks_of_a_trie_that_does_not_split_hold_few_spares(counting_model):
    """Greedy steps never split: 6 groups of 4 draws on the counting model, 8 tokens in
    chunks of 2 rounds. The rule before held every split the rows could make (6 + 18
    rows: 32 padded); the bounded rule holds 8 spares (6 + 8: a block of 16, filled to
    16 with 10 spares), so half the row-rounds, with the same tries as one call, each in
    one compiled variant."""
    prompts, counts = [[10], [11], [12], [20], [21], [22]], [4] * 6
    tries, work = {}, {}
    for rule, step_chunk in (("bounded", 2), ("all splits", 2), ("one call", 0)):
        decoder = Decoder(counting_model, num_slots=32, max_len=COUNTING_MAX_LEN,
                          newline_table=np.zeros(COUNTING_VOCAB, bool), eos_ids=[9],
                          min_batch_bucket=1, min_step_bucket=STEP_BUCKET,
                          step_chunk=step_chunk)
        with pytest.MonkeyPatch.context() as patch:
            if rule == "all splits":
                patch.setattr(ChunkedTrie, "spare_floor", 1 << 30)
            tries[rule] = _trie(decoder, prompts, counts, SamplingParams.make(6),
                                group_ids=range(6), max_tokens=8)
        work[rule] = (dict(decoder.trie_work), decoder.trace_counts["sample_trie"])
        out = tries[rule][1]
        np.testing.assert_array_equal(out.count[:6], counts)
        np.testing.assert_array_equal(out.tokens[:6, :8], np.array(prompts) + np.arange(1, 9))
    _assert_same_trie(tries["bounded"], tries["one call"])
    _assert_same_trie(tries["all splits"], tries["one call"])
    assert work == {"bounded": ({"calls": 4, "rows": 4 * 16, "row_rounds": 4 * 16 * 2}, 1),
                    "all splits": ({"calls": 4, "rows": 4 * 32, "row_rounds": 4 * 32 * 2}, 1),
                    "one call": ({"calls": 1, "rows": 32, "row_rounds": 32 * 8}, 1)}


def test_the_spare_rule_per_shard(monkeypatch):
    """Two shards of 3 groups drawn 8 times (21 spares each): 2 spares per shard (floor 2,
    no share), then as many more as fill the block the fullest shard pads to (3 + 2 rows:
    8), lowest first. After a chunk that starved on shard 0, its round needing 6 spares,
    shard 0 gets 2 + 6 (3 + 8 rows: a block of 16) and both shards the 13 that fill it;
    after a chunk that ran all its rounds, 5 again."""
    monkeypatch.setattr(ChunkedTrie, "spare_floor", 2)
    monkeypatch.setattr(ChunkedTrie, "spare_share", 0.0)
    row_shards = np.array([0, 0, 0, 1, 1, 1] + [0] * 21 + [1] * 21)
    trie = ChunkedTrie([8] * 6, row_shards, 4,
                       block=functools.partial(RowLayout.block_size, shards=2))
    np.testing.assert_array_equal(trie.rows, [*range(11), *range(27, 32)])
    assert trie.num_draws() == 32  # 24 draws a round on each shard

    def chunk_without_splits(rounds_run, needed):
        """The rows as they were, each shard having run ``rounds_run`` of 2 rounds."""
        rows = len(trie.rows)
        going = np.arange(rows) < 6
        on_shard = row_shards[trie.rows]
        trie.add(TrieOutput(group=np.where(going, np.arange(rows), -1).astype(np.int32),
                            count=np.where(going, 8, 0).astype(np.int32),
                            tokens=np.zeros((rows, 4), np.int32),
                            num_tokens=np.where(going, np.take(rounds_run, on_shard), 0),
                            logprob=np.zeros(rows, np.float32),
                            end_reason=np.full(rows, -1), hidden=np.zeros((rows, 3)),
                            fed=np.zeros(rows, np.int32)),
                 TrieStop(rounds=np.take(rounds_run, on_shard),
                          needed=np.take(needed, on_shard)), 2)

    chunk_without_splits([1, 2], [6, 1])
    np.testing.assert_array_equal(trie.starved, [True, False])
    np.testing.assert_array_equal(trie.rows, [*range(6), *range(6, 19), *range(27, 40)])
    chunk_without_splits([2, 2], [9, 9])
    np.testing.assert_array_equal(trie.rows, [*range(11), *range(27, 32)])


def test_the_spare_share_rounds_up_and_spares_no_chunk_took_hold_no_page(monkeypatch):
    """One shard of 13 groups drawn 3 times (26 spares), no floor: a quarter of 13 rows is
    3.25, so 4 spares (17 rows: a block of 32), filled to 32 with 19 spares, lowest first.
    After that chunk, rows 32-38, which it did not hold, have no page (P = 99) and every
    row it held the page table it left; num_draws counts the going groups' 39 draws. A
    chunk that stops after 1 of 2 rounds because every step ended did not starve."""
    monkeypatch.setattr(ChunkedTrie, "spare_floor", 0)
    trie = ChunkedTrie([3] * 13, np.zeros(13 + 26, np.int64), 4, no_page=99,
                       block=functools.partial(RowLayout.block_size, shards=1))
    np.testing.assert_array_equal(trie.rows, range(32))
    assert trie.num_draws() == 64
    rows = np.arange(32)
    steps = rows < 13
    tables = np.stack([rows, rows + 40], axis=1).astype(np.int32)

    def chunk(end_reason, rounds_run, needed, rounds):
        trie.add(TrieOutput(group=np.where(steps, rows, -1).astype(np.int32),
                            count=np.where(steps, 3, 0).astype(np.int32),
                            tokens=np.zeros((32, 4), np.int32),
                            num_tokens=steps.astype(np.int32),
                            logprob=np.zeros(32, np.float32),
                            end_reason=np.where(steps, end_reason, -1),
                            hidden=np.zeros((32, 3)), fed=steps.astype(np.int32),
                            page_table=tables),
                 TrieStop(rounds=np.full(32, rounds_run, np.int32),
                          needed=np.full(32, needed, np.int32)), rounds)

    chunk(-1, 1, 0, 1)
    np.testing.assert_array_equal(trie.out.page_table[:32], tables)
    np.testing.assert_array_equal(trie.out.page_table[32:], np.full((7, 2), 99))
    np.testing.assert_array_equal(trie.rows, range(32))
    chunk(EndReason.NEWLINE, 1, 5, 2)
    np.testing.assert_array_equal(trie.starved, [False])
    assert trie.rows.size == 0


def test_num_draws_is_the_fullest_shards():
    """Groups drawn 2 times on shard 0 and 8 + 8 on shard 1: 16 draws a round, a block of
    16 on either shard."""
    trie = ChunkedTrie([2, 8, 8], np.array([0, 1, 1, 0] + [1] * 14), 4,
                       block=functools.partial(RowLayout.block_size, shards=2))
    assert trie.num_draws() == 16
