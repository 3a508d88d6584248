"""A step call attends over a window of each slot (``Decoder.attention_window``), not its
whole max_len row: it samples the same tokens as attending over whole rows, rows that end
on the window's last position included, for the step sampler, the trie sampler and a
paged cache alike.

Log-probabilities and hidden states agree to float32 rounding, not bit for bit: XLA
associates a sum over a 16- or 32-position window differently from one over 64 (1-ulp
differences here; on SmolLM2, windows of 256 and 768 gave equal bits,
``experiments/profile_decode.py``)."""

import jax
import numpy as np
import pytest

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.paged_cache import Paging
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.trie_steps import sample_trie_steps
from tests.decoding.stepping import assert_same_step_batch, assert_same_trie_groups
from tests.decoding.tiny_models import RANDOM_MAX_LEN, STEP_BUCKET

PROMPTS = [[3, 14, 15, 9, 26], [5, 35, 8, 9, 7, 9, 32, 3, 8, 4, 6], [2, 7, 1]]
# Per call, each row's cap: [length + cap] = [8, 16, 5] (window 16, row 1 ends on its
# last position), then [16, 32, 9] (window 32, row 1 again on the edge), then
# [32, 48, 25] (window 64: the whole row).
CAPS = [[3, 5, 2], [8, 16, 4], [16, 16, 16]]
WINDOWS = [16, 32, 64]
PARAMS = SamplingParams.make(3, temperature=[0.0, 1.0, 0.7], top_k=[0, 0, 40],
                             top_p=[1.0, 1.0, 0.95])


def _decoder(model, min_window_bucket, paging=None):
    return Decoder(model, num_slots=8, max_len=RANDOM_MAX_LEN,
                   newline_table=np.zeros(64, bool), eos_ids=[], min_batch_bucket=2,
                   min_step_bucket=STEP_BUCKET, min_window_bucket=min_window_bucket,
                   paging=paging)


def _steps(decoder, *, check_windows):
    slots = decoder.allocate(3)
    decoder.prefill(slots, PROMPTS)
    out = []
    for call, (caps, window) in enumerate(zip(CAPS, WINDOWS)):
        got = decoder.attention_window(slots, caps)
        assert got == (window if check_windows else RANDOM_MAX_LEN)
        step = decoder.sample_steps(slots, problem_keys=jax.random.split(jax.random.key(7), 3),
                                    node_ids=[call, 10 + call, 20 + call], params=PARAMS,
                                    max_tokens=caps)
        np.testing.assert_array_equal(step.num_tokens, caps)
        out.append(step)
    return out, decoder.lengths(slots)


@pytest.mark.parametrize("paged", [False, True])
def test_windowed_steps_are_exactly_the_whole_row_steps(random_model, paged):
    paging = Paging(page_size=4, num_pages=64) if paged else None
    windowed, lengths = _steps(_decoder(random_model, 8, paging), check_windows=True)
    whole, whole_lengths = _steps(_decoder(random_model, RANDOM_MAX_LEN, paging),
                                  check_windows=False)
    np.testing.assert_array_equal(lengths, [32, 48, 25])
    np.testing.assert_array_equal(lengths, whole_lengths)
    for ours, theirs in zip(windowed, whole):
        for name in ("tokens", "num_tokens", "end_reason"):
            np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name), name)
        for name in ("logprobs", "hidden"):
            np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name), rtol=1e-5,
                                       atol=1e-6, err_msg=name)


@pytest.mark.parametrize("paged", [False, True])
def test_windowed_trie_steps_are_exactly_the_whole_row_steps(random_model, paged):
    """Groups whose tries split (a spare copies its parent's window of the cache, or forks
    its page table), one of them ending on the window's last position: prompt of 11
    tokens, cap 5, window 16."""
    paging = Paging(page_size=4, num_pages=64) if paged else None
    results = []
    for min_window in (8, RANDOM_MAX_LEN):
        decoder = _decoder(random_model, min_window, paging)
        slots = decoder.allocate(2)
        decoder.prefill(slots, PROMPTS[:2])
        assert decoder.attention_window(slots, 5) == (16 if min_window == 8 else 64)
        steps, fed = sample_trie_steps(
            decoder, slots, [3, 3], key_table=jax.random.split(jax.random.key(1), 2),
            key_rows=[0, 1], group_ids=[5, 6], params=SamplingParams.make(2, temperature=30.0),
            max_tokens=5)
        # Each distinct step continues from its own slot: one more step through them all.
        rows = [s.slot for group in steps for s in group]
        after = decoder.sample_steps(rows, problem_keys=jax.random.split(jax.random.key(2),
                                                                         len(rows)),
                                     node_ids=range(len(rows)),
                                     params=SamplingParams.make(len(rows), temperature=1.0),
                                     max_tokens=4)
        results.append((steps, fed, after))
    (steps, fed, after), (whole_steps, whole_fed, whole_after) = results
    assert fed == whole_fed and sum(len(group) for group in steps) > 2  # the tries split
    assert_same_trie_groups(steps, whole_steps)
    assert_same_step_batch(after, whole_after)


def test_a_window_over_three_quarters_of_the_row_is_the_whole_row(random_model):
    """With max_len 40, ends up to 16 attend over 16 positions, but an end of 25 (a
    bucket of 32, four fifths of the row) over all 40: a window that saves so little
    is not worth a compiled variant of its own."""
    decoder = Decoder(random_model, num_slots=4, max_len=40, newline_table=np.zeros(64, bool),
                      eos_ids=[], min_window_bucket=8)
    slots = decoder.allocate(2)
    decoder.prefill(slots, PROMPTS[:2])  # lengths 5 and 11
    assert decoder.attention_window(slots, 5) == 16
    assert decoder.attention_window(slots, [5, 14]) == 40
    # An end of 17 (5 + 12: its last token at position 16) needs 32 positions: all 40.
    assert decoder.attention_window(slots, [12, 0]) == 40


def test_a_window_of_two_thirds_of_the_row_is_kept(random_model):
    """With max_len 48, a window of 32 reads two thirds of the row, under three quarters:
    ends of 17 and 32 attend over 32 positions, an end of 33 (a bucket of 64) over all 48."""
    decoder = Decoder(random_model, num_slots=4, max_len=48, newline_table=np.zeros(64, bool),
                      eos_ids=[], min_window_bucket=8)
    slots = decoder.allocate(2)  # empty: a row's end is its cap
    assert [decoder.attention_window(slots, caps) for caps in ([16, 1], [17, 1], [3, 32],
                                                               [33, 0])] == [16, 32, 32, 48]
