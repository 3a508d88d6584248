"""A CPU step loop over a copy of its rows' cache windows (``models/row_windows``) samples
what the loop that gathers each row's window at every token samples, and leaves the pool
as that loop leaves it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.paged_cache import Paging
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.step_sampler import (PAGED_WINDOWS_SHARE, paged_windows_fit,
                                             resolve_row_windows)
from qstar_jax.models import row_windows
from qstar_jax.models.cache_pages import PagedRows
from qstar_jax.models.llama import LlamaModel
from qstar_jax.parallel import make_mesh
from tests.decoding.full_forward import full_forward_of, greedy_reference
from tests.decoding.stepping import assert_same_step_batch
from tests.decoding.tiny_models import RANDOM_MAX_LEN, STEP_BUCKET

PROMPTS = [[3, 14, 15, 9, 26],
           [5, 35, 8, 9, 7, 9, 32, 3, 8, 4, 6, 2, 9, 17, 40, 1, 22, 3, 60, 11], [2, 7, 1]]
# Three steps a row, rows stopping apart. Row 1 (20 tokens) ends its first step on
# position 31, the last of that call's 32-position window, and its third on 63, the
# pool row's last.
CAPS = [[9, 12, 4], [12, 16, 3], [2, 16, 5]]
PARAMS = SamplingParams.make(3, temperature=[0.0, 1.0, 0.7], top_k=[0, 0, 40],
                             top_p=[1.0, 1.0, 0.95])


# 8-token pages, as many as the slots' rows: a row's last page ends on position 63.
PAGING = Paging(page_size=8, num_pages=8 * RANDOM_MAX_LEN // 8)


def _decoder(model, row_windows, mesh=None, paging=None):
    return Decoder(model, num_slots=8, max_len=RANDOM_MAX_LEN,
                   newline_table=np.zeros(model.config.vocab_size, bool), eos_ids=[],
                   min_batch_bucket=4, min_step_bucket=STEP_BUCKET, min_window_bucket=16,
                   row_windows=row_windows, mesh=mesh, paging=paging)


def _slot_rows(decoder, name: str, slot: int, length: int) -> np.ndarray:
    """The cache's keys or values (``name``) of ``slot``'s first ``length`` positions,
    [L, K, length, D], read through its page table on pages."""
    pool = np.asarray(getattr(decoder.cache, name))
    if decoder.pages is None:
        return pool[:, slot, :, :length]
    pages = decoder.pages.table[slot, :-(-length // decoder.pages.page_size)]
    rows = pool[:, pages]  # [L, n, K, S, D]
    layers, entries, heads, page_size, dim = rows.shape
    return rows.transpose(0, 2, 1, 3, 4).reshape(layers, heads, entries * page_size,
                                                 dim)[:, :, :length]


def _two_steps(decoder, prompts=PROMPTS):
    """Three steps of three rows (padded to four: one padding row) after a prefill into
    slots 5, 2 and 0, out of order, beside a filled slot no row steps."""
    decoder.allocate(8)
    bystander = 4
    decoder.prefill([bystander], [[1, 2, 3, 4]])
    slots = [5, 2, 0]
    decoder.prefill(slots, prompts)
    assert [decoder.attention_window(slots, caps) for caps in CAPS[:1]] == [32]
    steps = [decoder.sample_steps(slots, problem_keys=jax.vmap(jax.random.key)(np.arange(3)),
                                  node_ids=[0, 1, 2], params=PARAMS, max_tokens=caps)
             for caps in CAPS]
    return steps, slots + [bystander]


@pytest.mark.parametrize("window,mesh,paging", [
    (None, False, None), (3, False, None), (None, True, None), (None, False, PAGING),
    (3, True, PAGING)], ids=["full attention", "sliding window", "one-device mesh", "pages",
                             "pages, sliding window, one-device mesh"])
def test_row_windows_sample_what_gathering_samples_and_leave_the_same_pool(random_model,
                                                                           window, mesh,
                                                                           paging):
    """With ``mesh`` the loop over row windows runs as a run builds it on one device, in
    the shard_map over a 1x1 mesh, against gathering with no mesh. On pages (8 tokens
    each, a call's window ends on a page's last position) both loops give the slots the
    same pages, and the pages hold the same keys and values."""
    model = random_model
    if window is not None:
        config = dataclasses.replace(random_model.config, sliding_windows=(window,) * 2)
        model = LlamaModel(config, rngs=nnx.Rngs(0))
        model.lm_head.kernel[...] = model.lm_head.kernel[...] * 50
    results = {}
    for copied in (True, False):
        on = make_mesh(1, 1, devices=jax.devices()[:1]) if mesh and copied else None
        decoder = _decoder(model, copied, on, paging)
        assert decoder.row_windows is copied
        steps, filled = _two_steps(decoder)
        results[copied] = steps, decoder, filled
    (copied_steps, copied, filled), (gathered_steps, gathered, _) = results[True], results[False]
    for step, expected in zip(copied_steps, gathered_steps):
        assert_same_step_batch(step, expected)
    np.testing.assert_array_equal(copied.lengths(filled), gathered.lengths(filled))
    assert copied.lengths(filled)[1] == RANDOM_MAX_LEN  # row 1 filled its slot
    assert copied.step_work["row_window_calls"] == copied.step_work["calls"] > 0
    assert gathered.step_work["row_window_calls"] == 0
    if paging is not None:
        np.testing.assert_array_equal(copied.pages.table, gathered.pages.table)
    for name in ("k", "v"):
        for slot, length in zip(filled, copied.lengths(filled)):
            np.testing.assert_allclose(_slot_rows(copied, name, slot, length),
                                       _slot_rows(gathered, name, slot, length),
                                       rtol=1e-5, atol=1e-6, err_msg=f"{name}, slot {slot}")
        # Nothing else was written: every other position of the pool as gathering left it.
        np.testing.assert_allclose(np.asarray(getattr(copied.cache, name)),
                                   np.asarray(getattr(gathered.cache, name)),
                                   rtol=1e-5, atol=1e-6, err_msg=name)
    # The greedy row against a whole-sequence forward pass of its tokens.
    history = list(PROMPTS[0])
    for step in copied_steps:
        tokens, logprobs, _ = greedy_reference(full_forward_of(model), history,
                                               step.num_tokens[0])
        assert step.row_tokens(0) == tokens
        np.testing.assert_allclose(step.logprobs[0, :len(tokens)], logprobs, atol=1e-5)
        history.extend(tokens)


def test_a_row_window_write_past_the_window_is_dropped():
    """``take`` copies the rows' windows (keys transposed), ``RowWindows.write`` writes a
    token where its row stands and drops one at W or past it (a finished or padding row),
    and ``put`` writes back into their slots the positions from each row's start to its
    end, none at W or past it, and none of a row whose end is its start (a padding
    row)."""
    layers, slots, heads, max_len, dim, window = 2, 4, 1, 6, 2, 4
    rng = np.random.default_rng(0)
    cache_k = jnp.asarray(rng.standard_normal((layers, slots, heads, max_len, dim)), jnp.float32)
    cache_v = cache_k + 100
    rows = jnp.array([3, 1, 0], jnp.int32)
    keys, values = row_windows.take(cache_k, cache_v, rows, window)
    assert [k.shape for k in keys] == [(3, heads, dim, window)] * layers
    np.testing.assert_array_equal(values[1], cache_v[1, rows, :, :window])
    np.testing.assert_array_equal(keys[1], cache_k[1, rows, :, :window].swapaxes(2, 3))
    new = jnp.full((3, 1, heads, dim), -7.0)
    keys, values, layer_keys, layer_values = row_windows.RowWindows().write(
        keys, values, 1, new, new - 1, jnp.array([[2], [window], [0]], jnp.int32))
    assert keys[1] is layer_keys and values[1] is layer_values
    # Before row 0's start, and past row 2's end: not written back.
    keys = (keys[0].at[0, :, :, 0].set(55.0).at[2, :, :, 1].set(66.0),) + keys[1:]
    # Row 0 from its start, 2, to its end, 5: 2 and 3, and 4, past W, nowhere; row 1
    # ends where it starts; row 2 writes position 0 alone.
    written_k, written_v = row_windows.put(
        cache_k, cache_v, rows, keys, values, jnp.array([2, 1, 0], jnp.int32),
        jnp.array([5, 1, 1], jnp.int32), 3)
    expected_k = cache_k.at[1, 3, :, 2].set(-7.0).at[1, 0, :, 0].set(-7.0)
    expected_v = cache_v.at[1, 3, :, 2].set(-8.0).at[1, 0, :, 0].set(-8.0)
    np.testing.assert_array_equal(written_k, expected_k)
    np.testing.assert_array_equal(written_v, expected_v)


def test_row_windows_over_pages_take_whole_pages_and_put_back_into_them():
    """Over pages ``take`` copies the pages that hold each row's first W positions, in
    position order (whole pages: W rounded up to the page size), a table entry past the
    pool reading padding, and ``put`` writes a row's positions [start, end) into the
    pages its table names for them, nothing into a page it does not name (the pool's
    P: none) nor into another row's page past its end."""
    layers, num_pages, heads, page_size, dim = 2, 6, 1, 2, 2
    rng = np.random.default_rng(1)
    cache_k = jnp.asarray(rng.standard_normal((layers, num_pages, heads, page_size, dim)),
                          jnp.float32)
    cache_v = cache_k + 100
    # Row 0: positions 0-3 in pages 4 and 1, its third entry free; row 1: pages 2 and 5,
    # then page 0, which row 1 does not own (row 0's end keeps it out of page 0 too).
    tables = PagedRows(page_table=jnp.array([[4, 1, num_pages], [2, 5, 0]], jnp.int32),
                       attention="jnp")
    keys, values = row_windows.take(cache_k, cache_v, tables, 5)
    assert [k.shape for k in keys] == [(2, heads, dim, 6)] * layers  # pages of 2: W 6
    for row, pages in enumerate([[4, 1], [2, 5, 0]]):
        for copies, pool, keys_transposed in ((values, cache_v, False), (keys, cache_k, True)):
            expected = np.concatenate([np.asarray(pool[1, p]) for p in pages], axis=1)
            got = copies[1][row].swapaxes(1, 2) if keys_transposed else copies[1][row]
            np.testing.assert_array_equal(got[:, :expected.shape[1]], expected)
    keys = tuple(k.at[:].set(-7.0) for k in keys)
    values = tuple(v.at[:].set(-8.0) for v in values)
    # Row 0 writes 1-2 (page 4's second position, page 1's first); row 1 writes 3 (page
    # 5's second), its end; 4 and 5, in page 0 below W, are past it: not written.
    written_k, written_v = row_windows.put(cache_k, cache_v, tables, keys, values,
                                           jnp.array([1, 3], jnp.int32),
                                           jnp.array([3, 4], jnp.int32), 3)

    def written(pool, value):
        return pool.at[:, 4, :, 1].set(value).at[:, 1, :, 0].set(value).at[
            :, 5, :, 1].set(value)

    np.testing.assert_array_equal(written_k, written(cache_k, -7.0))
    np.testing.assert_array_equal(written_v, written(cache_v, -8.0))


