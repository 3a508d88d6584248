import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qstar_jax.decoding import sampling
from qstar_jax.decoding.sampling import SamplingParams

# Jitted once per shape: op-by-op dispatch of the sampling code is far slower to test.
filtered_logits = jax.jit(sampling.filtered_logits)
sample = jax.jit(sampling.sample)
PROBS = np.array([0.5, 0.2, 0.15, 0.1, 0.05], np.float32)
LOGITS = np.log(PROBS)


def _kept(logits, **settings) -> list[list[int]]:
    """Token ids that survive filtering, per row of ``logits`` [B <= 4, 5]."""
    logits = np.atleast_2d(logits)
    rows = len(logits)
    params = SamplingParams.make(rows, **settings)
    # Pad to 4 rows so that every call shares one compiled shape.
    padded = np.concatenate([logits, np.repeat(logits[:1], 4 - rows, axis=0)])
    params = jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[:1], 4 - rows)]), params)
    filtered = np.asarray(filtered_logits(jnp.asarray(padded), params))[:rows]
    return [np.flatnonzero(row > -np.inf).tolist() for row in filtered]


def test_greedy_is_argmax_whatever_top_k_and_top_p():
    logits = jax.random.normal(jax.random.key(0), (4, 50)) * 3
    params = SamplingParams.make(4, temperature=0.0, top_k=[0, 1, 5, 2], top_p=[1.0, 0.1, 0.5, 0.3])
    tokens, logprobs = sample(logits, jax.random.split(jax.random.key(1), 4), params)
    np.testing.assert_array_equal(tokens, np.argmax(logits, axis=-1))
    np.testing.assert_allclose(logprobs, np.max(jax.nn.log_softmax(logits), axis=-1), rtol=1e-6)
    # Greedy rows beside sampled rows (the batch draws): still the argmax, on logits flat
    # enough that a draw would rarely be (each token's probability is under 0.2).
    flat = np.asarray(jax.random.normal(jax.random.key(2), (4, 50)))
    assert float(jnp.max(jax.nn.softmax(flat))) < 0.2
    mixed = SamplingParams.make(4, temperature=[0.0, 1.0, 0.0, 1.0], top_k=[5, 0, 0, 0])
    tokens, _ = sample(flat, jax.random.split(jax.random.key(1), 4), mixed)
    np.testing.assert_array_equal(np.asarray(tokens)[[0, 2]], np.argmax(flat, axis=-1)[[0, 2]])
    assert not np.array_equal(tokens, np.argmax(flat, axis=-1))  # the others really drew


