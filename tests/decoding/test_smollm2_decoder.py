"""The decoder on the one real pretrained model here, SmolLM2-135M-Instruct (GGUF).

``tests/models`` checks the plain greedy loop over this model against transformers'
``generate``; this file checks that the Decoder's steps reproduce that loop.
"""

import jax
import numpy as np
import pytest

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.step_sampler import EndReason
from qstar_jax.models import load_model
from tests.decoding.stepping import generate_steps
from tests.models.model_runs import greedy_generate

QUESTION = "Explain step by step how to compute 17 * 24 without a calculator."
MIN_TOKENS = 48


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m-instruct")


@pytest.mark.optimized
def test_greedy_steps_equal_the_plain_greedy_loop(smollm2):
    tokenizer = smollm2.tokenizer
    prompt = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user",
                                                               "content": QUESTION}]))
    decoder = Decoder(smollm2.model, num_slots=1, max_len=len(prompt) + 2 * MIN_TOKENS,
                      newline_table=tokenizer.newline_table(smollm2.config.vocab_size),
                      eos_ids=tokenizer.eos_ids)
    slots = decoder.allocate(1)
    decoder.prefill(slots, [prompt])
    steps, generated = [], []
    for step in generate_steps(decoder, slots, problem_keys=jax.random.split(jax.random.key(0), 1),
                               node_ids=[0], params=SamplingParams.make(1), max_tokens=16,
                               max_steps=50):
        steps.append((step.row_tokens(0), EndReason(int(step.end_reason[0]))))
        generated += steps[-1][0]
        if len(generated) >= MIN_TOKENS:
            break
    assert generated == greedy_generate(smollm2.model, prompt, new_tokens=len(generated),
                                        eos_ids=tokenizer.eos_ids)
    # Each step ends at the first token holding a newline, and only there.
    assert any(reason == EndReason.NEWLINE for _, reason in steps)
    for tokens, reason in steps:
        has_newline = ["\n" in tokenizer.decode([t]) for t in tokens]
        assert has_newline == [False] * (len(tokens) - 1) + [reason == EndReason.NEWLINE]
    assert "17" in tokenizer.decode(generated)
    np.testing.assert_array_equal(decoder.lengths(slots), [len(prompt) + len(generated)])
