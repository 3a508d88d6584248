"""Paged decode attention as a Pallas Triton kernel (GPU), one program per (slot, kv head).

Shapes and contract: ``paged_attention_reference``. The program loads its slot's length
and walks only the pages that hold the slot's tokens (``cdiv(length, S)`` of them, fewer
with a window), a block of pages at a time, so a short slot costs little however long
the page table is, and an empty slot costs nothing. A page at a time, the loop was
latency-bound on an H200: some 15 µs a call for 32 rows of ~350 tokens on 16-token pages
(``experiments/device_runs/2026-12-04-call4``).

Why not JAX's own ``jax.experimental.pallas.ops.gpu.paged_attention``: it takes one
layer's pages as ``[K, P, S, D]``, so the decoder would pass ``pages[layer]`` and XLA would
copy a whole layer of the pool into the custom call every layer of every token; it has
one query per slot and no causal mask among several. This kernel reads the layer's pages
in place from ``[L, P, K, S, D]``. The two agree where both apply
(``tests/kernels/test_paged_attention.py``).

JAX 0.11 deprecates Pallas' Triton backend (a warning at each lowering) in favour of
Mosaic GPU; where a JAX has removed it, this module still imports and ``auto`` takes the
``jnp`` path on GPUs (``platform.resolve_implementation``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
try:
    from jax.experimental.pallas import triton as plgpu
except ImportError:  # JAX 0.11 deprecates Pallas' Triton backend and will remove it
    plgpu = None

from qstar_kernels.online_softmax import fold_page, finish, initial_state, mask_scores
from qstar_kernels.paged_attention_layout import first_page, from_rows, row_positions, to_rows
from qstar_kernels.paged_attention_reference import check_paged_inputs

MIN_ROWS = 16  # Triton's matrix product needs 16 rows or more
# Keys each step of a program's page loop reads: several pages at once, so the loop's
# dependent loads (a page's id, then its keys) are paid once per block, not per page.
KEYS_PER_BLOCK = 64


def _kernel(lengths_ref, layer_ref, page_table_ref, q_ref, k_ref, v_ref, o_ref, *,
            num_queries: int, group: int, scale: float, window: int | None,
            pages_per_block: int):
    slot, head = pl.program_id(0), pl.program_id(1)
    length, layer = lengths_ref[slot], layer_ref[0]
    rows, head_dim = q_ref.shape
    page_size, table_width = k_ref.shape[3], page_table_ref.shape[1]
    block_keys = pages_per_block * page_size
    q = q_ref[...]
    q_positions = row_positions(length, num_queries, group, rows)
    first, end = first_page(length, num_queries, page_size, window), pl.cdiv(length, page_size)

    def one_block(index, state):
        # The block's page-table entries, read at once. Past the slot's last page an entry
        # is the pool-size sentinel (or lies past the table): page 0 is read in its stead,
        # its keys at positions past every query, so masked.
        entries = first + index * pages_per_block + jax.lax.broadcasted_iota(
            jnp.int32, (pages_per_block,), 0)
        pages = page_table_ref[slot, jnp.minimum(entries, table_width - 1)]
        pages = jnp.where(entries < end, pages, 0)
        keys = k_ref[layer, pages, head].reshape(block_keys, head_dim)
        values = v_ref[layer, pages, head].reshape(block_keys, head_dim)
        scores = plgpu.dot(q, keys, trans_b=True).astype(jnp.float32) * scale
        key_positions = (first + index * pages_per_block) * page_size + \
            jax.lax.broadcasted_iota(jnp.int32, (1, block_keys), 1)
        scores = mask_scores(scores, key_positions, q_positions, window)
        return fold_page(state, scores, values,
                         lambda a, b: plgpu.dot(a, b).astype(jnp.float32))

    state = jax.lax.fori_loop(0, pl.cdiv(end - first, pages_per_block), one_block,
                              initial_state(rows, head_dim))
    o_ref[...] = finish(state).astype(o_ref.dtype)


def triton_available() -> bool:
    """Whether this JAX still has Pallas' Triton backend, which the kernel is written for."""
    return plgpu is not None


def require_triton(kernel: str, advice: str = "use the jnp path") -> None:
    """Raise RuntimeError, naming ``kernel``, where this JAX has no Pallas Triton backend."""
    if not triton_available():
        raise RuntimeError(f"JAX {jax.__version__} has no Pallas Triton backend, which the "
                           f"GPU {kernel} kernel is written for: {advice}")


def query_rows(num_queries: int, group: int) -> int:
    """The rows of a (slot, kv head)'s query block: its T queries of G heads, padded for
    Triton's matrix product."""
    return max(MIN_ROWS, pl.next_power_of_2(num_queries * group))