def test_top_k_keeps_the_k_largest_and_ties_at_the_threshold():
    logits = np.array([1.0, 5.0, 3.0, 5.0, 2.0])
    assert _kept(logits, temperature=1.0, top_k=3) == [[1, 2, 3]]
    assert _kept(logits, temperature=1.0, top_k=2) == [[1, 3]]
    assert _kept(logits, temperature=1.0, top_k=1) == [[1, 3]]  # HF keeps ties too
    assert _kept(logits, temperature=1.0, top_k=0) == [[0, 1, 2, 3, 4]]
    assert _kept(logits, temperature=1.0, top_k=99) == [[0, 1, 2, 3, 4]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    assert _kept(LOGITS, temperature=1.0, top_p=0.6) == [[0, 1]]      # 0.5 < 0.6 <= 0.7
    assert _kept(LOGITS, temperature=1.0, top_p=0.75) == [[0, 1, 2]]  # 0.7 < 0.75 <= 0.85
    assert _kept(LOGITS, temperature=1.0, top_p=0.3) == [[0]]         # always at least one
    assert _kept(LOGITS, temperature=1.0, top_p=1.0) == [[0, 1, 2, 3, 4]]


def test_top_p_of_one_keeps_the_tail_that_float32_mass_rounds_away():
    """A peaked distribution: in float32 the top token's probability is 1.0, so every later
    token's mass before it is 1.0 too; top_p = 1 (off) still keeps them all, alone and
    beside top_k."""
    peaked = np.array([0.0, -20.0, -20.0, -20.0, -20.0])
    assert _kept(peaked, temperature=1.0, top_p=1.0) == [[0, 1, 2, 3, 4]]
    assert _kept(peaked, temperature=1.0, top_k=5) == [[0, 1, 2, 3, 4]]


def test_top_p_stops_at_the_token_whose_mass_reaches_p_exactly():
    # Powers of two: the masses before each token, 0, .5, .75, .875, are exact in float32.
    halving = np.log(np.array([0.5, 0.25, 0.125, 0.0625, 0.0625], np.float32))
    assert _kept(halving, temperature=1.0, top_p=0.5) == [[0]]
    assert _kept(halving, temperature=1.0, top_p=0.75) == [[0, 1]]
    assert _kept(halving, temperature=1.0, top_p=0.76) == [[0, 1, 2]]


def test_a_tie_at_the_top_p_threshold_is_kept_whole_where_hf_cuts_inside_it():
    """What the module's docstring says of top-p ties, and its example in
    ``filtered_logits``' docstring, run as a doctest."""
    tie = np.array([2.0, 2.0, 2.0, 2.0, 1.0], np.float32)
    assert _kept(tie, temperature=1.0, top_p=0.5) == [[0, 1, 2, 3]]
    results = doctest.testmod(sampling)
    assert results.attempted and not results.failed
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import TopPLogitsWarper

    hf = TopPLogitsWarper(top_p=0.5)(None, torch.tensor(tie[None]))
    assert torch.nonzero(hf[0] > -torch.inf).flatten().tolist() == [1, 2, 3]


def test_temperature_comes_before_top_p():
    # At temperature 2 the probabilities are ~[.34, .21, .19, .15, .11]: four tokens are
    # needed to reach 0.75, against three at temperature 1.
    assert _kept(LOGITS, temperature=2.0, top_p=0.75) == [[0, 1, 2, 3]]
    assert _kept(LOGITS, temperature=0.5, top_p=0.75) == [[0]]


def test_top_k_comes_before_top_p():
    # After top-2 the renormalised mass is [0.714, 0.286], so top_p 0.6 keeps one token;
    # top-p on the full distribution first would have kept two.
    assert _kept(LOGITS, temperature=1.0, top_k=2, top_p=0.6) == [[0]]
    assert _kept(LOGITS, temperature=1.0, top_k=2, top_p=0.75) == [[0, 1]]


def test_each_row_uses_its_own_params():
    logits = np.stack([LOGITS] * 4)
    kept = _kept(logits, temperature=[1.0, 2.0, 1.0, 1.0], top_k=[0, 0, 2, 1],
                 top_p=[0.75, 0.75, 1.0, 1.0])
    assert kept == [[0, 1, 2], [0, 1, 2, 3], [0, 1], [0]]


def test_samples_follow_the_filtered_distribution_and_report_unmodified_logprobs():
    draws = 20000
    logits = jnp.broadcast_to(jnp.asarray(LOGITS), (draws, len(PROBS)))
    keys = jax.random.split(jax.random.key(7), draws)
    params = SamplingParams.make(draws, temperature=2.0, top_p=0.75)
    tokens, logprobs = sample(logits, keys, params)
    nucleus = np.sqrt(PROBS[:4]) / np.sqrt(PROBS[:4]).sum()
    frequencies = np.bincount(np.asarray(tokens), minlength=5) / draws
    np.testing.assert_allclose(frequencies, np.append(nucleus, 0.0), atol=0.015)
    np.testing.assert_allclose(logprobs, np.log(PROBS)[np.asarray(tokens)], rtol=1e-5)


def test_a_row_draw_depends_only_on_its_own_key_and_logits():
    logits = jax.random.normal(jax.random.key(3), (4, 50)) * 2
    keys = jax.random.split(jax.random.key(4), 4)
    params = SamplingParams.make(4, temperature=[1.0, 0.7, 1.3, 1.0], top_k=[0, 10, 0, 5],
                                 top_p=[0.9, 1.0, 0.8, 1.0])
    tokens, logprobs = sample(logits, keys, params)
    order = np.array([2, 0, 3, 1])
    shuffled_params = jax.tree.map(lambda x: x[order], params)
    tokens_shuffled, logprobs_shuffled = sample(logits[order], keys[order], shuffled_params)
    np.testing.assert_array_equal(tokens_shuffled, np.asarray(tokens)[order])
    np.testing.assert_array_equal(logprobs_shuffled, np.asarray(logprobs)[order])
    # Row 1 again, now beside other rows (at index 3): the same draw.
    other_logits = jax.random.normal(jax.random.key(5), (4, 50)).at[3].set(logits[1])
    other_keys = jax.random.split(jax.random.key(6), 4).at[3].set(keys[1])
    other_params = SamplingParams.make(4, temperature=[2.0, 0.0, 0.5, 0.7], top_k=[0, 0, 3, 10],
                                       top_p=[1.0, 1.0, 0.5, 1.0])
    other_tokens, other_logprobs = sample(other_logits, other_keys, other_params)
    assert int(other_tokens[3]) == int(tokens[1])
    assert float(other_logprobs[3]) == float(logprobs[1])


def test_rows_that_filter_nothing_draw_the_same_beside_rows_that_filter():
    """With no row filtering, sampling skips the vocabulary sort; a row that filters
    nothing draws exactly the same token there as in a batch that sorts (for another
    row's top-k or top-p), -inf logits and greedy rows included."""
    logits = (jax.random.normal(jax.random.key(7), (4, 300)) * 3).at[0, :5].set(-jnp.inf)
    keys = jax.random.split(jax.random.key(8), 4)
    plain = SamplingParams.make(4, temperature=[0.9, 1.0, 0.0, 2.5])
    tokens, logprobs = sample(logits, keys, plain)
    for filtering_row in range(4):
        params = SamplingParams.make(4, temperature=[0.9, 1.0, 0.7, 2.5])
        params.top_k[filtering_row] = 7 if filtering_row % 2 else 0
        params.top_p[filtering_row] = 1.0 if filtering_row % 2 else 0.5
        params.temperature[2] = 0.0 if filtering_row != 2 else 0.7
        mixed_tokens, mixed_logprobs = sample(logits, keys, params)
        same = [r for r in range(4) if r != filtering_row]
        np.testing.assert_array_equal(np.asarray(mixed_tokens)[same], np.asarray(tokens)[same])
        np.testing.assert_array_equal(np.asarray(mixed_logprobs)[same],
                                      np.asarray(logprobs)[same])


def test_a_draw_is_the_token_jax_random_categorical_draws():
    """``sample`` adds each row's Gumbel noise itself (in a fusion apart from the argmax);
    the token is still the one ``jax.random.categorical`` draws from the row's key, with
    and without filtering rows, -inf logits included."""
    logits = (jax.random.normal(jax.random.key(9), (4, 300)) * 3).at[0, :5].set(-jnp.inf)
    keys = jax.random.split(jax.random.key(10), 4)
    temperatures = [0.9, 1.0, 0.5, 2.5]
    for params in (SamplingParams.make(4, temperature=temperatures),
                   # Rows 0, 1 and 3 filter, row 2 does not: a batch that must sort.
                   SamplingParams.make(4, temperature=temperatures, top_k=[0, 7, 0, 3],
                                       top_p=[0.5, 1.0, 1.0, 1.0]),
                   # Rows 1 and 3 filter by top-k alone: the batch must sort too.
                   SamplingParams.make(4, temperature=temperatures, top_k=[0, 7, 0, 3])):
        tokens, _ = sample(logits, keys, params)
        candidates = filtered_logits(logits, params)
        np.testing.assert_array_equal(tokens, jax.vmap(jax.random.categorical)(keys, candidates))
        # And no row draws the greedy token by construction: the noise moves some of them.
        assert not np.array_equal(tokens, np.argmax(np.asarray(logits), -1))


@pytest.mark.parametrize("settings, message", [
    (dict(temperature=-0.5), "temperature must be finite and >= 0"),
    (dict(temperature=np.inf), "temperature must be finite and >= 0"),
    (dict(temperature=[1.0, np.nan]), "temperature must be finite and >= 0"),
    (dict(top_k=-1), "top_k must be >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(temperature=[1.0, 1.0, 1.0]), r"temperature has shape \(3,\), expected \(2,\)"),
    (dict(top_k=[1, 2, 3]), r"top_k has shape \(3,\), expected \(2,\)"),
    (dict(top_p=[0.5]), r"top_p has shape \(1,\), expected \(2,\)"),
])
def test_bad_params_are_rejected(settings, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams.make(2, **settings)


@pytest.mark.parametrize("name", ["temperature", "top_k", "top_p"])
def test_params_built_from_lists_are_refused_with_the_way_to_build_them(name):
    """Lists passed the checks and failed deep in the step sampler with an IndexError."""
    fields = dict(temperature=np.array([0.0]), top_k=np.array([0]), top_p=np.array([1.0]))
    fields[name] = fields[name].tolist()
    with pytest.raises(ValueError, match=f"^SamplingParams.{name} must be an array, got list; "
                                         "SamplingParams.make takes scalars and lists$"):
        SamplingParams(**fields).check(1)
