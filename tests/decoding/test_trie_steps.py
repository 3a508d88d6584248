"""Steps sampled as a trie: the same draws as independent sampling, each distinct prefix
computed once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.step_sampler import EndReason
from qstar_jax.decoding.trie_draws import _split
from qstar_jax.decoding.trie_steps import sample_trie_steps
from qstar_jax.policy.runtime import PolicyRuntime
from qstar_jax.tasks.base import Problem
from tests.decoding.tiny_models import RANDOM_MAX_LEN, STEP_BUCKET

PROMPT = [3, 1, 4]
KEYS = jax.random.split(jax.random.key(0), 4)
HOT = 30.0  # the random model's logits are sharpened 50x; this spreads its draws again


@pytest.fixture
def wide_decoder(random_model):
    """The random model with room for several groups' splits (more than 16 in one round)."""
    return Decoder(random_model, num_slots=64, max_len=RANDOM_MAX_LEN,
                   newline_table=np.zeros(64, bool), eos_ids=[], min_batch_bucket=2,
                   min_step_bucket=STEP_BUCKET)


def _sample(decoder, counts, group_ids, *, temperature=HOT, cap=5):
    slots = decoder.allocate(len(counts))
    decoder.prefill(slots, [PROMPT] * len(counts))
    params = SamplingParams.make(len(counts), temperature=temperature)
    return sample_trie_steps(decoder, slots, counts, key_table=KEYS,
                             key_rows=[0] * len(counts), group_ids=group_ids, params=params,
                             max_tokens=cap)


@pytest.mark.parametrize("counts", [[6], [6, 1, 5, 6, 6, 4, 6, 6]])
def test_trie_steps_are_whole_steps_of_the_model_and_pay_for_each_prefix_once(
        wide_decoder, full_forward, counts):
    groups, fed = _sample(wide_decoder, counts, list(range(11, 11 + len(counts))))
    all_slots = [s.slot for steps in groups for s in steps]
    assert len(set(all_slots)) == len(all_slots)
    assert wide_decoder.pool.num_free == wide_decoder.num_slots - len(all_slots)
    for count, steps, group_fed in zip(counts, groups, fed):
        assert sum(s.count for s in steps) == count
        assert len(steps) > 1 or count == 1  # it split at least once
        prefixes = {s.tokens[:end] for s in steps for end in range(1, len(s.tokens) + 1)}
        assert group_fed == len(prefixes)  # one fed token per trie node
        for s in steps:
            assert len(s.tokens) == 5 and s.end_reason == EndReason.CAP
            assert wide_decoder.lengths([s.slot])[0] == len(PROMPT) + 5
            hidden, logits = full_forward(PROMPT + list(s.tokens))
            np.testing.assert_allclose(s.hidden, hidden[-1], atol=1e-4)
            logprobs = jax.nn.log_softmax(logits[len(PROMPT) - 1:-1], axis=-1)
            expected = float(sum(logprobs[i, t] for i, t in enumerate(s.tokens)))
            assert s.logprob == pytest.approx(expected, abs=1e-3)


def test_a_groups_steps_do_not_depend_on_the_other_groups(random_decoder):
    (alone,), _ = _sample(random_decoder, [3], [21])
    random_decoder.free([s.slot for s in alone])
    (together, other), _ = _sample(random_decoder, [3, 3], [21, 22])
    assert [(s.tokens, s.count, s.logprob) for s in alone] == [
        (s.tokens, s.count, s.logprob) for s in together]


def test_a_group_draws_with_its_own_row_of_the_key_table(random_decoder):
    """Group 7 at key row 2 of KEYS draws the trie it draws alone from a table holding only
    KEYS[2]; group 7 at key row 0 beside it draws another."""
    params = SamplingParams.make(1, temperature=HOT)
    [slot] = random_decoder.allocate(1)
    random_decoder.prefill([slot], [PROMPT])
    (alone,), _ = sample_trie_steps(random_decoder, [slot], [3], key_table=KEYS[2:3],
                                    key_rows=[0], group_ids=[7], params=params, max_tokens=5)
    random_decoder.free([s.slot for s in alone])
    slots = random_decoder.allocate(2)
    random_decoder.prefill(slots, [PROMPT] * 2)
    (first_row, third_row), _ = sample_trie_steps(
        random_decoder, slots, [3, 3], key_table=KEYS, key_rows=[0, 2], group_ids=[7, 7],
        params=SamplingParams.make(2, temperature=HOT), max_tokens=5)
    assert [(s.tokens, s.count, s.logprob) for s in third_row] == [
        (s.tokens, s.count, s.logprob) for s in alone]
    assert {s.tokens for s in first_row}.isdisjoint({s.tokens for s in alone})


