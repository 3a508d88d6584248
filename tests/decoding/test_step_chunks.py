"""A step sampled in chunks (``Decoder(step_chunk=...)``, ``step_chunks``) is the step one
call samples: the same tokens, lengths and end reasons, log-probabilities and hidden
states to float32 rounding (other batch shapes round differently), on the slot pool and
on pages; and each chunk holds only the rows still going."""

import jax
import numpy as np
import pytest

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.paged_cache import Paging
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.step_sampler import EndReason
from tests.decoding.stepping import generate_steps
from tests.decoding.tiny_models import (COUNTING_MAX_LEN, COUNTING_VOCAB, RANDOM_MAX_LEN,
                                        STEP_BUCKET)

# The random model's steps end on its own draws: every 8th token holds a newline, 63 is
# EOS. Row 3 fills its slot within a few tokens; the caps end rows on 4-token chunk
# edges and inside chunks.
NEWLINES = np.arange(64) % 8 == 0
EOS = 63
PROMPTS = [[3, 14, 15, 9, 26], [5, 35, 8, 9, 7, 9, 32, 3, 8, 4, 6], [2, 7, 1],
           list(range(1, 62)), [11, 12], [40, 41, 42, 43], [30]]
CAPS = [16, 4, 8, 12, 16, 13, 5]
PARAMS = SamplingParams.make(7, temperature=[1.0, 1.0, 0.7, 1.0, 0.0, 1.0, 1.0],
                             top_k=[0, 0, 40, 0, 0, 0, 20], top_p=[1.0, 1.0, 0.95, 1.0, 1.0,
                                                                  1.0, 1.0])


def _random_decoder(model, step_chunk, paging=None):
    return Decoder(model, num_slots=8, max_len=RANDOM_MAX_LEN, newline_table=NEWLINES,
                   eos_ids=[EOS], min_batch_bucket=1,
                   min_step_bucket=STEP_BUCKET, step_chunk=step_chunk, paging=paging)


