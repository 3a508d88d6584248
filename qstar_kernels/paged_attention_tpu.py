"""Paged decode attention as a Pallas TPU (Mosaic) kernel.

Shapes and contract: ``paged_attention_reference``. The grid is (slot, kv head, page
entry); the slots' lengths, page table and the layer are scalar-prefetched, and the
key/value block of step p is page ``page_table[slot, p]`` of the layer, read in place from
``[L, P, K, S, D]`` by the pipeline's DMA. Entries outside the slot's visible pages map to
its nearest visible page: the pipeline does not fetch a block again when its index has
not changed, so they cost no memory traffic, and the body skips them.

Checked in Pallas interpret mode on CPU against the reference; not yet run on a TPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from qstar_kernels.online_softmax import fold_page, finish, initial_state, mask_scores
from qstar_kernels.paged_attention_layout import first_page, from_rows, row_positions, to_rows
from qstar_kernels.paged_attention_reference import check_paged_inputs

ROW_MULTIPLE = 8  # a TPU vector register holds 8 rows (sublanes)


def _visible_pages(length, num_queries, page_size, window):
    return first_page(length, num_queries, page_size, window), pl.cdiv(length, page_size)


def _kernel(lengths_ref, layer_ref, page_table_ref, q_ref, k_ref, v_ref, o_ref,
            m_ref, l_ref, acc_ref, *, num_queries: int, group: int, scale: float,
            window: int | None):
    slot, entry = pl.program_id(0), pl.program_id(2)
    length = lengths_ref[slot]
    rows, head_dim = q_ref.shape
    page_size = k_ref.shape[0]
    start, stop = _visible_pages(length, num_queries, page_size, window)

    @pl.when(entry == 0)
    def _():
        m_ref[...], l_ref[...], acc_ref[...] = initial_state(rows, head_dim)

    @pl.when((entry >= start) & (entry < stop))
    def _():
        dims = (((1,), (1,)), ((), ()))
        scores = jax.lax.dot_general(q_ref[...], k_ref[...], dims,
                                     preferred_element_type=jnp.float32) * scale
        key_positions = entry * page_size + jax.lax.broadcasted_iota(jnp.int32,
                                                                     (1, page_size), 1)
        scores = mask_scores(scores, key_positions,
                             row_positions(length, num_queries, group, rows), window)
        state = fold_page((m_ref[...], l_ref[...], acc_ref[...]), scores, v_ref[...],
                          lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
        m_ref[...], l_ref[...], acc_ref[...] = state

    @pl.when(entry == pl.num_programs(2) - 1)
    def _():
        o_ref[...] = finish((m_ref[...], l_ref[...], acc_ref[...])).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("window", "scale", "interpret"))
def paged_decode_attention_tpu(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array,
                               page_table: jax.Array, lengths: jax.Array,
                               layer: jax.Array | int, *, window: int | None = None,
                               scale: float | None = None,
                               interpret: bool = False) -> jax.Array:
    """As ``paged_decode_attention_reference``; ``interpret=True`` runs it on CPU."""
    check_paged_inputs(q, k_pages, v_pages, page_table, lengths)
    batch, num_queries, heads, head_dim = q.shape
    _, num_pages, kv_heads, page_size, _ = k_pages.shape
    group = heads // kv_heads
    rows = pl.cdiv(num_queries * group, ROW_MULTIPLE) * ROW_MULTIPLE
    entries = page_table.shape[1]

    def page_block(slot, head, entry, lengths_ref, layer_ref, page_table_ref):
        start, stop = _visible_pages(lengths_ref[slot], num_queries, page_size, window)
        nearest = jnp.clip(entry, start, jnp.maximum(stop - 1, start))
        page = jnp.clip(page_table_ref[slot, jnp.minimum(nearest, entries - 1)], 0,
                        num_pages - 1)
        return layer_ref[0], page, head, 0, 0

    def row_block(slot, head, entry, *_):
        return slot, head, 0, 0

    pages_spec = pl.BlockSpec((None, None, None, page_size, head_dim), page_block)
    rows_spec = pl.BlockSpec((None, None, rows, head_dim), row_block)
    kernel = functools.partial(_kernel, num_queries=num_queries, group=group,
                               scale=head_dim ** -0.5 if scale is None else scale,
                               window=window)
    out = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=3, grid=(batch, kv_heads, entries),
            in_specs=[rows_spec, pages_spec, pages_spec], out_specs=rows_spec,
            scratch_shapes=[pltpu.VMEM((rows, 1), jnp.float32),
                            pltpu.VMEM((rows, 1), jnp.float32),
                            pltpu.VMEM((rows, head_dim), jnp.float32)]),
        out_shape=jax.ShapeDtypeStruct((batch, kv_heads, rows, head_dim), q.dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret, name="paged_decode_attention",
    )(lengths.astype(jnp.int32), jnp.asarray(layer, jnp.int32).reshape(1),
      page_table.astype(jnp.int32), to_rows(q, kv_heads, rows), k_pages, v_pages)
    return from_rows(out, q.shape)