def test_first_tokens_follow_the_models_distribution(random_decoder, full_forward):
    _, logits = full_forward(PROMPT)
    probs = np.asarray(jax.nn.softmax(logits[-1] / HOT))
    firsts = []
    for start in range(0, 320, 8):
        groups, _ = _sample(random_decoder, [1] * 8, list(range(start, start + 8)), cap=1)
        firsts += [steps[0].tokens[0] for steps in groups]
        random_decoder.free([s.slot for steps in groups for s in steps])
    freq = np.bincount(firsts, minlength=len(probs)) / len(firsts)
    tolerance = 5 * np.sqrt(probs * (1 - probs) / len(firsts)) + 1e-3
    assert np.all(np.abs(freq - probs) <= tolerance)


def test_split_rows_draw_like_independent_samples(wide_decoder, full_forward):
    """Groups of 4 draws that split: how many distinct first tokens a group has, and the
    second token given the first (its frequencies, and how often two draws of one group
    repeat it), against independent draws from the model."""
    count, groups_per_call, calls, temperature = 4, 8, 24, 2.0  # most groups split
    distinct, draws_by_group = [], []
    for call in range(calls):
        ids = list(range(1000 + call * groups_per_call, 1000 + (call + 1) * groups_per_call))
        groups, _ = _sample(wide_decoder, [count] * groups_per_call, ids,
                            temperature=temperature, cap=2)
        for steps in groups:
            distinct.append(len({s.tokens[0] for s in steps}))
            draws_by_group.append([s.tokens for s in steps for _ in range(s.count)])
        wide_decoder.free([s.slot for steps in groups for s in steps])

    def next_token_probs(tokens):
        _, logits = full_forward(tokens)
        return np.asarray(jax.nn.softmax(logits[-1] / temperature), np.float64)

    def within(got, expected, n):
        return np.all(np.abs(got - expected) <= 5 * np.sqrt(expected * (1 - expected) / n) + 1e-3)

    first = next_token_probs(PROMPT)
    independent = np.random.default_rng(0).choice(len(first), size=(100_000, count),
                                                  p=first / first.sum())
    expected = np.bincount([len(set(row)) for row in independent], minlength=count + 1)[1:]
    got = np.bincount(distinct, minlength=count + 1)[1:]
    assert within(got / len(distinct), expected / expected.sum(), len(distinct))
    assert got[1:].sum() > 0.5 * len(distinct)

    top = int(np.argmax(first))
    given_top = next_token_probs(PROMPT + [top])
    seconds = [b for draws in draws_by_group for a, b in draws if a == top]
    freq = np.bincount(seconds, minlength=len(given_top)) / len(seconds)
    assert within(freq, given_top, len(seconds))
    # Two draws of a group that share the first token draw their second independently.
    same = [b == c for draws in draws_by_group
            for i, (a, b) in enumerate(draws) for x, c in draws[i + 1:] if a == x == top]
    repeat = float(np.sum(given_top ** 2))
    assert len(same) >= 100 and within(np.mean(same), repeat, len(same))


def test_greedy_draws_are_one_step_counted_once(random_decoder):
    (steps,), (fed,) = _sample(random_decoder, [4], [5], temperature=0.0)
    assert len(steps) == 1 and steps[0].count == 4 and fed == 5
    slot = random_decoder.allocate(1)
    random_decoder.prefill(slot, [PROMPT])
    batch = random_decoder.sample_steps(slot, problem_keys=KEYS[:1], node_ids=[0],
                                        params=SamplingParams.make(1), max_tokens=5)
    assert tuple(batch.row_tokens(0)) == steps[0].tokens


