import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.jit_calls import LastCall, out_shardings
from qstar_jax.decoding.kv_cache import SlotPoolExhausted
from qstar_jax.decoding.paged_cache import Paging
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.step_sampler import EndReason
from qstar_jax.decoding.trie_chunks import ChunkedTrie
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.loading import LoadedModel
from tests.decoding.stepping import generate_steps
from tests.decoding.tiny_models import RANDOM_MAX_LEN


def _step_args(rows: int, **overrides) -> dict:
    args = dict(problem_keys=jax.random.split(jax.random.key(0), rows), node_ids=[0] * rows,
                params=SamplingParams.make(rows), max_tokens=4)
    return {**args, **overrides}


def test_generate_steps_yields_each_step_until_eos(counting_decoder):
    # Counting model: after 27 come 28..31, 0.., 7 (newline) ends a step, 9 (EOS) ends all.
    slots = counting_decoder.allocate(2)
    counting_decoder.prefill(slots, [[2, 3], [26, 27]])
    steps = list(generate_steps(counting_decoder, slots, **_step_args(2, max_tokens=[8, 4]),
                                max_steps=10))
    got = [(s.slots.tolist(), [s.row_tokens(i) for i in range(len(s.slots))],
            s.end_reason.tolist()) for s in steps]
    assert got == [
        (slots, [[4, 5, 6, 7], [28, 29, 30, 31]], [EndReason.NEWLINE, EndReason.CAP]),
        (slots, [[8, 9], [0, 1, 2, 3]], [EndReason.EOS, EndReason.CAP]),
        (slots[1:], [[4, 5, 6, 7]], [EndReason.NEWLINE]),
        (slots[1:], [[8, 9]], [EndReason.EOS]),
    ]


def test_generate_steps_stops_after_max_steps(counting_decoder):
    slots = counting_decoder.allocate(1)
    counting_decoder.prefill(slots, [[10]])
    steps = list(generate_steps(counting_decoder, slots, **_step_args(1, max_tokens=2),
                                max_steps=3))
    assert [s.row_tokens(0) for s in steps] == [[11, 12], [13, 14], [15, 16]]


def test_exhausted_pool_says_what_to_do(random_decoder):
    random_decoder.allocate(random_decoder.num_slots)
    with pytest.raises(SlotPoolExhausted, match="free the slots of finished nodes"):
        random_decoder.allocate(1)


@pytest.mark.parametrize("slots, token_lists, message", [
    ([0], [[]], "row 0 has no tokens"),
    ([0], [[1] * (RANDOM_MAX_LEN + 1)], "has 65 tokens but its slot has room for 64"),
    ([0], [[1, 64]], r"outside \[0, 64\)"),
    ([0], [[1, -1]], r"outside \[0, 64\)"),
    ([0], [[1.0, 2.0]], r"row 0 holds token ids outside \[0, 64\)"),  # floats, not ids
    ([0, 1], [[1]], "1 token lists for 2 slots; give one token list per slot"),
    ([5], [[1]], r"\[5\] are not allocated"),
    ([99], [[1]], r"\[99\] are not allocated"),
    ([0, 0], [[1], [2]], "repeat a slot"),
    (list(range(9)), [[1]] * 9, "9 slots for a pool of 8 slots"),
    ([1.0], [[1]], "slots must be a non-empty 1-D list of slot ids"),
    ([[0, 1]], [[1], [2]], "slots must be a non-empty 1-D list of slot ids"),
])
def test_bad_prefill_is_rejected_before_device_work(random_decoder, slots, token_lists, message):
    random_decoder.allocate(2)
    cache = random_decoder.cache
    with pytest.raises(ValueError, match=message):
        random_decoder.prefill(slots, token_lists)
    assert random_decoder.cache is cache


@pytest.mark.parametrize("overrides, message", [
    (dict(problem_keys=np.arange(2)), "problem_keys must be 2 typed PRNG keys"),
    # A legacy raw key is a jax.Array of shape (2,) too, but of uint32, not typed.
    (dict(problem_keys=jax.random.PRNGKey(0)), r"typed PRNG keys .*, got uint32 \(2,\)"),
    (dict(problem_keys=jax.random.split(jax.random.key(0), 3)), "problem_keys must be 2"),
    (dict(node_ids=[0, -1]), r"node_ids must be 2 integers in \[0, 2\*\*31\)"),
    (dict(node_ids=[0, 2**31]), r"node_ids must be 2 integers in \[0, 2\*\*31\)"),
    (dict(params=SamplingParams.make(3)), r"temperature has shape \(3,\), expected \(2,\)"),
    (dict(max_tokens=0), "max_tokens must be integers >= 1"),
    (dict(max_tokens=[3, 2.5]), "max_tokens must be integers >= 1"),
])
def test_bad_step_inputs_are_rejected_before_device_work(random_decoder, overrides, message):
    slots = random_decoder.allocate(2)
    random_decoder.prefill(slots, [[1, 2], [3]])
    cache = random_decoder.cache
    with pytest.raises(ValueError, match=message):
        random_decoder.sample_steps(slots, **_step_args(2, **overrides))
    assert random_decoder.cache is cache


