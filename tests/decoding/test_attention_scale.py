"""A YaRN-scaled model's attention factor reaches every attention path the decoder takes:
the decode step on row slots, on pages through the Pallas kernel (interpreted on CPU),
and the trie rounds that read each group's prefix once (the GPU's fused q/k/v kernel:
``tests/kernels/test_qkv_into_pages.py``). The one-pass forward these are
checked against is the path ``tests/models/test_tiny_parity.py`` checks against
``transformers``."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.paged_cache import Paging
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.models.llama import LlamaModel
from tests.decoding import test_trie_pages
from tests.decoding.full_forward import full_forward_of, greedy_reference
from tests.decoding.tiny_models import RANDOM_MAX_LEN, STEP_BUCKET, YARN, tiny_config

PROMPTS = [[3, 14, 15, 9, 26], [5, 35, 8, 9, 7, 9, 32, 3, 8, 4, 6, 2, 7, 1, 8, 2, 8, 1]]
CAP = 8


def _model(rope_scaling) -> LlamaModel:
    model = LlamaModel(dataclasses.replace(tiny_config(64), rope_scaling=rope_scaling),
                       rngs=nnx.Rngs(0))
    model.lm_head.kernel[...] = model.lm_head.kernel[...] * 50  # no near-ties in greedy
    return model


@pytest.fixture(scope="module")
def yarn_model() -> LlamaModel:
    return _model(YARN)


def test_the_attention_factor_changes_what_the_model_computes(yarn_model):
    """Guards the tests below against passing with the factor silently dropped."""
    unscaled = _model(dataclasses.replace(YARN, attention_factor=1.0))
    assert yarn_model.config.attention_scale == pytest.approx(8 ** -0.5 * 2.25)
    _, scaled_logits = full_forward_of(yarn_model)(PROMPTS[1])
    _, unscaled_logits = full_forward_of(unscaled)(PROMPTS[1])
    assert np.abs(scaled_logits - unscaled_logits).max() > 0.1


@pytest.mark.parametrize("paging", [None, Paging(page_size=4, num_pages=64,
                                                 attention="pallas")],
                         ids=["row slots", "pages, Pallas kernel"])
def test_greedy_steps_of_a_yarn_model_equal_its_full_forward_pass(yarn_model, paging):
    decoder = Decoder(yarn_model, num_slots=4, max_len=RANDOM_MAX_LEN,
                      newline_table=np.zeros(64, bool), eos_ids=[], min_batch_bucket=2,
                      min_step_bucket=STEP_BUCKET, paging=paging)
    slots = decoder.allocate(len(PROMPTS))
    decoder.prefill(slots, PROMPTS)
    step = decoder.sample_steps(slots, problem_keys=jax.random.split(jax.random.key(0), 2),
                                node_ids=[0, 0], params=SamplingParams.make(2), max_tokens=CAP)
    forward = full_forward_of(yarn_model)
    for row, prompt in enumerate(PROMPTS):
        tokens, logprobs, hidden = greedy_reference(forward, prompt, CAP)
        assert step.row_tokens(row) == tokens, row
        np.testing.assert_allclose(step.logprobs[row], logprobs, atol=1e-5)
        np.testing.assert_allclose(step.hidden[row], hidden, atol=1e-5)


def test_tries_reading_each_groups_prefix_once_scale_as_each_row_alone(yarn_model):
    test_trie_pages.assert_same_tries(test_trie_pages.trie_decoder(yarn_model),
                                      test_trie_pages.trie_decoder(yarn_model,
                                                                   shared_prefix=True))