def test_row_windows_run_on_a_cpu_where_they_can_and_are_refused_where_they_cannot(
        random_model):
    """By default ("auto") a CPU's decoder runs over row windows, on row slots and on
    pages, and gathers on pages read by the paged-attention kernel, over stacked weights,
    on a mesh whose model axis splits the layers and on a GPU or TPU (untimed there);
    asked for where they cannot run, they are refused."""
    def decoder(**options):
        return Decoder(random_model, num_slots=2, max_len=16,
                       newline_table=np.zeros(64, bool), **options)

    pages = Paging(page_size=4, num_pages=8)
    kernel_pages = Paging(page_size=4, num_pages=8, attention="pallas")  # interpreted
    assert decoder().row_windows
    assert decoder(paging=pages).row_windows
    assert not decoder(paging=kernel_pages).row_windows
    assert not decoder(layer_weights="stacked").row_windows
    assert not decoder(row_windows=False).row_windows
    message = "row_windows needs whole layers on each device"
    with pytest.raises(ValueError, match=message):
        decoder(paging=kernel_pages, row_windows=True)
    with pytest.raises(ValueError, match=message):
        decoder(layer_weights="stacked", row_windows=True)
    able = dict(split_model=False, per_layer=True, paged_kernel=False)
    with pytest.raises(ValueError, match=message):  # a 1x2 mesh needs two devices
        resolve_row_windows(True, **{**able, "split_model": True})
    assert not resolve_row_windows(None, **{**able, "split_model": True})
    assert [resolve_row_windows(None, **able, backend=backend)
            for backend in ("cpu", "gpu", "tpu")] == [True, False, False]


