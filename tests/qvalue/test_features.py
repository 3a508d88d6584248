import jax
import numpy as np
import pytest
from flax import nnx

from qstar_jax.models.config import ModelConfig
from qstar_jax.models.llama import LlamaModel
from qstar_jax.qvalue.dataset import StepPair
from qstar_jax.qvalue.features import StepFeatures, shared_carriers, step_texts

CONFIG = ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                     num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)


class CharTokens:
    pad_id = 0

    def encode(self, text):
        return [1] + [2 + ord(ch) % 60 for ch in text]  # BOS, then one token per character

    encode_input = encode


@pytest.fixture(scope="module")
def model():
    return LlamaModel(CONFIG, rngs=nnx.Rngs(0))


def direct_features(model, state, step):
    """The hidden state at the text's last token and the step's summed log-probability,
    from one unpadded row with logits at every position."""
    tokens = np.asarray([CharTokens().encode(state + step)], np.int32)
    hidden = model.forward_sequence(tokens)
    logprobs = np.asarray(jax.nn.log_softmax(model.logits(hidden[0]), axis=-1), np.float64)
    start = len(CharTokens().encode(state))
    step_logprob = sum(logprobs[t - 1, tokens[0, t]] for t in range(start, tokens.shape[1]))
    return np.asarray(hidden[0, -1]), step_logprob


def test_features_read_at_the_steps_positions_only_are_a_whole_rows_features(model, capsys):
    states = ["Q: 2+3?\n", "Q: reach 24 from 4 6 1 1.\n6-1=5\n", "Q: 7*8?\n", "Q: 9-4?\n"]
    steps = ["2+3=5\n", "5-1=4, then 4*6=24 and that is all\n", "", "9-4=5\n"]
    features = StepFeatures(model, CharTokens(), batch_size=3)  # two calls: 3 rows, 1 row
    hidden, step_logprob = features(states, steps, progress="step features")
    bar = capsys.readouterr().err
    assert "step features: 100%" in bar and "2/2" in bar  # a bar over the 2 calls
    again = features(states, steps)  # a search round's call: no bar
    assert not capsys.readouterr().err
    np.testing.assert_array_equal(again[0], hidden)
    for k, (state, step) in enumerate(zip(states, steps)):
        want_hidden, want_logprob = direct_features(model, state, step)
        np.testing.assert_allclose(hidden[k], want_hidden, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(step_logprob[k], want_logprob, rtol=1e-4, atol=1e-4)
    assert step_logprob[2] == 0.0  # an empty step has no tokens to score
    assert step_logprob[1] < step_logprob[0] < 0  # a long step (16 predicted tokens) sums more


def test_the_steps_of_one_trace_share_one_row_and_keep_their_own_features(model):
    """A trace's states and steps, a branch off it and a step of another problem: every
    pair's features are those of its own unshared row, though the trace's pairs ride
    on one row (its longest text's)."""
    prompt, trace = "Q: 4+5*2?\n", ["5*2=10\n", "4+10=14\n", "#### 14\n"]
    states = [prompt + "".join(trace[:k]) for k in range(3)] + [prompt + trace[0], "Q: 1+1?\n"]
    steps = trace + ["10+4=14\n", "1+1=2\n"]
    tokens = [CharTokens().encode(s + a) for s, a in zip(states, steps)]
    assert shared_carriers(tokens) == {2: [2, 1, 0], 3: [3], 4: [4]}
    read = {}
    hidden, step_logprob = StepFeatures(model, CharTokens())(states, steps,
                                                             rows_read=read.update)
    assert read == {c: tokens[c] for c in (2, 3, 4)}  # the rows the pass read, each once
    for k, (state, step) in enumerate(zip(states, steps)):
        want_hidden, want_logprob = direct_features(model, state, step)
        np.testing.assert_allclose(hidden[k], want_hidden, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(step_logprob[k], want_logprob, rtol=1e-4, atol=1e-4)


def test_a_text_is_carried_only_by_one_whose_tokens_begin_with_all_of_its_own():
    # [1, 2] begins [1, 2, 3] and the duplicate [1, 2, 3] rides on the first; [1, 3] and
    # [2] begin nothing longer; [1, 2, 4] shares a prefix but is not a prefix.
    tokens = [[1, 2], [1, 2, 3], [1, 3], [1, 2, 3], [2], [1, 2, 4]]
    assert shared_carriers(tokens) == {1: [1, 3, 0], 5: [5], 2: [2], 4: [4]}


def test_step_texts_are_each_steps_own_problem_and_path_then_the_step():
    steps = [StepPair(problem_index=1, prefix_steps=("a", "b"), step_text="c"),
             StepPair(problem_index=0, prefix_steps=(), step_text="d")]
    assert step_texts(["Q0\n", "Q1\n"], steps) == (["Q1\na\nb\n", "Q0\n"], ["c\n", "d\n"])