def test_sampling_or_forking_an_empty_slot_is_rejected(random_decoder):
    filled, empty, child = random_decoder.allocate(3)
    random_decoder.prefill([filled], [[1, 2]])
    with pytest.raises(ValueError, match=rf"slots \[{empty}\] hold no tokens; prefill them first"):
        random_decoder.sample_steps([filled, empty], **_step_args(2))
    with pytest.raises(ValueError, match="parents .* hold no tokens"):
        random_decoder.fork([empty], [child])
    with pytest.raises(ValueError, match="give one parent per child"):
        random_decoder.fork([filled, filled], [child])


def test_freed_slots_cannot_be_used(random_decoder):
    slots = random_decoder.allocate(1)
    random_decoder.prefill(slots, [[1, 2]])
    random_decoder.free(slots)
    with pytest.raises(ValueError, match="not allocated slots"):
        random_decoder.sample_steps(slots, **_step_args(1))
    with pytest.raises(ValueError, match="not allocated slots"):
        random_decoder.free(slots)


def test_newline_table_must_match_the_vocabulary(random_model):
    with pytest.raises(ValueError, match=r"newline_table must be a bool array of shape \(64,\)"):
        Decoder(random_model, num_slots=2, max_len=8, newline_table=np.zeros(50, bool))
    with pytest.raises(ValueError, match=r"newline_table must be a bool array of shape \(64,\), "
                                         r"got int32 \(64,\)"):
        Decoder(random_model, num_slots=2, max_len=8, newline_table=np.zeros(64, np.int32))
    for eos_id in (64, -1):
        with pytest.raises(ValueError, match="eos_ids .* outside the vocabulary"):
            Decoder(random_model, num_slots=2, max_len=8, newline_table=np.zeros(64, bool),
                    eos_ids=[eos_id])


@pytest.mark.parametrize("eos_ids", [[2.7], [2.0], [True], [1, True], np.array([3.0])])
def test_eos_ids_that_are_not_integers_are_refused(random_model, eos_ids):
    """Cast to int32, [2.7] became EOS id 2 silently."""
    with pytest.raises(ValueError, match=r"^eos_ids must be integer token ids, got \["):
        Decoder(random_model, num_slots=2, max_len=8, newline_table=np.zeros(64, bool),
                eos_ids=eos_ids)


@pytest.mark.parametrize("sizes, message", [
    (dict(num_slots=2.5), "num_slots must be an integer >= 1, got 2.5"),
    (dict(max_len=64.0), "max_len must be an integer >= 1, got 64.0"),
    (dict(num_slots=0), "num_slots must be an integer >= 1, got 0"),
])
def test_sizes_that_are_no_positive_integers_are_refused_by_name(random_model, sizes, message):
    """2.5 slots or a max_len of 64.0 failed in JAX's shape checks, naming neither."""
    with pytest.raises(ValueError, match=f"^{message}$"):
        Decoder(random_model, newline_table=np.zeros(64, bool),
                **{"num_slots": 2, "max_len": 8, **sizes})


def test_a_loaded_model_in_place_of_its_model_says_which_to_give(random_model):
    loaded = LoadedModel(config=random_model.config, model=random_model, tokenizer=None)
    with pytest.raises(TypeError, match=r"^Decoder takes the model itself \(a LlamaModel: "
                                        r"load_model\(...\).model\), got LoadedModel$"):
        Decoder(loaded, num_slots=2, max_len=8, newline_table=np.zeros(64, bool))


@pytest.mark.parametrize("n", [2.5, True, -1])
def test_a_slot_count_that_is_no_integer_is_refused(random_decoder, n):
    """2.5 read as 'only 2 of 8 are free' (SlotPoolExhausted), True as one slot."""
    with pytest.raises(ValueError, match=f"^the number of slots to allocate must be an integer "
                                         f">= 0, got {n!r}$"):
        random_decoder.allocate(n)


def test_a_negative_step_chunk_and_shared_prefix_over_a_sliding_window_are_refused(random_model):
    with pytest.raises(ValueError, match=r"step_chunk must be >= 0 \(0: a step in one call\), "
                                         "got -1"):
        Decoder(random_model, num_slots=2, max_len=8, newline_table=np.zeros(64, bool),
                step_chunk=-1)
    windowed = LlamaModel(dataclasses.replace(random_model.config, sliding_windows=(3, 3)),
                          rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="shared_prefix attention has no sliding window"):
        Decoder(windowed, num_slots=2, max_len=8, newline_table=np.zeros(64, bool),
                shared_prefix=True)


