import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qstar_jax.qvalue.head import QHead, QHeadConfig, QHeadModel, head_inputs

E = 6


@pytest.fixture(scope="module")
def mlp_head():
    return QHead(QHeadConfig(hidden_size=E, mlp_widths=(5, 3)), rngs=nnx.Rngs(1))


def test_vmapped_scores_equal_a_loop_over_candidates(mlp_head):
    hiddens = np.random.default_rng(0).normal(size=(2, 4, E)).astype(np.float32)
    one = jax.jit(lambda h: jax.nn.sigmoid(mlp_head.raw_score(h)))
    loop = np.array([[float(one(hiddens[b, k]))
                      for k in range(4)] for b in range(2)])
    values = jax.jit(mlp_head.values)
    np.testing.assert_allclose(np.asarray(values(hiddens)), loop, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(values(hiddens[1])), loop[1], rtol=1e-6)
    assert values(hiddens).shape == (2, 4)


def test_linear_raw_head_is_an_affine_map():
    head = QHead(QHeadConfig(hidden_size=E, output="raw"), rngs=nnx.Rngs(0))
    hiddens = np.random.default_rng(1).normal(size=(3, E)).astype(np.float32)
    expected = hiddens @ np.asarray(head.out.kernel[...])[:, 0] + np.asarray(head.out.bias[...])
    np.testing.assert_allclose(np.asarray(jax.jit(head.values)(hiddens)), expected, rtol=1e-5)


def test_an_mlp_head_is_gelu_hidden_layers_then_a_linear_output(mlp_head):
    """The forward pass by hand from the layers' weights: hidden widths 5 and 3, each
    GELU(x W + b), then the output's logit, through a sigmoid."""
    hiddens = np.random.default_rng(3).normal(size=(4, E))

    def gelu(x):  # the tanh form, jax.nn.gelu's default
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    def weights(layer):
        return (np.asarray(layer.kernel[...], np.float64), np.asarray(layer.bias[...], np.float64))

    x = hiddens
    for layer in mlp_head.hidden_layers:
        kernel, bias = weights(layer)
        x = gelu(x @ kernel + bias)
    kernel, bias = weights(mlp_head.out)
    expected = 1 / (1 + np.exp(-(x @ kernel + bias)[:, 0]))
    got = np.asarray(jax.jit(mlp_head.values)(hiddens.astype(np.float32)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_score_hidden_pads_to_a_bucket_and_returns_exactly_n_values(mlp_head):
    model = QHeadModel(mlp_head)
    hiddens = np.random.default_rng(2).normal(size=(5, E)).astype(np.float32)
    scores = model.score_hidden(jnp.asarray(hiddens, jnp.bfloat16))
    assert scores.shape == (5,) and scores.dtype == np.float32
    expected = np.asarray(jax.jit(mlp_head.values)(jnp.asarray(hiddens, jnp.bfloat16)))
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert np.all((scores > 0) & (scores < 1))
    with pytest.raises(ValueError, match=r"\[N, W=6\]"):
        model.score_hidden(hiddens[:, :4])


def test_score_hidden_takes_a_list_of_rows_as_it_takes_an_array(mlp_head):
    model = QHeadModel(mlp_head)
    hiddens = np.random.default_rng(3).normal(size=(3, E)).astype(np.float32)
    np.testing.assert_allclose(model.score_hidden(hiddens.tolist()), model.score_hidden(hiddens),
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"got shape \(6,\)"):
        model.score_hidden(hiddens[0].tolist())


def test_a_head_reading_step_logprobs_takes_them_as_one_more_scaled_clipped_column():
    config = QHeadConfig(hidden_size=E, mlp_widths=(4,), step_logprob=True)
    hidden = np.ones((3, E), np.float32)
    inputs = head_inputs(hidden, np.array([-0.5, -2.0, -100.0]), config)
    assert inputs.shape == (3, E + 1) and np.all(inputs[:, :E] == 1)
    np.testing.assert_allclose(inputs[:, E], [-5.0, -20.0, -300.0])  # 10 x, clipped at -30
    assert head_inputs(hidden, None, QHeadConfig(hidden_size=E)) is not None
    with pytest.raises(ValueError, match="log-probability"):
        head_inputs(hidden, None, config)
    head = QHead(config, rngs=nnx.Rngs(0))
    assert QHeadModel(head).score_hidden(inputs).shape == (3,)


def test_a_second_opinion_is_one_more_column_after_the_policys_own():
    config = QHeadConfig(hidden_size=E, step_logprob=True, second_opinion=True)
    hidden = np.zeros((2, E), np.float32)
    inputs = head_inputs(hidden, np.array([-1.0, -2.0]), config, np.array([-0.1, -40.0]))
    assert inputs.shape == (2, E + 2)
    np.testing.assert_allclose(inputs[:, E:], [[-10.0, -1.0], [-20.0, -300.0]])
    with pytest.raises(ValueError, match="under the second opinion"):
        head_inputs(hidden, np.array([-1.0, -2.0]), config)
    assert QHeadModel(QHead(config, rngs=nnx.Rngs(0))).score_hidden(inputs).shape == (2,)


def test_bad_head_config_is_rejected():
    with pytest.raises(ValueError, match="output"):
        QHeadConfig(hidden_size=E, output="tanh")
    with pytest.raises(ValueError, match="positive"):
        QHeadConfig(hidden_size=E, mlp_widths=(0,))
