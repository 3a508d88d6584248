"""The decoder's jitted functions run on each data shard's own cache slots.

Shapes: n the call's rows, B = shards x block, the rows as the jitted function takes them.

The slot pool is split evenly over the mesh axis that holds the cache's slots
(``SlotPool.shard_of``). A call's rows are grouped by their slot's shard into equal blocks
(``RowLayout``), and the function runs under ``jax.shard_map`` over that axis
(``on_slot_shards``): each shard gets its block of rows, with slot ids local to its part
of the cache (and on a paged cache, page ids local to its part of the pages), so no step
moves cache rows between devices. Other mesh axes (``model``)
stay with GSPMD inside. A call's per-row sampling settings are laid out the same way
(``padded_params``).
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from qstar_jax.decoding.kv_cache import KVCache
from qstar_jax.decoding.paged_cache import PagedKVCache, Paging
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.token_batch import bucket_size


@dataclasses.dataclass(frozen=True)
class RowLayout:
    """Where a call's rows sit in the [B] rows of a jitted call: shard s's rows, in call
    order, from s * block on; the positions left over are padding rows.

    positions: [n] int64, each call row's position.
    """

    shards: int
    block: int
    positions: np.ndarray

    @classmethod
    def of(cls, row_shards, *, shards: int, min_rows: int = 1, fine: bool = False) -> RowLayout:
        """The layout of rows on shards ``row_shards`` [n], each block a power of two
        (``fine``: or three quarters of one, ``bucket_size``) holding the fullest shard's
        rows, and all blocks together at least ``min_rows``."""
        row_shards = np.asarray(row_shards, np.int64)
        per_shard = np.bincount(row_shards, minlength=shards)
        block = cls.block_size(int(per_shard.max()), shards=shards, min_rows=min_rows,
                               fine=fine)
        order = np.argsort(row_shards, kind="stable")
        first_of_shard = np.cumsum(per_shard) - per_shard
        rank = np.empty(len(row_shards), np.int64)
        rank[order] = np.arange(len(row_shards)) - first_of_shard[row_shards[order]]
        return cls(shards=shards, block=block, positions=row_shards * block + rank)

    @staticmethod
    def block_size(fullest: int, *, shards: int, min_rows: int = 1, fine: bool = False) -> int:
        """The rows of each shard's block when the fullest shard holds ``fullest``."""
        return bucket_size(fullest, minimum=-(-min_rows // shards), fine=fine)

    @property
    def size(self) -> int:
        return self.shards * self.block

    def place(self, values, fill) -> np.ndarray:
        """values [m, ...] of the call's first m <= n rows at their positions of a [B, ...]
        array of ``fill`` (integers as int32)."""
        values = np.asarray(values)
        if np.issubdtype(values.dtype, np.integer):
            values = values.astype(np.int32)
        placed = np.full((self.size, *values.shape[1:]), fill, values.dtype)
        placed[self.positions[:len(values)]] = values
        return placed

    def take(self, tree):
        """Each array's [B, ...] rows back in call order, [n, ...]."""
        return jax.tree.map(lambda x: x[self.positions], tree)



def padded_params(params: SamplingParams, layout: RowLayout) -> SamplingParams:
    """``params`` of the call's first rows, laid out as ``layout``; greedy for every
    other row."""
    greedy = SamplingParams.make(1)
    return SamplingParams(**{f.name: layout.place(getattr(params, f.name),
                                                  getattr(greedy, f.name)[0])
                             for f in dataclasses.fields(SamplingParams)})

def cache_specs(axis: str | None, paging: Paging | None = None) -> KVCache | PagedKVCache:
    """The cache's PartitionSpecs: slots (and on a paged cache, ``paging``'s, its pages)
    on mesh ``axis``, the rest left to GSPMD."""
    rows = PartitionSpec(None, axis)
    if paging is not None:
        return PagedKVCache(k=rows, v=rows, page_table=PartitionSpec(axis),
                            lengths=PartitionSpec(axis), last_hidden=PartitionSpec(axis),
                            attention=paging.attention)
    return KVCache(k=rows, v=rows, lengths=PartitionSpec(axis),
                   last_hidden=PartitionSpec(axis))


def on_slot_shards(fn, mesh: Mesh | None, axis: str | None, in_specs, out_specs):
    """``fn`` run once per shard of mesh ``axis`` on its part of each argument
    (``jax.shard_map`` manual over ``axis`` alone); ``fn`` itself when there is no such
    axis. The decoder's functions are written for any one device's rows, so their loop
    carries are not checked for values varying over the axis."""
    if axis is None:
        return fn
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                         axis_names={axis}, check_vma=False)


def loop_partitioner(mesh: Mesh | None, axis: str | None):
    """A factory of the context the sampling loops (step and trie samplers) compile in.

    On JAX 0.11 (seen on 0.11.2, on the CPU) XLA's Shardy partitioner dies of SIGSEGV
    compiling a sampler's ``while_loop`` under the ``shard_map`` over several data shards
    (docs/gpu_tpu.md); GSPMD compiles the same function to the same tokens. So there,
    and only for those loops, the partitioner is GSPMD; prefill, forks and page copies stay
    with Shardy, which moves nothing between shards for them. The setting is part of jit's
    cache key, so nothing else sees it."""
    shards = 1 if mesh is None or axis is None else mesh.shape[axis]
    if shards == 1 or jax.__version_info__ < (0, 11):
        return contextlib.nullcontext
    from jax._src import config as jax_config  # the setting's context form is not public
    return lambda: jax_config.use_shardy_partitioner(False)
