"""Tiny models and decoders shared by the decoding tests (one compile per shape per session)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qstar_jax.decoding.engine import Decoder
from qstar_jax.models.llama import LlamaModel
from tests.decoding.full_forward import full_forward_of
from tests.decoding.tiny_models import (COUNTING_EOS_ID, COUNTING_MAX_LEN, COUNTING_NEWLINE_ID,
                                        COUNTING_VOCAB, RANDOM_MAX_LEN, STEP_BUCKET, tiny_config)


@pytest.fixture(scope="session")
def random_model() -> LlamaModel:
    model = LlamaModel(tiny_config(64), rngs=nnx.Rngs(0))
    # Sharper-than-initialised logits so that greedy choices are not near-ties.
    model.lm_head.kernel[...] = model.lm_head.kernel[...] * 50
    return model


@pytest.fixture(scope="session")
def shared_random_decoder(random_model) -> Decoder:
    return Decoder(random_model, num_slots=8, max_len=RANDOM_MAX_LEN,
                   newline_table=np.zeros(64, bool), eos_ids=[], min_batch_bucket=2,
                   min_step_bucket=STEP_BUCKET)


def _free_all(decoder: Decoder) -> None:
    if decoder.pool.allocated:
        decoder.free(sorted(decoder.pool.allocated))


@pytest.fixture
def random_decoder(shared_random_decoder):
    """The session's decoder over ``random_model`` (no newline or EOS stops); every slot
    is free when a test starts."""
    yield shared_random_decoder
    _free_all(shared_random_decoder)


@pytest.fixture(scope="session")
def counting_model() -> LlamaModel:
    """A rigged model whose greedy next token after token i is (i + 1) % 32.

    Token i embeds as 10 * e_i, which dwarfs what the small random layers add, and the
    LM head maps e_i to a large logit for i + 1.
    """
    model = LlamaModel(tiny_config(COUNTING_VOCAB), rngs=nnx.Rngs(1))
    model.embed_tokens.embedding[...] = 10 * jnp.eye(COUNTING_VOCAB)
    model.lm_head.kernel[...] = 10 * jnp.roll(jnp.eye(COUNTING_VOCAB), 1, axis=1)
    return model


@pytest.fixture(scope="session")
def shared_counting_decoder(counting_model) -> Decoder:
    newline_table = np.zeros(COUNTING_VOCAB, bool)
    newline_table[COUNTING_NEWLINE_ID] = True
    return Decoder(counting_model, num_slots=8, max_len=COUNTING_MAX_LEN,
                   newline_table=newline_table, eos_ids=[COUNTING_EOS_ID],
                   min_batch_bucket=8, min_step_bucket=STEP_BUCKET)


@pytest.fixture
def counting_decoder(shared_counting_decoder):
    """Decoder over ``counting_model``: token 7 ends a step, token 9 is EOS."""
    yield shared_counting_decoder
    _free_all(shared_counting_decoder)


@pytest.fixture(scope="session")
def full_forward(random_model):
    """``full_forward_of(random_model)``."""
    return full_forward_of(random_model)