@functools.partial(jax.jit, static_argnames=("window", "scale", "keys_per_block",
                                             "interpret"))
def paged_decode_attention_gpu(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array,
                               page_table: jax.Array, lengths: jax.Array,
                               layer: jax.Array | int, *, window: int | None = None,
                               scale: float | None = None,
                               keys_per_block: int = KEYS_PER_BLOCK,
                               interpret: bool = False) -> jax.Array:
    """As ``paged_decode_attention_reference``. Each step of a program's loop reads
    ``keys_per_block // page_size`` pages (at least one) together. Page size and head_dim
    must be powers of two, and head_dim and the keys a step reads at least 16 (Triton's
    block rules), so pages smaller than 16 tokens are read several a step;
    ``interpret=True`` runs it on CPU, where any sizes do."""
    check_paged_inputs(q, k_pages, v_pages, page_table, lengths)
    _, num_queries, heads, _ = q.shape
    kv_heads = k_pages.shape[2]
    group = heads // kv_heads
    out = paged_decode_attention_gpu_rows(
        to_rows(q, kv_heads, query_rows(num_queries, group)), k_pages, v_pages, page_table,
        lengths, layer, num_queries=num_queries, group=group, window=window, scale=scale,
        keys_per_block=keys_per_block, interpret=interpret)
    return from_rows(out, q.shape)


def gpu_kernel_refusal(page_size: int, head_dim: int,
                       keys_per_block: int = KEYS_PER_BLOCK) -> str | None:
    """Why the compiled GPU kernel cannot read pages of ``page_size`` tokens with heads
    ``head_dim`` wide, or None where it can (interpret mode takes any)."""
    for name, size in (("page size", page_size), ("head_dim", head_dim)):
        if size & (size - 1):
            return f"the GPU kernel needs a {name} that is a power of two, got {size}"
    keys_a_step = max(1, keys_per_block // page_size) * page_size
    for name, size in (("head_dim", head_dim), ("keys a step reads", keys_a_step)):
        if size < MIN_ROWS:
            return (f"the GPU kernel needs {name} of at least {MIN_ROWS} (Triton's matrix "
                    f"product), got {size}")
    return None


@functools.partial(jax.jit, static_argnames=("num_queries", "group", "window", "scale",
                                             "keys_per_block", "interpret"))
def paged_decode_attention_gpu_rows(q_rows: jax.Array, k_pages: jax.Array,
                                    v_pages: jax.Array, page_table: jax.Array,
                                    lengths: jax.Array, layer: jax.Array | int, *,
                                    num_queries: int, group: int, window: int | None = None,
                                    scale: float | None = None,
                                    keys_per_block: int = KEYS_PER_BLOCK,
                                    interpret: bool = False) -> jax.Array:
    """``paged_decode_attention_gpu`` on queries already laid out as the kernel's rows,
    q_rows [B, K, R, D] (``paged_attention_layout.to_rows`` with R = ``query_rows``; what
    ``qkv_into_pages_gpu`` writes) -> the same layout."""
    require_triton("paged-attention", "use the jnp path (attention='jnp', or 'auto', which "
                   "falls back to it)")
    batch, kv_heads, rows, head_dim = q_rows.shape
    page_size = k_pages.shape[3]
    if keys_per_block < 1 or keys_per_block & (keys_per_block - 1):
        raise ValueError(f"keys_per_block must be a power of two, got {keys_per_block}")
    pages_per_block = max(1, keys_per_block // page_size)  # read by one step of the loop
    refusal = None if interpret else gpu_kernel_refusal(page_size, head_dim, keys_per_block)
    if refusal:
        raise ValueError(refusal)
    kernel = functools.partial(_kernel, num_queries=num_queries, group=group,
                               scale=head_dim ** -0.5 if scale is None else scale,
                               window=window, pages_per_block=pages_per_block)
    whole = pl.BlockSpec()  # Triton reads an un-blocked operand through its pointer
    row_block = pl.BlockSpec((None, None, rows, head_dim), lambda b, h: (b, h, 0, 0))
    return pl.pallas_call(
        kernel, grid=(batch, kv_heads),
        in_specs=[whole, whole, whole, row_block, whole, whole], out_specs=row_block,
        out_shape=jax.ShapeDtypeStruct((batch, kv_heads, rows, head_dim), q_rows.dtype),
        interpret=interpret, name="paged_decode_attention",
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
    )(lengths.astype(jnp.int32), jnp.asarray(layer, jnp.int32).reshape(1),
      page_table.astype(jnp.int32), q_rows, k_pages, v_pages)