def test_top_k_and_top_p_filter_the_tries_draws(random_decoder):
    """Hot groups (near uniform draws) whose top-k is 1, or whose top-p is below the
    likeliest token's mass, draw only the argmax: one step, all their draws, the greedy
    group's step and log-probability (under the unmodified distribution); an unfiltered
    hot group's draws differ."""
    slots = random_decoder.allocate(4)
    random_decoder.prefill(slots, [PROMPT] * 4)
    params = SamplingParams.make(4, temperature=[0.0, HOT, HOT, HOT], top_k=[0, 1, 0, 0],
                                 top_p=[1.0, 1.0, 0.01, 1.0])
    (greedy, top_k, top_p, unfiltered), _ = sample_trie_steps(
        random_decoder, slots, [1, 3, 2, 2], key_table=KEYS, key_rows=[0, 1, 2, 3],
        group_ids=[7, 7, 7, 7], params=params, max_tokens=5)
    [step] = greedy
    for steps, count in ((top_k, 3), (top_p, 2)):
        assert [(s.tokens, s.count) for s in steps] == [(step.tokens, count)]
        assert steps[0].logprob == pytest.approx(step.logprob, abs=1e-4)
    assert all(s.tokens != step.tokens for s in unfiltered)


def test_the_runtimes_copies_of_a_step_drawn_several_times_hold_that_step(random_decoder):
    """``PolicyRuntime.sample_trie`` hands back one slot per draw: a step drawn c times in
    its own slot and c - 1 forks of it. Here 6 draws give steps drawn 3, 2 and 1 times;
    every slot holds its own step (its length and last hidden state). Each step is a final
    answer, so none cut at the cap gets a line break (test_policy_runtime has those)."""
    class Tokens:
        def decode(self, ids):
            return " ".join(map(str, ids))

    class EveryLineAnswers:
        def is_terminal_step(self, text):
            return True

    runtime = PolicyRuntime(random_decoder, Tokens(), EveryLineAnswers(),
                            [Problem(id="p", question="", reference=None)], [""], seed=0,
                            step_token_cap=1)
    [slot] = runtime.prefill_tokens([0], [PROMPT])
    [group] = runtime.sample_trie([slot], [0], [0], [1.5], [6])
    assert [s.token_ids for s in group] == [(37,)] * 3 + [(14,)] * 2 + [(7,)]
    slots = [s.slot for s in group]
    assert slots[0] == slot and len(set(slots)) == 6
    np.testing.assert_array_equal(random_decoder.lengths(slots), [len(PROMPT) + 1] * 6)
    last_hidden = np.asarray(random_decoder.cache.last_hidden)[slots]
    np.testing.assert_array_equal(last_hidden, np.stack([s.hidden for s in group]))
    assert len({s.hidden.tobytes() for s in group}) == 3


def test_a_full_slot_gives_one_empty_step_and_costs_nothing(random_decoder):
    slots = random_decoder.allocate(2)
    random_decoder.prefill(slots, [[1] * RANDOM_MAX_LEN, PROMPT])
    (full_steps, steps), (full_fed, fed) = sample_trie_steps(
        random_decoder, slots, [3, 2], key_table=KEYS, key_rows=[0, 0], group_ids=[1, 2],
        params=SamplingParams.make(2, temperature=HOT), max_tokens=5)
    assert [(s.slot, s.tokens, s.count, s.end_reason) for s in full_steps] == [
        (slots[0], (), 3, EndReason.CACHE_FULL)]
    assert full_fed == 0 and random_decoder.lengths(slots[:1])[0] == RANDOM_MAX_LEN
    assert sum(s.count for s in steps) == 2 and fed >= 5
    assert random_decoder.pool.num_free == random_decoder.num_slots - 1 - len(steps)