def _trajectories(decoder, seed):
    """Every row's steps until it ends its trajectory or 4 steps, as StepBatches."""
    slots = decoder.allocate(len(PROMPTS))
    decoder.prefill(slots, PROMPTS)
    steps = list(generate_steps(decoder, slots,
                                problem_keys=jax.random.split(jax.random.key(seed), 7),
                                node_ids=[10 * seed + r for r in range(7)], params=PARAMS,
                                max_tokens=CAPS, max_steps=4))
    lengths = decoder.lengths(slots)
    if decoder.pages is not None:
        # The pages of each row's tokens and no more, a row that stopped short on a
        # page's end included (seed 1's row 0, 20 tokens on a newline).
        np.testing.assert_array_equal(decoder.pages.pages_held[slots],
                                      -(-lengths // decoder.pages.page_size))
    decoder.free(slots)
    return steps, lengths


def _assert_same_steps(ours, theirs):
    assert len(ours) == len(theirs)
    for got, want in zip(ours, theirs):
        for name in ("slots", "tokens", "num_tokens", "end_reason"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), name)
        for name in ("logprobs", "hidden"):
            np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-5,
                                       atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def one_call(random_model):
    return _random_decoder(random_model, 0)


@pytest.mark.parametrize("step_chunk", [1, 3, 4, 16])
def test_chunked_steps_are_the_one_call_steps(random_model, one_call, step_chunk):
    chunked = _random_decoder(random_model, step_chunk)
    ends = set()
    for seed in range(3):
        ours, our_lengths = _trajectories(chunked, seed)
        theirs, their_lengths = _trajectories(one_call, seed)
        _assert_same_steps(ours, theirs)
        np.testing.assert_array_equal(our_lengths, their_lengths)
        for step in theirs:
            ends.update(zip(step.num_tokens.tolist(), step.end_reason.tolist()))
    # The draws end rows for every reason, on a 4-token chunk's edge (at 4 tokens) and
    # inside the first, second and fourth chunk.
    assert {(4, EndReason.CAP), (4, EndReason.NEWLINE), (4, EndReason.EOS),
            (3, EndReason.NEWLINE), (5, EndReason.CAP), (7, EndReason.EOS),
            (10, EndReason.NEWLINE), (13, EndReason.CAP), (1, EndReason.CACHE_FULL)} <= ends


def test_each_row_ends_for_its_own_reason_on_a_chunk_edge(counting_model,
                                                         shared_counting_decoder):
    """Chunks of 2 tokens: the counting model continues i with i + 1; token 7 holds a
    newline, 9 is EOS. Rows end on a chunk's last token for each reason, inside a chunk,
    or at the start (a full slot), as the one call ends them."""
    newline_table = np.zeros(COUNTING_VOCAB, bool)
    newline_table[7] = True
    chunked = Decoder(counting_model, num_slots=8, max_len=COUNTING_MAX_LEN,
                      newline_table=newline_table, eos_ids=[9], min_batch_bucket=1,
                      min_step_bucket=STEP_BUCKET, step_chunk=2)
    two_short_of_full = [(i - 9) % 32 for i in range(COUNTING_MAX_LEN - 2)]  # ends with 20
    prompts = [[1, 2, 3, 4], [6, 7], [10], two_short_of_full, [5],
               list(range(COUNTING_MAX_LEN)), [2], [0]]
    caps = [16, 16, 4, 16, 2, 16, 3, 16]
    expected = [([5, 6, 7], EndReason.NEWLINE), ([8, 9], EndReason.EOS),
                ([11, 12, 13, 14], EndReason.CAP), ([21, 22], EndReason.CACHE_FULL),
                ([6, 7], EndReason.NEWLINE), ([], EndReason.CACHE_FULL),
                ([3, 4, 5], EndReason.CAP), ([1, 2, 3, 4, 5, 6, 7], EndReason.NEWLINE)]
    steps = []
    for decoder in (chunked, shared_counting_decoder):
        slots = decoder.allocate(len(prompts))
        decoder.prefill(slots, prompts)
        steps.append(decoder.sample_steps(
            slots, problem_keys=jax.random.split(jax.random.key(0), 8), node_ids=[0] * 8,
            params=SamplingParams.make(8), max_tokens=caps))
        assert [(steps[-1].row_tokens(i), EndReason(int(steps[-1].end_reason[i])))
                for i in range(8)] == expected
        np.testing.assert_array_equal(decoder.lengths(slots),
                                      [len(p) + len(t) for p, (t, _) in zip(prompts, expected)])
        decoder.free(slots)
    _assert_same_steps(steps[:1], steps[1:])
    # Chunks of all 8 rows (one full from the start), of rows 0, 2, 6 and 7 (padded to
    # 4), then of row 7 alone twice, the last for 1 token.
    assert dict(chunked.step_work) == {"calls": 4, "rows": 8 + 4 + 1 + 1,
                                       "row_tokens": 8 * 2 + 4 * 2 + 1 * 2 + 1 * 1,
                                       "sampled_tokens": 23, "row_window_calls": 4}


def test_a_chunk_holds_only_the_rows_still_going(random_model):
    """One row of 16 tokens and seven of 1, in chunks of 4: the first chunk computes 8
    rows for 4 tokens, then the long row goes on alone; one call computes all 8 rows for
    16 tokens."""
    work = []
    for step_chunk in (4, 0):
        decoder = Decoder(random_model, num_slots=8, max_len=RANDOM_MAX_LEN,
                          newline_table=np.zeros(64, bool), eos_ids=[], min_batch_bucket=1,
                          min_step_bucket=STEP_BUCKET, step_chunk=step_chunk)
        slots = decoder.allocate(8)
        decoder.prefill(slots, [[r + 1] * (r + 2) for r in range(8)])
        step = decoder.sample_steps(slots, problem_keys=jax.random.split(jax.random.key(1), 8),
                                    node_ids=range(8), params=SamplingParams.make(8),
                                    max_tokens=[16] + [1] * 7)
        np.testing.assert_array_equal(step.num_tokens, [16] + [1] * 7)
        work.append((dict(decoder.step_work), decoder.trace_counts["sample_step"]))
    assert work == [({"calls": 4, "rows": 8 + 3 * 1, "row_tokens": 8 * 4 + 3 * 4,
                      "sampled_tokens": 23, "row_window_calls": 4}, 2),  # 8 rows and 1
                    ({"calls": 1, "rows": 8, "row_tokens": 8 * 16, "sampled_tokens": 23,
                      "row_window_calls": 1}, 1)]


@pytest.mark.parametrize("step_chunk", [2, 3])
def test_chunked_steps_on_pages_are_the_one_call_steps_and_keep_the_page_counts(
        random_model, one_call, step_chunk):
    """On a paged cache with forks that share their prefix's pages (the partly filled
    one copied on the first write), chunks write into the pages owned up to the cap and
    the pages past what each row wrote go back after the step."""
    page_size, num_pages = 4, 64
    paged = _random_decoder(random_model, step_chunk,
                            Paging(page_size=page_size, num_pages=num_pages, attention="jnp"))
    for seed in range(2):
        ours, our_lengths = _trajectories(paged, seed)
        theirs, their_lengths = _trajectories(one_call, seed)
        _assert_same_steps(ours, theirs)
        np.testing.assert_array_equal(our_lengths, their_lengths)
        paged.pages.check_counts()
        assert paged.pages.num_free_pages == num_pages
    steps, rows = [], []
    for decoder in (paged, one_call):
        parent, first, second = decoder.allocate(3)
        decoder.prefill([parent], [PROMPTS[1]])  # 11 tokens: the third page partly filled
        decoder.fork([parent, parent], [first, second])
        rows.append([parent, first, second])
        steps.append(decoder.sample_steps(
            rows[-1], problem_keys=jax.random.split(jax.random.key(5), 3), node_ids=[0, 1, 2],
            params=SamplingParams.make(3, temperature=1.0), max_tokens=[3, 9, 13]))
    _assert_same_steps(steps[:1], steps[1:])
    lengths = paged.lengths(rows[0])
    np.testing.assert_array_equal(lengths, one_call.lengths(rows[1]))
    pages = paged.pages
    pages.check_counts()
    np.testing.assert_array_equal(pages.pages_held[rows[0]], -(-lengths // page_size))
    # The two full prefix pages are shared by all three rows; each row owns the rest.
    assert len({tuple(pages.table[s, :2]) for s in rows[0]}) == 1
    owned = sum(-(-int(n) // page_size) - 2 for n in lengths)
    assert pages.num_free_pages == num_pages - 2 - owned
    paged.free(rows[0])
    one_call.free(rows[1])
    assert pages.num_free_pages == num_pages and not pages.refcounts.any()
