"""A decode layer's matrix products over rows as one Pallas Triton kernel each (GPU), for
the few tokens of a decode step.

Shapes and contract: ``row_products_reference``. Each program computes ``block_out``
outputs (and, gated, the matching up outputs beside the gate's): it walks the input
width ``block_in`` columns a step, reading its rows' weights once, and multiplies them
with the step's inputs as it reads (RMS-normalised in the kernel, where a norm is asked
for: every program sums the input's squares itself, a few KB that stay in cache). The
products are added up elementwise, [tokens, block_out, block_in], and summed over the
columns once, after the last step, so a step is loads and multiply-adds with no
reduction across threads. The SiLU, the bias and the residual are applied to its outputs
before they are stored.

Why: at batch 1 XLA:GPU runs a Llama layer as some 18 kernels, most of them 1 to 6 µs of
launch and little work (the H200 profile and the compiled programs in docs/gpu_tpu.md),
and stores the MLP's products to apply the SiLU in another. With these four kernels and
the paged-attention one a layer's products, norms, SiLU and residuals take five; on
pages, ``qkv_into_pages_gpu`` takes the first of them with the RoPE and cache writes.
Written without a GPU to time it on: the block sizes are a first guess, which
``experiments/bench_row_products.py`` sweeps on one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from qstar_kernels.paged_attention_gpu import plgpu, require_triton
from qstar_kernels.row_products_reference import check_rows_inputs, finish_products

BLOCK_OUT = 8  # outputs a program computes
BLOCK_IN = 512  # input columns a step of its loop reads, at most
# The float32 elements of a program's running products, [tokens, block_out, block_in]:
# block_in is cut to keep them at this (4,096: 32 registers a thread of 4 warps).
PRODUCTS_HELD = 4096
MAX_ROWS = 4  # tokens a call takes


def _kernel(*refs, norm: bool, gated: bool, has_bias: bool, has_residual: bool, eps: float,
            block_out: int, block_in: int, up_offset: int, x_segments):
    refs = list(refs)
    x_ref = refs.pop(0)
    norm_ref = refs.pop(0) if norm else None
    rows_ref = refs.pop(0)
    bias_ref = refs.pop(0) if has_bias else None
    residual_ref = refs.pop(0) if has_residual else None
    (out_ref,) = refs
    f32 = jnp.float32
    tokens, steps = x_ref.shape[0], rows_ref.shape[1] // block_in
    first = pl.program_id(0) * block_out

    def columns(step):
        return column_block(step, block_in)

    def x_columns(step):  # where x holds the inputs of ``columns(step)``
        if x_segments is None:
            return columns(step)
        used, stride = x_segments
        per_segment = used // block_in  # steps; lax's division: no floor fix-up for Triton
        start = jax.lax.div(step, per_segment) * stride + \
            jax.lax.rem(step, per_segment) * block_in
        return pl.ds(pl.multiple_of(start, block_in), block_in)

    if norm:
        inverse_rms = inverse_rms_of(x_ref, slice(None), block_in, eps)

    def inputs(step):
        chunk = x_ref[:, x_columns(step)]
        if norm:
            scale = norm_ref[columns(step)].astype(f32)
            chunk = (chunk.astype(f32) * inverse_rms[:, None] * scale[None, :]).astype(
                x_ref.dtype)
        return chunk.astype(f32)

    def products(chunk, start, step):  # [tokens, block_out, block_in]
        weights = rows_ref[pl.ds(start, block_out), columns(step)].astype(f32)
        return chunk[:, None, :] * weights[None, :, :]

    def one_step(step, held):
        chunk = inputs(step)
        if gated:
            return (held[0] + products(chunk, first, step),
                    held[1] + products(chunk, first + up_offset, step))
        return held + products(chunk, first, step)

    zeros = jnp.zeros((tokens, block_out, block_in), f32)
    held = jax.lax.fori_loop(0, steps, one_step, (zeros, zeros) if gated else zeros)
    sums, up = (jnp.sum(part, axis=2) for part in held) if gated else (
        jnp.sum(held, axis=2), None)
    bias = bias_ref[pl.ds(first, block_out)] if has_bias else None
    residual = residual_ref[...] if has_residual else None
    out_ref[...] = finish_products(sums, out_ref.dtype, up=up, bias=bias, residual=residual)


def largest_block(size: int, cap: int) -> int:
    """The largest power of two that divides ``size`` and is at most ``cap``."""
    return min(size & -size, 1 << (cap.bit_length() - 1))


def input_block(width: int, cap: int, held_per_column: int) -> int:
    """Input columns a step reads: the largest power of two dividing ``width``, at most
    ``cap``, that keeps a program's running products (``held_per_column`` a column) at
    ``PRODUCTS_HELD`` or fewer."""
    return largest_block(width, max(1, min(cap, PRODUCTS_HELD // held_per_column)))


def column_block(step, block_in: int):
    """The input columns step ``step`` of a program's loop reads."""
    return pl.ds(pl.multiple_of(step * block_in, block_in), block_in)


