"""Training-step compiler options: same gradients, and no options where XLA refuses them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qstar_jax.models import compile_options
from qstar_jax.models.config import ModelConfig
from qstar_jax.models.llama import LlamaModel


def test_a_step_compiled_with_the_options_computes_the_same_gradients():
    cfg = ModelConfig(model_type="llama", vocab_size=40, hidden_size=48, intermediate_size=96,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=12,
                      tie_word_embeddings=True, max_position_embeddings=64)
    graphdef, params, rest = nnx.split(LlamaModel(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tokens = jax.random.randint(jax.random.key(1), (16, 40), 0, cfg.vocab_size)

    def loss(params):
        model = nnx.merge(graphdef, params, rest)
        logits = model.logits(model.forward_sequence(tokens))
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
            logits, tokens[..., None], -1)[..., 0])

    options = compile_options.training_compiler_options()
    if jax.default_backend() == "cpu":
        assert options, "this XLA should accept the CPU training options"
    default = jax.jit(jax.value_and_grad(loss))(params)
    tuned = jax.jit(jax.value_and_grad(loss), compiler_options=options)(params)
    for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(tuned)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_an_option_this_xla_refuses_means_no_options(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(compile_options, "_YNNPACK_DOT_FUSIONS",
                        {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_FUSION_TYPE"})
    compile_options.training_compiler_options.cache_clear()
    try:
        assert compile_options.training_compiler_options() == {}
    finally:
        compile_options.training_compiler_options.cache_clear()


def test_another_backend_gets_no_options(monkeypatch: pytest.MonkeyPatch):
    """The option is a CPU one: a GPU's training steps compile as they would without it."""
    monkeypatch.setattr(compile_options.jax, "default_backend", lambda: "gpu")
    compile_options.training_compiler_options.cache_clear()
    try:
        assert compile_options.training_compiler_options() == {}
    finally:
        compile_options.training_compiler_options.cache_clear()
