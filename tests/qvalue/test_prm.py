import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qstar_jax.decoding.kv_cache import init_cache
from qstar_jax.models.config import ModelConfig
from qstar_jax.models.llama import LlamaModel
from qstar_jax.search.interface import QItem
from qstar_jax.qvalue.prm import ShepherdPRM, shepherd_text

CONFIG = ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                     num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
QUESTIONS = ["What is 2+3?", "Reach 24 from 4 6 1 1."]
TAG, GOOD, BAD = "#", 5, 7


def encode(text):
    return [1] + [2 + ord(ch) % 60 for ch in text]  # BOS, then one token per character


@pytest.fixture(scope="module")
def model():
    return LlamaModel(CONFIG, rngs=nnx.Rngs(0))


def direct_good_probability(model, text):
    """The tag's P(good) from one unpadded row with a cache of exactly its length."""
    graphdef, state = nnx.split(model)

    @jax.jit  # one compile per row length; cheaper than running the layers eagerly
    def tag_logits(state, tokens):
        row_model = nnx.merge(graphdef, state)
        length = tokens.shape[1]
        cache = init_cache(CONFIG, slots=1, max_len=length)
        hidden, _, _ = row_model(tokens, jnp.arange(length)[None], jnp.zeros(1, jnp.int32),
                                 cache.k, cache.v)
        return row_model.logits(hidden[0, -1])

    logits = np.asarray(tag_logits(state, jnp.asarray([encode(text)], jnp.int32)), np.float64)
    return np.exp(logits[GOOD]) / (np.exp(logits[GOOD]) + np.exp(logits[BAD]))


def test_shepherd_prm_matches_a_direct_computation(model):
    prm = ShepherdPRM(model, encode=encode, question=QUESTIONS.__getitem__, step_tag=TAG,
                      good_token_id=GOOD, bad_token_id=BAD)
    items = [QItem(problem_index=0, prefix_steps=(), step_text="2+3=5", hidden=None),
             QItem(problem_index=1, prefix_steps=("6-1=5", "5-1=4"), step_text="4*6=24",
                   hidden=None),
             QItem(problem_index=0, prefix_steps=("2+3=6",), step_text="The answer is 6",
                   hidden=None)]
    texts = [shepherd_text(QUESTIONS[i.problem_index], i.prefix_steps + (i.step_text,), TAG)
             for i in items]
    assert texts[1] == "Reach 24 from 4 6 1 1. Step 1: 6-1=5 #\nStep 2: 5-1=4 #\nStep 3: 4*6=24 #"
    got = prm.score_steps(items)  # three rows of different lengths, padded to 4 x 64
    expected = [direct_good_probability(model, text) for text in texts]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert len(set(np.round(got, 6))) == 3  # the rows are really different
    assert prm.score_steps([]).shape == (0,)
    # Each item's whole text is read uncached, counted for its problem (padding aside).
    assert (prm.forward_tokens[0], prm.forward_tokens[1]) == (
        len(encode(texts[0])) + len(encode(texts[2])), len(encode(texts[1])))


def test_the_prm_reads_steps_numbered_one_a_line_as_math_shepherds_data_holds_them():
    """Math-Shepherd's data and model card: "{question} Step 1: {step} ки\\nStep 2: ..."; a
    step the policy began with a blank line (steps keep the line breaks before them) or
    broke over lines is one line there."""
    steps = ("Janet's ducks lay 16 eggs per day.", "\n\nShe eats 3, so 16 - 3 = 13 left. ",
             "The answer is:\n 18")
    assert shepherd_text("How much?", steps, "ки") == (
        "How much? Step 1: Janet's ducks lay 16 eggs per day. ки\n"
        "Step 2: She eats 3, so 16 - 3 = 13 left. ки\nStep 3: The answer is: 18 ки")


def test_shepherd_prm_rejects_token_ids_outside_the_vocabulary(model):
    with pytest.raises(ValueError, match="bad_token_id=64 is outside the model's vocabulary"):
        ShepherdPRM(model, encode=encode, question=QUESTIONS.__getitem__, step_tag=TAG,
                    good_token_id=GOOD, bad_token_id=64)
    # A negative id would index the vocabulary from its end: -1 would read token 63.
    with pytest.raises(ValueError, match="good_token_id=-1 is outside the model's vocabulary"):
        ShepherdPRM(model, encode=encode, question=QUESTIONS.__getitem__, step_tag=TAG,
                    good_token_id=-1, bad_token_id=BAD)


def test_shepherd_prm_refuses_an_input_encoded_as_no_tokens(model):
    prm = ShepherdPRM(model, encode=lambda text: [], question=QUESTIONS.__getitem__,
                      step_tag=TAG, good_token_id=GOOD, bad_token_id=BAD)
    with pytest.raises(ValueError, match="encode\\(\\) returned no tokens for a PRM input"):
        prm.score_steps([QItem(problem_index=0, prefix_steps=(), step_text="2+3=5", hidden=None)])
