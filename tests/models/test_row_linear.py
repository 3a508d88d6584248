"""RowLinear: linear maps held as rows [out, in], joined along their outputs."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qstar_jax.models.llama import RowLinear


def _linear(n_out: int, bias: bool, seed: int) -> nnx.Linear:
    linear = nnx.Linear(6, n_out, use_bias=bias, rngs=nnx.Rngs(seed))
    if bias:
        linear.bias[...] = jnp.arange(n_out, dtype=jnp.float32) + seed
    return linear


@pytest.mark.parametrize("bias", [False, True])
def test_joined_maps_give_each_maps_outputs_side_by_side(bias):
    linears = [_linear(n, bias, seed) for seed, n in enumerate((4, 2, 3))]
    joined = RowLinear.of(*linears)
    assert joined.rows[...].shape == (9, 6) and (joined.bias is None) == (not bias)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 6)), jnp.float32)
    expected = jnp.concatenate([linear(x) for linear in linears], axis=-1)
    np.testing.assert_allclose(np.asarray(joined(x)), np.asarray(expected), atol=1e-6)


def test_maps_of_which_only_some_have_a_bias_are_refused():
    with pytest.raises(ValueError, match="all have a bias or none do"):
        RowLinear.of(_linear(4, True, 0), _linear(2, False, 1))