@pytest.mark.parametrize("overrides, message", [
    (dict(counts=[2, 0]), "give one count >= 1 per slot"),
    (dict(key_rows=[0, 4]), "key_rows must be 2 indices into the 4 keys"),
    (dict(key_rows=[0, -1]), "key_rows must be 2 indices into the 4 keys"),
    (dict(group_ids=[0, -1]), r"group_ids must be 2 integers in \[0, 2\*\*31\)"),
    (dict(params=SamplingParams.make(3)), r"temperature has shape \(3,\), expected \(2,\)"),
    (dict(max_tokens=0), "max_tokens must be integers >= 1"),
])
def test_bad_trie_inputs_are_rejected_before_device_work(random_decoder, overrides, message):
    slots = random_decoder.allocate(2)
    random_decoder.prefill(slots, [PROMPT, PROMPT])
    cache, free = random_decoder.cache, random_decoder.pool.num_free
    args = dict(counts=[2, 1], key_table=KEYS, key_rows=[0, 1], group_ids=[0, 1],
                params=SamplingParams.make(2), max_tokens=3) | overrides
    with pytest.raises(ValueError, match=message):
        sample_trie_steps(random_decoder, slots, **args)
    with pytest.raises(ValueError, match="2 slots need 1 spare slots, got 0"):
        random_decoder.sample_trie(slots, [2, 1], [], **{k: v for k, v in args.items()
                                                         if k != "counts"})
    assert random_decoder.cache is cache and random_decoder.pool.num_free == free


def test_a_spare_that_is_a_groups_own_slot_is_refused_before_device_work(random_decoder):
    slots = random_decoder.allocate(2)
    random_decoder.prefill(slots, [PROMPT, PROMPT])
    cache = random_decoder.cache
    with pytest.raises(ValueError, match=r"slots and spares \[0, 1, 0\] repeat a slot"):
        random_decoder.sample_trie(slots, [2, 1], [slots[0]], key_table=KEYS, key_rows=[0, 1],
                                   group_ids=[0, 1], params=SamplingParams.make(2),
                                   max_tokens=3)
    assert random_decoder.cache is cache
    np.testing.assert_array_equal(random_decoder.lengths(slots), [3, 3])


def test_calls_in_the_same_buckets_compile_once(wide_decoder):
    _sample(wide_decoder, [3, 2], [1, 2])  # 5 rows (bucket 8), counts up to 3 (bucket 4)
    assert wide_decoder.trace_counts["sample_trie"] == 1
    _sample(wide_decoder, [4, 1, 2], [3, 4, 5], temperature=0.5)  # 7 rows, counts up to 4
    assert wide_decoder.trace_counts["sample_trie"] == 1


def test_a_rounds_draws_split_to_the_free_rows_in_draw_order():
    # Six rows, K = 4: row 0 draws 5 7 8 5, row 1 draws 2 2 2, row 3 draws 2 6 1; rows
    # 2, 4 and 5 are free. A row keeps its first token with the draws of it (5 twice, 2
    # three times; row 3's 2 is its own, not row 1's repeat), the new tokens 7, 8, 6 take
    # the free rows in draw order and 1, past the last, gets none (6); repeats go nowhere.
    tokens = jnp.array([5, 7, 8, 5, 2, 2, 2, 2, 6, 1], jnp.int32)
    parent = jnp.array([0, 0, 0, 0, 1, 1, 1, 3, 3, 3], jnp.int32)
    spare = jnp.array([False, False, True, False, True, True])
    split = jax.jit(_split)  # one compile, not one per eager op
    target, draws, is_new = split(tokens, parent, jnp.ones(10, bool), spare, jnp.arange(1, 4))
    assert target.tolist() == [0, 2, 4, 6, 1, 6, 6, 3, 5, 6]
    assert draws.tolist() == [2, 1, 1, 1, 3, 2, 1, 1, 1, 1]
    assert is_new.tolist() == [False, True, True, False, False, False, False, False, True, True]
    # The draws past the going rows' counts are made from the last row (here row 1, which
    # draws 2 three times): their 7 is no new token and their 2 no further draw of it.
    tokens, parent = jnp.array([4, 2, 2, 2, 7, 2]), jnp.array([0, 1, 1, 1, 1, 1])
    target, draws, is_new = split(tokens, parent, jnp.arange(6) < 4, jnp.array([False, False]),
                                  jnp.arange(1, 4))
    assert target.tolist() == [0, 1, 2, 2, 2, 2]
    assert draws.tolist() == [1, 3, 2, 1, 1, 1]
    assert is_new.tolist() == [False] * 6