def test_a_paged_call_whose_windows_outgrow_their_share_of_the_pool_gathers(random_model):
    """By default ("auto") on pages a call's row windows hold at most PAGED_WINDOWS_SHARE
    (a sixteenth) of the pool's positions, counted in whole pages; a call of more gathers,
    with the same tokens, unless row windows were asked for ("copy")."""
    assert PAGED_WINDOWS_SHARE == 1 / 16
    assert paged_windows_fit(4, 64, 8, 512)  # 256 of 4096 positions
    assert paged_windows_fit(4, 57, 8, 512)  # 57 positions take 8 pages: 256
    assert not paged_windows_fit(4, 65, 8, 512)  # 9 pages a row: 288
    assert not paged_windows_fit(8, 64, 8, 512)
    steps = []
    # 4 rows of windows of up to 64 positions: 256 of 4096 positions, of 512.
    for num_pages, requested in ((512, None), (64, None), (64, True)):
        decoder = _decoder(random_model, requested, paging=Paging(page_size=8,
                                                                  num_pages=num_pages))
        assert decoder.row_windows
        steps.append(_two_steps(decoder)[0])
        calls = decoder.step_work["calls"]
        copied = num_pages == 512 or requested
        assert decoder.step_work["row_window_calls"] == (calls if copied else 0)
    for ours in steps[1:]:
        for step, expected in zip(ours, steps[0]):
            assert_same_step_batch(step, expected)