def inverse_rms_of(x_ref, rows, block_in: int, eps: float):
    """1 / RMS of ``x_ref[rows]`` over its last axis, summed ``block_in`` columns a step
    (``rows``: a token's index, a scalar result, or a slice of them)."""
    width = x_ref.shape[-1]

    def add_squares(step, total):
        chunk = x_ref[rows, column_block(step, block_in)].astype(jnp.float32)
        return total + jnp.sum(chunk * chunk, axis=-1)
    shape = () if isinstance(rows, int) else (x_ref.shape[0],)
    squares = jax.lax.fori_loop(0, width // block_in, add_squares,
                                jnp.zeros(shape, jnp.float32))
    return jax.lax.rsqrt(squares / width + eps)


@functools.partial(jax.jit, static_argnames=("eps", "gated", "x_segments", "block_out",
                                             "block_in", "num_warps", "num_stages",
                                             "interpret"))
def rows_product_gpu(x: jax.Array, rows: jax.Array, *, norm_weight: jax.Array | None = None,
                     eps: float = 1e-6, gated: bool = False, bias: jax.Array | None = None,
                     residual: jax.Array | None = None,
                     x_segments: tuple[int, int] | None = None, block_out: int = BLOCK_OUT,
                     block_in: int = BLOCK_IN, num_warps: int = 4, num_stages: int = 3,
                     interpret: bool = False) -> jax.Array:
    """As ``rows_product_reference``, for at most ``MAX_ROWS`` tokens. ``block_out`` and
    ``block_in`` are caps: each is cut to the largest power of two dividing the outputs
    (gated: F) or the width (with ``x_segments``, the inputs a segment holds), and
    ``block_in`` to hold ``PRODUCTS_HELD`` running products at most. ``num_warps`` and
    ``num_stages`` are Triton's. ``interpret=True`` runs it on CPU."""
    require_triton("row-products")
    check_rows_inputs(x, rows, norm_weight=norm_weight, gated=gated, bias=bias,
                      residual=residual, x_segments=x_segments)
    tokens, width = x.shape[0], rows.shape[1]
    if tokens > MAX_ROWS:
        raise ValueError(f"the row-products kernel takes at most {MAX_ROWS} tokens, got "
                         f"{tokens}: use the jnp path for more")
    outputs = rows.shape[0] // 2 if gated else rows.shape[0]
    padded = pl.next_power_of_2(tokens)  # Triton's blocks are powers of two
    block_out = largest_block(outputs, block_out)
    block_in = input_block(width if x_segments is None else x_segments[0], block_in,
                           padded * block_out)

    def pad(rows):
        return rows if padded == tokens else jnp.pad(rows, ((0, padded - tokens), (0, 0)))
    operands = [pad(x)]
    if norm_weight is not None:
        operands.append(norm_weight)
    operands.append(rows)
    if bias is not None:
        operands.append(bias)
    whole = pl.BlockSpec()  # Triton reads an un-blocked operand through its pointer
    out_block = pl.BlockSpec((padded, block_out), lambda i: (0, i))
    in_specs = [whole] * len(operands)
    if residual is not None:
        operands.append(pad(residual))
        in_specs.append(out_block)
    kernel = functools.partial(
        _kernel, norm=norm_weight is not None, gated=gated, has_bias=bias is not None,
        has_residual=residual is not None, eps=eps, block_out=block_out, block_in=block_in,
        up_offset=outputs, x_segments=x_segments)
    out = pl.pallas_call(
        kernel, grid=(outputs // block_out,), in_specs=in_specs, out_specs=out_block,
        out_shape=jax.ShapeDtypeStruct((padded, outputs), x.dtype),
        interpret=interpret, name="rows_product",
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
    )(*operands)
    return out[:tokens]