@pytest.mark.parametrize("page_size", [0, 4])
def test_a_new_decoder_compiles_its_first_call_once(random_model, page_size):
    """The cache starts committed to the weights' device, as every call's results are: a
    fresh uncommitted cache made jit compile the first call apart from every later one of
    the same shapes (on an H200, a second compile of SmolLM2's prefill inside a timed
    search: bench_search's (a) five times (b)'s time)."""
    from qstar_jax.decoding.paged_cache import Paging

    decoder = Decoder(random_model, num_slots=2, max_len=16,
                      newline_table=np.zeros(random_model.config.vocab_size, bool), eos_ids=[],
                      paging=Paging(page_size=page_size, num_pages=8) if page_size else None)
    assert all(leaf.committed for leaf in jax.tree.leaves(decoder.cache))
    for _ in range(2):
        slots = decoder.allocate(2)
        decoder.prefill(slots, [[1, 2, 3], [4, 5]])
        decoder.free(slots)
    assert decoder.trace_counts["prefill"] == 1
    assert decoder._prefill._jitted._cache_size() == 1  # one executable for both calls


def test_a_jitted_call_compiles_again_for_its_last_arguments_in_its_context():
    entered = []

    @contextlib.contextmanager
    def context():
        entered.append(len(entered))
        yield

    double = LastCall(jax.jit(lambda x: x * 2), context)
    with pytest.raises(ValueError, match="has not been called yet"):
        double.compiled()
    np.testing.assert_array_equal(double(jnp.arange(3)), [0, 2, 4])
    double(jnp.ones(5, jnp.float32))
    # Compiled for the last call's float32 [5] (the int32 [3] would refuse this argument).
    np.testing.assert_array_equal(double.compiled()(jnp.full(5, 1.5, jnp.float32)), [3.0] * 5)
    assert entered == [0, 1, 2]  # each call and the compile ran in the context
    assert out_shardings({"fork": "layout"}, "fork") == {"out_shardings": "layout"}
    assert out_shardings({"fork": "layout"}, "prefill") == {}


def _on_4_token_pages(random_model, **options) -> Decoder:
    """4 slots of 16 tokens over 12 pages of 4, no newline or EOS."""
    return Decoder(random_model, num_slots=4, max_len=16, newline_table=np.zeros(64, bool),
                   eos_ids=[], paging=Paging(page_size=4, num_pages=12), **options)


def test_a_step_or_trie_that_fails_gives_back_the_pages_it_reserved_or_was_lent(random_model,
                                                                              monkeypatch):
    decoder = _on_4_token_pages(random_model)
    parent, child = decoder.allocate(2)
    decoder.prefill([parent], [[1, 2, 3, 4, 5, 6]])  # pages 0 and 1, the second partly full
    decoder.fork([parent], [child])

    def device_lost(*args):
        raise RuntimeError("device lost")

    # The step reserved positions 6-13 (a copy of page 1 and two pages more) and failed
    # before its first chunk: the child keeps page 0 and its copy, the rest go back.
    monkeypatch.setattr(decoder, "_sample_step", device_lost)
    with pytest.raises(RuntimeError, match="device lost"):
        decoder.sample_steps([child], **_step_args(1, max_tokens=8))
    pages = decoder.pages
    assert pages.table[child, :pages.pages_held[child]].tolist() == [0, 2]
    assert pages.num_free_pages == 9
    # A trie of 2 steps after the parent was lent 5 pages (2 for its step's 8 tokens, 3
    # for a spare's) and failed in its call: they go back.
    spare = decoder.allocate(1, near=[parent])
    monkeypatch.setattr(decoder, "_sample_trie", device_lost)
    with pytest.raises(RuntimeError, match="device lost"):
        decoder.sample_trie([parent], [2], spare, key_table=jax.random.split(jax.random.key(0), 1),
                            key_rows=[0], group_ids=[0], params=SamplingParams.make(1),
                            max_tokens=8)
    assert pages.lent.size == 0 and pages.num_free_pages == 9
    pages.check_counts()
    np.testing.assert_array_equal(decoder.lengths([parent, child, *spare]), [6, 6, 0])


def test_a_trie_whose_rows_never_end_stops_with_an_error_and_gives_back_its_pages(
        random_model, monkeypatch):
    decoder = _on_4_token_pages(random_model, step_chunk=2)
    parent, = decoder.allocate(1)
    decoder.prefill([parent], [[1, 2, 3, 4, 5, 6]])
    spare = decoder.allocate(1, near=[parent])
    add = ChunkedTrie.add

    def keep_rows(trie, *args):  # a bug that never lets the last rows go
        rows = trie.rows
        add(trie, *args)
        if not trie.rows.size:
            trie.rows = rows

    monkeypatch.setattr(ChunkedTrie, "add", keep_rows)
    with pytest.raises(RuntimeError, match="still had 2 rows going after 9 calls for 4-token"):
        decoder.sample_trie([parent], [2], spare, key_table=jax.random.split(jax.random.key(0), 1),
                            key_rows=[0], group_ids=[0], params=SamplingParams.make(1),
                            max_tokens=4)
    assert decoder.trie_work["calls"] == 9
    assert decoder.pages.lent.size == 0 and decoder.pages.num_free_pages == 10
    decoder.pages.check_counts()
    np.testing.assert_array_equal(decoder.lengths([parent, *spare]), [6, 0])
