"""``PolicyRuntime``'s steps and texts on real decoders: a step's text is its first line
with EOS left out, its tokens all it sampled (EOS and newline included), its log
probability and hidden state those of its own row; a step ends the trace unless it
ended at a newline on a line that is not a final answer."""

import jax
import numpy as np
import pytest

from qstar_jax.decoding.kv_cache import SlotPoolExhausted
from qstar_jax.policy.runtime import PolicyRuntime
from qstar_jax.tasks.base import Problem
from tests.decoding.tiny_models import (COUNTING_EOS_ID, COUNTING_MAX_LEN,
                                        COUNTING_NEWLINE_ID)


class Letters:
    """Token i reads as the i-th letter, but the newline token also carries text past its
    newline (a merged token) and EOS reads as "<eos>"."""

    def decode(self, ids):
        return "".join("\n!" if i == COUNTING_NEWLINE_ID else "<eos>" if i == COUNTING_EOS_ID
                       else chr(ord("a") + i) for i in ids)


class FLinesAnswer:
    """A line is a final answer when it holds an "f" (and is one line)."""

    def is_terminal_step(self, text):
        assert "\n" not in text, "the task is asked about one line"
        return "f" in text


def _runtime(decoder, problems, cap):
    return PolicyRuntime(decoder, Letters(), FLinesAnswer(),
                         [Problem(id=f"p{i}", question="", reference=None)
                          for i in range(problems)], [""] * problems, seed=0,
                         step_token_cap=cap)


def test_a_steps_text_tokens_and_end_follow_why_its_row_stopped(counting_decoder):
    """The counting model's greedy token after i is i + 1; 7 is the newline, 9 EOS."""
    runtime = _runtime(counting_decoder, 3, cap=5)
    prompts = [[3], [5], [7], [10], [0] * (COUNTING_MAX_LEN - 3) + [20]]
    problems = [0, 1, 0, 1, 2]
    slots = runtime.prefill_tokens(problems, prompts)
    steps = runtime.sample(slots, problems, node_ids=[0] * 5, temperatures=[0.0] * 5)
    assert [(s.text, s.token_ids, s.ends_trace) for s in steps] == [
        ("efg", (4, 5, 6, 7), True),       # NEWLINE on a final-answer line
        ("g", (6, 7), False),              # NEWLINE on another line: the trace goes on
        ("i", (8, 9), True),               # EOS: kept in the tokens, not in the text
        ("lmnop", (11, 12, 13, 14, 15), True),  # CAP
        ("vw", (21, 22), True),            # CACHE_FULL
    ]
    assert [s.slot for s in steps] == slots
    np.testing.assert_array_equal(np.stack([s.hidden for s in steps]),
                                  np.asarray(counting_decoder.cache.last_hidden)[slots])
    assert dict(runtime.generated) == {0: 4 + 2, 1: 2 + 5, 2: 2}
    assert dict(runtime.prefilled) == {0: 2, 1: 2, 2: COUNTING_MAX_LEN - 2}


def test_a_text_leaves_out_eos_and_stops_at_its_answer_line(counting_decoder):
    runtime = _runtime(counting_decoder, 2, cap=5)
    slots = runtime.prefill_tokens([0, 1], [[1], [5]])
    answer, plain = runtime.sample_texts(slots, [0, 1], node_ids=[0, 0],
                                         temperatures=[0.0, 0.0], max_tokens=[12, 12])
    # 2..6, the newline, 8 and EOS: the first line is an answer, so the text ends there.
    assert answer.text == "cdefg" and answer.token_ids == (2, 3, 4, 5, 6, 7, 8, 9)
    assert plain.text == "g\n!i" and plain.token_ids == (6, 7, 8, 9)
    assert dict(runtime.generated) == {0: 8, 1: 4}


def test_a_steps_log_probability_and_hidden_state_are_its_own_rows(random_decoder,
                                                                   full_forward):
    runtime = _runtime(random_decoder, 2, cap=4)
    prompts = [[3, 1, 4], [2, 7]]
    slots = runtime.prefill_tokens([0, 1], prompts)
    steps = runtime.sample(slots, [0, 1], node_ids=[5, 6], temperatures=[30.0, 30.0])
    for prompt, step in zip(prompts, steps):
        assert len(step.token_ids) == 4 and step.ends_trace  # CAP: no newline or EOS ids
        hidden, logits = full_forward(prompt + list(step.token_ids))
        np.testing.assert_allclose(step.hidden, hidden[-1], atol=1e-4)
        logprobs = jax.nn.log_softmax(logits[len(prompt) - 1:-1], axis=-1)
        expected = float(sum(logprobs[i, t] for i, t in enumerate(step.token_ids)))
        assert step.logprob == pytest.approx(expected, abs=1e-3)
    assert steps[0].logprob != pytest.approx(steps[1].logprob, abs=1e-2)


def test_a_prompt_forked_from_a_slot_computes_and_is_charged_only_past_the_shared_tokens(
        random_decoder):
    runtime = _runtime(random_decoder, 2, cap=4)
    parents = runtime.prefill_tokens([0, 1], [[3, 1, 4, 1, 5], [2, 7, 1, 8]])
    parent_hidden = np.asarray(random_decoder.cache.last_hidden)[parents]
    prompts = [[3, 1, 4, 1, 5, 9, 2], [2, 7, 1, 8, 2], [6, 6, 6]]
    # Each fork from its own parent; a fresh prompt's shared count is ignored: it has
    # nothing to share.
    slots = runtime.prefill_tokens([0, 1, 1], prompts, sources=[*parents, None],
                                   shared=[5, 4, 2])
    assert dict(runtime.prefilled) == {0: 5 + 2, 1: 4 + 1 + 3}
    whole = random_decoder.allocate(3)
    random_decoder.prefill(whole, prompts)
    np.testing.assert_array_equal(random_decoder.lengths([*parents, *slots]), [5, 4, 7, 5, 3])
    last_hidden = np.asarray(random_decoder.cache.last_hidden)
    np.testing.assert_allclose(last_hidden[slots], last_hidden[whole], atol=1e-5)
    np.testing.assert_array_equal(last_hidden[parents], parent_hidden)
    # A pool too small for the fresh prompts: the forks taken before go back, uncharged.
    runtime.free(whole)
    with pytest.raises(SlotPoolExhausted):
        runtime.prefill_tokens([0] * 4, [prompts[0]] * 2 + [prompts[2]] * 2,
                               sources=[parents[0]] * 2 + [None] * 2, shared=[5, 5, 0, 0])
    assert random_decoder.pool.num_free == 3
    assert dict(runtime.prefilled) == {0: 5 + 2, 1: 4 + 1 + 3}
