"""Prefill from a start position: a prompt that continues a prefix its slot already holds
(a fork of a row that began the same way) computes only its own tokens, yet the slot then
holds what prefilling the whole prompt gives, and the row it was forked from is untouched,
on the slot pool and on pages (copy-on-write of the shared, partly filled page)."""

import jax
import numpy as np
import pytest

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.paged_cache import Paging
from qstar_jax.decoding.sampling import SamplingParams
from tests.decoding.stepping import generate_steps
from tests.decoding.tiny_models import RANDOM_MAX_LEN, STEP_BUCKET

PREFIX = [3, 14, 15, 9, 26, 5, 35, 8, 9, 7]  # 10 tokens: on 4-token pages, the third is partial
KEPT_TAIL = [2, 7, 1, 8, 2, 8]  # what the kept row holds after the prefix
NEW_TAIL = [4, 4, 6, 1, 12, 30, 21]  # what the new prompt holds after it


def _decoder(model, paging):
    """Attention windows from 8 positions: the child's 7 tokens after 10 end at 17, so its
    prefill call (16 tokens) attends over 32, which holds its last token's key (16
    would not)."""
    return Decoder(model, num_slots=16, max_len=RANDOM_MAX_LEN,
                   newline_table=np.zeros(64, bool), eos_ids=[], min_batch_bucket=2,
                   min_step_bucket=STEP_BUCKET, min_window_bucket=8, paging=paging)


def _greedy_tokens(decoder, slots):
    """Three greedy 5-token steps from each slot."""
    steps = generate_steps(decoder, slots, problem_keys=jax.random.split(jax.random.key(0),
                                                                          len(slots)),
                           node_ids=range(len(slots)),
                           params=SamplingParams.make(len(slots), temperature=0.0),
                           max_tokens=5, max_steps=3)
    rows = [[] for _ in slots]
    for batch in steps:
        for row in range(len(slots)):
            rows[row] += batch.row_tokens(row)
    return rows


@pytest.mark.parametrize("paging", [None, Paging(page_size=4, num_pages=64)],
                         ids=["slot pool", "pages"])
def test_a_prompt_prefilled_after_a_forked_prefix_is_the_whole_prompt(random_model,
                                                                       full_forward, paging):
    decoder = _decoder(random_model, paging)
    kept = decoder.allocate(1)
    decoder.prefill(kept, [PREFIX + KEPT_TAIL])
    child = decoder.allocate(1, near=kept)
    decoder.fork(kept, child)
    decoder.prefill(child, [NEW_TAIL], starts=[len(PREFIX)])

    whole = PREFIX + NEW_TAIL
    np.testing.assert_array_equal(decoder.lengths([*kept, *child]),
                                  [len(PREFIX + KEPT_TAIL), len(whole)])
    hidden, _ = full_forward(whole)
    np.testing.assert_allclose(np.asarray(decoder.cache.last_hidden)[child[0]], hidden[-1],
                               atol=1e-5)
    fresh = decoder.allocate(2)
    decoder.prefill(fresh, [whole, PREFIX + KEPT_TAIL])
    # The continued row decodes as a fresh prefill of its whole prompt, and the row it was
    # forked from as before: the child's writes never reached the page they shared.
    assert _greedy_tokens(decoder, [*child, *kept]) == _greedy_tokens(decoder, fresh)
    if paging is not None:
        decoder.free([*kept, *child, *fresh])
        decoder.pages.check_counts()
        assert decoder.pages.num_free_pages == paging.num_pages


def test_a_start_past_what_the_slot_holds_is_refused(random_decoder):
    slot = random_decoder.allocate(1)
    random_decoder.prefill(slot, [PREFIX])
    for starts in ([len(PREFIX) + 1], [-1], [0, 0]):
        with pytest.raises(ValueError, match=rf"starts \[{', '.join(map(str, starts))}\] must "
                                             r"give each slot a position in \[0, its length\] "
                                             r"\(lengths \[10\]\)"):
            random_decoder.prefill(slot, [NEW_TAIL], starts=starts)
    assert random_decoder.lengths(slot).tolist() == [len(PREFIX)]
    with pytest.raises(ValueError, match="room"):
        random_decoder.prefill(slot, [[1] * (RANDOM_MAX_LEN - 4)], starts=[len(PREFIX)])


def test_a_prompt_ending_on_a_page_end_leaves_the_next_shared_page_alone(random_model):
    # The kept row's 16 tokens fill four 4-token pages, which the child shares. The child
    # keeps 10 and writes 2, ending at position 12 on its third page's end, padded to the
    # call's 16: its fourth page, still the kept row's, is past what the call writes.
    decoder = _decoder(random_model, Paging(page_size=4, num_pages=64))
    kept = decoder.allocate(1)
    decoder.prefill(kept, [PREFIX + KEPT_TAIL])
    child = decoder.allocate(1, near=kept)
    decoder.fork(kept, child)
    last_page = decoder.pages.table[kept[0], 3]
    before = np.asarray(decoder.cache.k[:, last_page]), np.asarray(decoder.cache.v[:, last_page])
    decoder.prefill(child, [NEW_TAIL[:2]], starts=[len(PREFIX)])
    assert decoder.pages.table[kept[0], 3] == last_page
    np.testing.assert_array_equal(decoder.lengths([*kept, *child]), [16, 12])
    np.testing.assert_array_equal(decoder.cache.k[:, last_page], before[0])
    np.testing.assert_array_equal(decoder.cache.v[:, last_page], before[1])
