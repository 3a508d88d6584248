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
from qstar_jax.decoding.step_sampler import resolve_row_windows
from qstar_jax.models import row_windows
from qstar_jax.models.llama import LlamaModel
from qstar_jax.parallel import make_mesh
from tests.decoding.full_forward import full_forward_of, greedy_reference
from tests.decoding.stepping import assert_same_step_batch
from tests.decoding.tiny_models import RANDOM_MAX_LEN, STEP_BUCKET

PROMPTS = [[3, 14, 15, 9, 26], [5, 35, 8, 9, 7, 9, 32, 3, 8, 4, 6, 2, 9, 17, 40, 1, 22, 3, 60, 11], [2, 7, 1]]
# Three steps a row, rows stopping apart. Row 1 (20 tokens) ends its first step on
# position 31, the last of that call's 32-position window, and its third on 63, the
# pool row's last.
CAPS = [[9, 12, 4], [12, 16, 3], [2, 16, 5]]
PARAMS = SamplingParams.make(3, temperature=[0.0, 1.0, 0.7], top_k=[0, 0, 40],
                             top_p=[1.0, 1.0, 0.95])


def _decoder(model, row_windows, mesh=None):
    return Decoder(model, num_slots=8, max_len=RANDOM_MAX_LEN,
                   newline_table=np.zeros(model.config.vocab_size, bool), eos_ids=[],
                   min_batch_bucket=4, min_step_bucket=STEP_BUCKET, min_window_bucket=16,
                   row_windows=row_windows, mesh=mesh)


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


@pytest.mark.parametrize("window,mesh", [(None, False), (3, False), (None, True)],
                         ids=["full attention", "sliding window", "one-device mesh"])
def test_row_windows_sample_what_gathering_samples_and_leave_the_same_pool(random_model,
                                                                           window, mesh):
    """With ``mesh`` the loop over row windows runs as a run builds it on one device, in
    the shard_map over a 1x1 mesh, against gathering with no mesh."""
    model = random_model
    if window is not None:
        config = dataclasses.replace(random_model.config, sliding_windows=(window,) * 2)
        model = LlamaModel(config, rngs=nnx.Rngs(0))
        model.lm_head.kernel[...] = model.lm_head.kernel[...] * 50
    results = {}
    for copied in (True, False):
        on = make_mesh(1, 1, devices=jax.devices()[:1]) if mesh and copied else None
        decoder = _decoder(model, copied, on)
        assert decoder.row_windows is copied
        steps, filled = _two_steps(decoder)
        results[copied] = steps, decoder, filled
    (copied_steps, copied, filled), (gathered_steps, gathered, _) = results[True], results[False]
    for step, expected in zip(copied_steps, gathered_steps):
        assert_same_step_batch(step, expected)
    np.testing.assert_array_equal(copied.lengths(filled), gathered.lengths(filled))
    assert copied.lengths(filled)[1] == RANDOM_MAX_LEN  # row 1 filled its slot
    for name in ("k", "v"):
        mine, theirs = (np.asarray(getattr(d.cache, name)) for d in (copied, gathered))
        for slot, length in zip(filled, copied.lengths(filled)):
            np.testing.assert_allclose(mine[:, slot, :, :length], theirs[:, slot, :, :length],
                                       rtol=1e-5, atol=1e-6, err_msg=f"{name}, slot {slot}")
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
    and ``put`` writes back into their slots the positions from each row's start on that
    the call's tokens may have written, none at W or past it and a padding row's (slot
    S) nowhere."""
    layers, slots, heads, max_len, dim, window = 2, 4, 1, 6, 2, 4
    rng = np.random.default_rng(0)
    cache_k = jnp.asarray(rng.standard_normal((layers, slots, heads, max_len, dim)), jnp.float32)
    cache_v = cache_k + 100
    rows = jnp.array([3, 1], jnp.int32)
    keys, values = row_windows.take(cache_k, cache_v, rows, window)
    assert [k.shape for k in keys] == [(2, heads, dim, window)] * layers
    np.testing.assert_array_equal(values[1], cache_v[1, rows, :, :window])
    np.testing.assert_array_equal(keys[1], cache_k[1, rows, :, :window].swapaxes(2, 3))
    new = jnp.full((2, 1, heads, dim), -7.0)
    keys, values, layer_keys, layer_values = row_windows.RowWindows().write(
        keys, values, 1, new, new - 1, jnp.array([[2], [window]], jnp.int32))
    assert keys[1] is layer_keys and values[1] is layer_values
    # Before row 0's start: not written back (a call's tokens never write there).
    keys = (keys[0].at[0, :, :, 0].set(55.0),) + keys[1:]
    # Row 0 from its start, 2, for 3 positions: 2 and 3, and 4, past W, nowhere.
    written_k, written_v = row_windows.put(cache_k, cache_v, jnp.array([3, slots], jnp.int32),
                                           keys, values, jnp.array([2, max_len], jnp.int32),
                                           3)
    expected_k = cache_k.at[1, 3, :, 2].set(-7.0)
    expected_v = cache_v.at[1, 3, :, 2].set(-8.0)
    np.testing.assert_array_equal(written_k, expected_k)  # slot 1's row was padding
    np.testing.assert_array_equal(written_v, expected_v)


def test_row_windows_run_on_a_cpu_where_they_can_and_are_refused_where_they_cannot(
        random_model):
    """By default ("auto") a CPU's decoder runs over row windows, and gathers on pages,
    over stacked weights, on a mesh whose model axis splits the layers and on a GPU or TPU
    (untimed there); asked for where they cannot run, they are refused."""
    def decoder(**options):
        return Decoder(random_model, num_slots=2, max_len=16,
                       newline_table=np.zeros(64, bool), **options)

    pages = Paging(page_size=4, num_pages=8)
    assert decoder().row_windows
    assert not decoder(paging=pages).row_windows
    assert not decoder(layer_weights="stacked").row_windows
    assert not decoder(row_windows=False).row_windows
    message = "row_windows needs row slots"
    with pytest.raises(ValueError, match=message):
        decoder(paging=pages, row_windows=True)
    with pytest.raises(ValueError, match=message):
        decoder(layer_weights="stacked", row_windows=True)
    able = dict(split_model=False, per_layer=True, paged=False)
    with pytest.raises(ValueError, match=message):  # a 1x2 mesh needs two devices
        resolve_row_windows(True, **{**able, "split_model": True})
    assert not resolve_row_windows(None, **{**able, "split_model": True})
    assert [resolve_row_windows(None, **able, backend=backend)
            for backend in ("cpu", "gpu", "tpu")] == [True, False, False]
