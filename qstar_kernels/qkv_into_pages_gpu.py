"""A decode step's q/k/v projection, RoPE and cache writes as one Pallas Triton kernel
(GPU), for the few tokens of a decode step on a paged cache.

Shapes: B tokens (one per row), E hidden size, H query heads, K kv heads, G = H // K,
D head_dim, L layers, P pages, S page size, R >= G query rows per kv head (the paged
attention kernel's layout, ``paged_attention_layout.to_rows``).

What the layer otherwise computes in five kernels (the input norm and fused q/k/v rows:
``row_products_gpu``; the query's RoPE and its padding to R rows; the key's RoPE and
cache write; the value's write; the read of the old key and value that a dropping write
makes XLA do), in one: each program computes four of a head's rotary pairs, the
outputs d and d + D/2 for four d (the inputs RMS-normalised as it reads them, each
weight read once), rotates them by the token's position, and stores them: a query head's
into its row of the attention kernel's query block (and zeros into the block's padding
rows), a key's or value's into the cache page and offset of its token, in place (the
pools are aliased to the outputs). A token marked invalid (a padding row) writes no key
or value: Triton masks the store, so no page is set aside for it.

Arithmetic and rounding are the decoder's (``DecoderLayer._call_on_rows``): the normed
input, the products (with Qwen2's biases) and the rotated outputs rounded to the input's
dtype where it rounds them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from qstar_kernels.paged_attention_gpu import plgpu, require_triton
from qstar_kernels.row_products_gpu import BLOCK_IN, column_block, input_block, inverse_rms_of

PAIRS = 4  # rotary pairs a program computes (input columns a step: row_products_gpu's)


def _kernel(x_ref, norm_ref, rows_ref, *refs, has_bias: bool, eps: float, num_heads: int,
            num_kv_heads: int, block_in: int):
    refs = list(refs)
    bias_ref = refs.pop(0) if has_bias else None
    (positions_ref, pages_ref, offsets_ref, valid_ref, layer_ref, inv_freq_ref, _, _,
     q_ref, k_out_ref, v_out_ref) = refs
    f32, dtype = jnp.float32, x_ref.dtype
    tokens, width = x_ref.shape
    head_dim = q_ref.shape[3]
    half, group, query_rows = head_dim // 2, num_heads // num_kv_heads, q_ref.shape[2]
    pairs_per_head = half // PAIRS
    head, block = pl.program_id(0) // pairs_per_head, pl.program_id(0) % pairs_per_head
    low = head * head_dim + block * PAIRS  # the first of its rows in the fused q/k/v rows
    steps = width // block_in

    def columns(step):
        return column_block(step, block_in)

    inverse_rms = [inverse_rms_of(x_ref, token, block_in, eps) for token in range(tokens)]

    def one_step(step, held):
        scale = norm_ref[columns(step)].astype(f32)
        lows = rows_ref[pl.ds(low, PAIRS), columns(step)].astype(f32)
        highs = rows_ref[pl.ds(low + half, PAIRS), columns(step)].astype(f32)
        out = []
        for token in range(tokens):
            normed = (x_ref[token, columns(step)].astype(f32) * inverse_rms[token]
                      * scale).astype(dtype).astype(f32)
            out.append(held[2 * token] + normed[None, :] * lows)
            out.append(held[2 * token + 1] + normed[None, :] * highs)
        return tuple(out)

    zeros = jnp.zeros((PAIRS, block_in), f32)
    held = jax.lax.fori_loop(0, steps, one_step, (zeros,) * (2 * tokens))
    dims = pl.ds(block * PAIRS, PAIRS)
    angles_per_position = inv_freq_ref[dims].astype(f32)
    is_query, is_key = head < num_heads, (head >= num_heads) & (head < num_heads + num_kv_heads)
    for token in range(tokens):
        pair = []
        for part, offset in ((held[2 * token], low), (held[2 * token + 1], low + half)):
            value = jnp.sum(part, axis=1).astype(dtype)
            if has_bias:
                value = value + bias_ref[pl.ds(offset, PAIRS)].astype(dtype)
            pair.append(value.astype(f32))
        angles = positions_ref[token].astype(f32) * angles_per_position
        cos, sin = jnp.cos(angles), jnp.sin(angles)
        rotated = ((pair[0] * cos - pair[1] * sin).astype(dtype),
                   (pair[1] * cos + pair[0] * sin).astype(dtype))
        first_half, second_half = dims, pl.ds(half + block * PAIRS, PAIRS)

        @pl.when(is_query)
        def _(token=token, rotated=rotated):
            kv_head, row = head // group, head % group
            q_ref[token, kv_head, row, first_half] = rotated[0]
            q_ref[token, kv_head, row, second_half] = rotated[1]

            @pl.when(row == 0)  # the block's padding rows, once per kv head
            def _():
                for padding_row in range(group, query_rows):
                    q_ref[token, kv_head, padding_row, first_half] = jnp.zeros((PAIRS,), dtype)
                    q_ref[token, kv_head, padding_row, second_half] = jnp.zeros((PAIRS,), dtype)

        for out_ref, is_it, values in ((k_out_ref, is_key, rotated),
                                       (v_out_ref, head >= num_heads + num_kv_heads,
                                        tuple(p.astype(dtype) for p in pair))):
            @pl.when(is_it & (valid_ref[token] != 0))
            def _(out_ref=out_ref, values=values, token=token):
                kv_head = (head - num_heads) % num_kv_heads
                where = (layer_ref[0], pages_ref[token], kv_head, offsets_ref[token])
                out_ref[where + (first_half,)] = values[0].astype(out_ref.dtype)
                out_ref[where + (second_half,)] = values[1].astype(out_ref.dtype)


@functools.partial(jax.jit, static_argnames=("num_heads", "num_kv_heads", "query_rows",
                                             "eps", "num_warps", "interpret"))
def qkv_into_pages_gpu(x, norm_weight, qkv_rows, bias, positions, pages, offsets, valid,
                       k_pages, v_pages, layer, inv_freq, *, num_heads: int,
                       num_kv_heads: int, query_rows: int, eps: float = 1e-6,
                       num_warps: int = 4, interpret: bool = False):
    """x [B, E] (the layer's input, before its norm); norm_weight [E]; qkv_rows
    [(H + 2K) * D, E] (q's rows, then k's, then v's: ``RowLinear.of(q, k, v)``); bias
    [(H + 2K) * D] or None; positions, pages, offsets [B] int32 (each token's position,
    and the page and offset its key and value go to); valid [B] (0: a padding row,
    which writes nothing); k_pages, v_pages [L, P, K, S, D] (aliased to the outputs: in a
    jitted caller that drops them, updated in place);
    layer: int32 scalar; inv_freq [D / 2] (RoPE's).

    Returns (q as the attention kernel's rows [B, K, query_rows, D], rows past G zero;
    k_pages; v_pages)."""
    require_triton("q/k/v")
    tokens, width = x.shape
    head_dim = k_pages.shape[4]
    heads = num_heads + 2 * num_kv_heads
    if qkv_rows.shape != (heads * head_dim, width):
        raise ValueError(f"qkv_rows must be [{heads * head_dim}, {width}], got "
                         f"{qkv_rows.shape}")
    if head_dim % (2 * PAIRS):
        raise ValueError(f"head_dim must be a multiple of {2 * PAIRS}, got {head_dim}")
    if query_rows < num_heads // num_kv_heads:
        raise ValueError(f"query_rows {query_rows} is under the {num_heads // num_kv_heads} "
                         "query heads a kv head serves")
    block_in = input_block(width, BLOCK_IN, 2 * PAIRS * tokens)
    operands = [x, norm_weight, qkv_rows] + ([] if bias is None else [bias]) + [
        positions.astype(jnp.int32), pages.astype(jnp.int32), offsets.astype(jnp.int32),
        valid.astype(jnp.int32), jnp.asarray(layer, jnp.int32).reshape(1), inv_freq,
        k_pages, v_pages]
    kernel = functools.partial(_kernel, has_bias=bias is not None, eps=eps,
                               num_heads=num_heads, num_kv_heads=num_kv_heads,
                               block_in=block_in)
    whole = pl.BlockSpec()
    q_shape = jax.ShapeDtypeStruct((tokens, num_kv_heads, query_rows, head_dim), x.dtype)
    return pl.pallas_call(
        kernel, grid=(heads * (head_dim // 2 // PAIRS),),
        in_specs=[whole] * len(operands), out_specs=[whole] * 3,
        out_shape=[q_shape, jax.ShapeDtypeStruct(k_pages.shape, k_pages.dtype),
                   jax.ShapeDtypeStruct(v_pages.shape, v_pages.dtype)],
        input_output_aliases={len(operands) - 2: 1, len(operands) - 1: 2},
        interpret=interpret, name="qkv_into_pages",
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=3),
    )(*operands)
