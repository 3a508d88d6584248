"""RowLinear: linear maps held as rows [out, in], joined along their outputs."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qstar_jax.models.row_linear import RowLinear


def _linear(n_out: int, bias: bool, seed: int, dtype=jnp.float32) -> nnx.Linear:
    linear = nnx.Linear(6, n_out, use_bias=bias, dtype=dtype, param_dtype=dtype,
                        rngs=nnx.Rngs(seed))
    if bias:
        linear.bias[...] = (jnp.arange(n_out) + seed).astype(dtype)
    return linear


@pytest.mark.parametrize("bias", [False, True])
def test_joined_maps_give_each_maps_outputs_side_by_side(bias):
    linears = [_linear(n, bias, seed) for seed, n in enumerate((4, 2, 3))]
    joined = RowLinear.of(*linears)
    assert joined.rows[...].shape == (9, 6) and (joined.bias is None) == (not bias)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 6)), jnp.float32)
    expected = jnp.concatenate([linear(x) for linear in linears], axis=-1)
    np.testing.assert_allclose(np.asarray(joined(x)), np.asarray(expected), atol=1e-6)
    # What the layer's row kernels are handed as the bias: [0 1 2 3 | 1 2 | 2 3 4] or none.
    if bias:
        np.testing.assert_array_equal(np.asarray(RowLinear.bias_of(joined)),
                                      [0, 1, 2, 3, 1, 2, 2, 3, 4])
    else:
        assert RowLinear.bias_of(joined) is None


def test_a_float32_input_to_bfloat16_rows_is_computed_in_bfloat16_like_linear():
    linear = _linear(4, True, 0, jnp.bfloat16)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 6)), jnp.float32)
    got, expected = RowLinear.of(linear)(x), linear(x)
    assert got.dtype == expected.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32),
                               atol=2e-2, rtol=2e-2)


def test_maps_of_which_only_some_have_a_bias_are_refused():
    with pytest.raises(ValueError, match="all have a bias or none do"):
        RowLinear.of(_linear(4, True, 0), _linear(2, False, 1))
