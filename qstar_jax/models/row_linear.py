"""A linear map held as rows, [out, in]: the attention projections of the per-layer
weights copy that ``unstack_layers(transpose_projections=True)`` makes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class RowLinear(nnx.Module):
    """A linear map held as rows, [out, in], rather than ``nnx.Linear``'s [in, out]: the
    per-layer copy's attention projections (``unstack_layers(transpose_projections=True)``).

    XLA:GPU rewrites a batch-1 projection as a multiply and a reduction over the
    contracting axis. Over [in, out] it stores the product in one kernel and reduces its
    columns in another (the reductions an H200 profile of a 1B model's decode ran at 0.5
    to 1.3 TB/s); over [out, in] one kernel multiplies as it reduces each row (the
    compiled programs: ``experiments/device_program.py``; docs/gpu_tpu.md).
    """

    def __init__(self, rows: jax.Array, bias: jax.Array | None):
        self.rows = nnx.Param(rows)
        self.bias = None if bias is None else nnx.Param(bias)

    @classmethod
    def of(cls, *linears: nnx.Linear) -> RowLinear:
        """The ``linears`` (same input) as one map whose outputs are theirs concatenated."""
        rows = jnp.concatenate([linear.kernel[...].T for linear in linears], axis=0)
        biases = [linear.bias for linear in linears]
        if all(bias is None for bias in biases):
            return cls(rows, None)
        if any(bias is None for bias in biases):
            raise ValueError("RowLinear.of joins maps that all have a bias or none do")
        return cls(rows, jnp.concatenate([bias[...] for bias in biases]))

    def __call__(self, x):
        rows = self.rows[...]
        y = jnp.einsum("...i,oi->...o", x.astype(rows.dtype), rows)
        return y if self.bias is None else y + self.bias[...]

    @staticmethod
    def bias_of(linear: RowLinear):
        return None if linear.bias is None else linear.bias[...]
