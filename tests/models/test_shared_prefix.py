"""Cascade attention (``shared_prefix``) on a hand-laid cache against plain softmax
attention over each row's whole sequence, on pages and on row slots."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qstar_jax.models.cache_pages import PagedRows
from qstar_jax.models.shared_prefix import SharedPrefixRows, write_slot_rows

HEADS, HEAD_DIM, PAGE_SIZE, SLOT_LEN = 2, 4, 4, 12
PREFIX_LEN, POSITIONS = 6, [9, 8]  # the prefix ends mid-page
TABLES = [[0, 1, 2], [0, 3, 4]]  # page 0 shared; each row its own copy of page 1
SCALE = 0.6


def sequences(rng, positions=POSITIONS, prefix_lens=(PREFIX_LEN,), row_group=(0, 0),
              kv_heads=1):
    """Each row's keys (or values) [T, K, D] up to its position: its group's shared
    prefix, then its own."""
    shared = [rng.normal(size=(length, kv_heads, HEAD_DIM)) for length in prefix_lens]
    return [np.concatenate([shared[group], rng.normal(size=(pos + 1 - prefix_lens[group],
                                                            kv_heads, HEAD_DIM))])
            for pos, group in zip(positions, row_group)]


def laid_out(seqs, *, paged: bool, tables=TABLES):
    """The rows' sequences in a one-layer cache; every other entry 100, which a read past
    a row's position or of a page not its own would show."""
    kv_heads = seqs[0].shape[1]
    if paged:
        cache = np.full((1, 8, kv_heads, PAGE_SIZE, HEAD_DIM), 100.0)
        for table, seq in zip(tables, seqs):
            for p, key in enumerate(seq):
                cache[0, table[p // PAGE_SIZE], :, p % PAGE_SIZE] = key
    else:
        cache = np.full((1, len(seqs), kv_heads, SLOT_LEN, HEAD_DIM), 100.0)
        for slot, seq in enumerate(seqs):
            cache[0, slot, :, :len(seq)] = seq.transpose(1, 0, 2)
    return jnp.asarray(cache, jnp.float32)


# On pages row 0's own keys (6 to 9) fill the suffix window and span two pages from
# mid-page; on row slots a window of 8 from position 6 runs past the slot's 12 positions,
# so it is read from 4 on.
@pytest.mark.parametrize("paged,suffix_window", [(True, 4), (False, 8)],
                         ids=["pages", "row slots"])
def test_both_partial_softmaxes_merge_to_attention_over_each_whole_row(paged, suffix_window):
    rng = np.random.default_rng(0)
    keys, values = sequences(rng), sequences(rng)
    q = rng.normal(size=(len(POSITIONS), 1, HEADS, HEAD_DIM))
    if paged:
        tables = jnp.asarray(TABLES, jnp.int32)
        rows, prefix_rows = PagedRows(page_table=tables), PagedRows(page_table=tables[:1])
    else:
        rows, prefix_rows = jnp.arange(2, dtype=jnp.int32), jnp.zeros(1, jnp.int32)
    cascade = SharedPrefixRows(
        rows=rows, prefix_rows=prefix_rows, prefix_len=jnp.asarray([PREFIX_LEN]),
        members=jnp.asarray([[0, 1]]), row_group=jnp.zeros(2, jnp.int32),
        row_member=jnp.arange(2, dtype=jnp.int32), prefix_window=8,
        suffix_window=suffix_window)
    attend = jax.jit(lambda rows, *args: rows.attend_one_token(*args, SCALE))  # one compile
    got = attend(cascade, jnp.asarray(q, jnp.float32), laid_out(keys, paged=paged),
                 laid_out(values, paged=paged), 0, jnp.asarray(POSITIONS)[:, None])
    np.testing.assert_allclose(np.asarray(got), attention_over_whole_rows(q, keys, values),
                               atol=1e-5)


# Two groups: group 0 (prefix 6) holds rows 1 and 2, group 1 (prefix 3) row 0 alone, its
# second member entry the padding row R = 3. Each group's prefix is read from one of its
# rows (row 1, row 0); two kv heads of two query heads each.
GROUP_POSITIONS, GROUP_PREFIX_LENS, ROW_GROUP = [5, 9, 7], (6, 3), (1, 0, 0)
GROUP_TABLES = [[5, 6, 7], [0, 1, 2], [0, 3, 4]]


@pytest.mark.parametrize("paged", [True, False], ids=["pages", "row slots"])
def test_rows_of_two_groups_attend_to_their_own_groups_prefix_over_two_kv_heads(paged):
    rng = np.random.default_rng(1)
    keys, values = (sequences(rng, GROUP_POSITIONS, GROUP_PREFIX_LENS, ROW_GROUP, kv_heads=2)
                    for _ in range(2))
    q = rng.normal(size=(len(GROUP_POSITIONS), 1, 2 * HEADS, HEAD_DIM))
    if paged:
        tables = jnp.asarray(GROUP_TABLES, jnp.int32)
        rows = PagedRows(page_table=tables)
        prefix_rows = PagedRows(page_table=tables[jnp.asarray([1, 0])])
    else:
        rows, prefix_rows = jnp.arange(3, dtype=jnp.int32), jnp.asarray([1, 0], jnp.int32)
    cascade = SharedPrefixRows(
        rows=rows, prefix_rows=prefix_rows, prefix_len=jnp.asarray(GROUP_PREFIX_LENS),
        members=jnp.asarray([[1, 2], [0, 3]]), row_group=jnp.asarray(ROW_GROUP),
        row_member=jnp.asarray([0, 0, 1]), prefix_window=8, suffix_window=4 if paged else 8)
    cache_k, cache_v = (laid_out(seqs, paged=paged, tables=GROUP_TABLES)
                        for seqs in (keys, values))
    got = jax.jit(lambda rows, *args: rows.attend_one_token(*args, SCALE))(
        cascade, jnp.asarray(q, jnp.float32), cache_k, cache_v, 0,
        jnp.asarray(GROUP_POSITIONS)[:, None])
    np.testing.assert_allclose(np.asarray(got), attention_over_whole_rows(q, keys, values),
                               atol=1e-5)


def attention_over_whole_rows(q, keys, values):
    """Softmax attention at SCALE of each row's query heads [R, 1, H, D] over its keys and
    values [T, K, D], query head h reading kv head h // (H / K)."""
    out = np.zeros_like(q)
    for row, (k, v) in enumerate(zip(keys, values)):
        group = q.shape[2] // k.shape[1]
        for head in range(q.shape[2]):
            scores = k[:, head // group] @ q[row, 0, head] * SCALE
            weights = np.exp(scores - scores.max())
            out[row, 0, head] = weights @ v[:, head // group] / weights.sum()
    return out


def test_slot_writes_land_at_their_positions_and_padding_past_the_slot_is_dropped():
    """cache [L, slots, K, M, D] = [2, 3, 1, 4, 1]: row 0 writes slot 2 at 1 and 3, row 1
    slot 0 at 0 and at 4, the padding position M, whose write is dropped, not clipped
    onto the slot's last position."""
    cache = jnp.zeros((2, 3, 1, 4, 1))
    new = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])[:, :, None, None]
    written = jax.jit(write_slot_rows)(cache, 1, jnp.asarray([2, 0]), new,
                                       jnp.asarray([[1, 3], [0, 4]]))
    assert not written[0].any()
    assert written[1, :, 0, :, 0].tolist() == [[3, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 2]]
