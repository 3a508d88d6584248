"""Steps sampled as a trie: the same draws as independent sampling, each distinct prefix
computed once."""

import jax
import numpy as np
import pytest

from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.shared_steps import sample_shared_steps
from qstar_jax.decoding.step_sampler import EndReason

PROMPT = [3, 1, 4]
KEYS = jax.random.split(jax.random.key(0), 4)
HOT = 30.0  # the random model's logits are sharpened 50x; this spreads its draws again


def _sample(decoder, counts, group_ids, *, temperature=HOT, cap=5):
    slots = decoder.allocate(len(counts))
    decoder.prefill(slots, [PROMPT] * len(counts))
    params = SamplingParams.make(len(counts), temperature=temperature)
    return sample_shared_steps(decoder, slots, counts, key_table=KEYS,
                               key_rows=[0] * len(counts), group_ids=group_ids, params=params,
                               max_tokens=cap)


def test_shared_steps_are_whole_steps_of_the_model_and_pay_for_each_prefix_once(
        random_decoder, full_forward):
    (steps,), (fed,) = _sample(random_decoder, [6], [11])
    assert sum(s.count for s in steps) == 6 and len(steps) > 1  # it split at least once
    assert len({s.slot for s in steps}) == len(steps)
    prefixes = {s.tokens[:end] for s in steps for end in range(1, len(s.tokens) + 1)}
    assert fed == len(prefixes)  # one fed token per trie node
    for s in steps:
        assert len(s.tokens) == 5 and s.end_reason == EndReason.CAP
        assert random_decoder.lengths([s.slot])[0] == len(PROMPT) + 5
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


def test_greedy_draws_are_one_step_counted_once(random_decoder):
    (steps,), (fed,) = _sample(random_decoder, [4], [5], temperature=0.0)
    assert len(steps) == 1 and steps[0].count == 4 and fed == 5
    slot = random_decoder.allocate(1)
    random_decoder.prefill(slot, [PROMPT])
    batch = random_decoder.sample_steps(slot, problem_keys=KEYS[:1], node_ids=[0],
                                        params=SamplingParams.make(1), max_tokens=5)
    assert tuple(batch.row_tokens(0)) == steps[0].tokens
