"""The KV slot pool: preallocated per-slot keys/values, lengths and last hidden states.

Shapes: L layers, S slots, K kv heads, M = max cache length, D head_dim, E hidden size,
N forks.

A slot holds one token sequence (a search node's question and steps so far). Entries
at positions >= ``lengths[slot]`` are stale and never read: a query only attends to
positions <= its own, and every such position has been written first. So freeing a slot
or reusing it needs no zeroing.

Jitted functions in ``qstar_jax.decoding`` take a row's slot equal to ``S`` (one past
the last slot) to mean "padding row": its writes are dropped. On a mesh they run on each
data shard's part of the pool, with slot ids local to it (``data_shards``).
"""

from __future__ import annotations

import dataclasses
import functools
import heapq

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from qstar_jax.models.config import ModelConfig
from qstar_jax.values import is_integer


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["k", "v", "lengths", "last_hidden"], meta_fields=[])
@dataclasses.dataclass(frozen=True, kw_only=True)
class KVCache:
    """k, v: [L, S, K, M, D]; lengths: [S] int32 tokens written per slot;
    last_hidden: [S, E] float32, the final-norm hidden state of the last token fed to
    each slot (its next-token logits are ``model.logits(last_hidden)``)."""

    k: jax.Array
    v: jax.Array
    lengths: jax.Array
    last_hidden: jax.Array

    @property
    def num_slots(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def model_rows(self, slots: jax.Array) -> jax.Array:
        """What the model's forward call takes to address the rows of ``slots`` [B]: the
        slots themselves (a PagedKVCache gives their page tables)."""
        return slots


def init_cache(cfg: ModelConfig, *, slots: int, max_len: int, dtype=jnp.float32) -> KVCache:
    """An empty pool. k/v are stored in ``dtype``; last_hidden is float32, which holds a
    hidden state of any model dtype exactly."""
    if slots < 1 or max_len < 1:
        raise ValueError(f"a cache needs slots >= 1 and max_len >= 1, got {slots=} {max_len=}")
    shape = (cfg.num_layers, slots, cfg.num_kv_heads, max_len, cfg.head_dim)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   lengths=jnp.zeros((slots,), jnp.int32),
                   last_hidden=jnp.zeros((slots, cfg.hidden_size), jnp.float32))


def cache_shardings(mesh: Mesh, rules) -> KVCache:
    """A KVCache of NamedShardings: slots on the rules' ``slots`` mesh axis, kv heads on
    ``kv_heads`` (rules: ``qstar_jax.parallel.ShardingRules``)."""
    def named(*logical):
        return NamedSharding(mesh, rules.spec(*logical))
    rows = named(None, "slots", "kv_heads", None, None)
    return KVCache(k=rows, v=rows, lengths=named("slots"), last_hidden=named("slots", "embed"))


@functools.partial(jax.jit, donate_argnums=0)
def fork_slots(cache: KVCache, parents: jax.Array, children: jax.Array) -> KVCache:
    """Make each ``children[i]`` continue exactly from ``parents[i]``.

    parents, children: [N] int32. All parents are read before any child is written.
    A child equal to ``S`` is a padding entry and writes nothing.
    """
    def copy_rows(x, slot_axis):
        rows = jnp.take(x, parents, axis=slot_axis, mode="clip")
        index = (slice(None),) * slot_axis + (children,)
        return x.at[index].set(rows, mode="drop")

    return KVCache(k=copy_rows(cache.k, 1), v=copy_rows(cache.v, 1),
                   lengths=copy_rows(cache.lengths, 0),
                   last_hidden=copy_rows(cache.last_hidden, 0))


class SlotPoolExhausted(RuntimeError):
    """More slots were asked for than the pool has free."""


class SlotPool:
    """Host-side allocator of cache slots, split into ``shards`` equal ranges of
    consecutive slots (the cache's slots on each data shard, ``shard_of``); each shard hands
    out its lowest free slots first."""

    def __init__(self, num_slots: int, shards: int = 1):
        if num_slots % shards:
            raise ValueError(f"{num_slots} slots do not split into {shards} equal shards")
        self.num_slots, self.shards = num_slots, shards
        self.slots_per_shard = num_slots // shards
        per_shard = self.slots_per_shard
        # One heap per shard; sorted is a valid heap.
        self._free = [list(range(s * per_shard, (s + 1) * per_shard)) for s in range(shards)]
        self._allocated: set[int] = set()
        self.peak_allocated = 0  # the most slots allocated at once since built or reset_peak

    @property
    def num_free(self) -> int:
        return sum(len(free) for free in self._free)

    def reset_peak(self) -> None:
        """Start ``peak_allocated`` again from the slots allocated now."""
        self.peak_allocated = len(self._allocated)

    def is_allocated(self, slot: int) -> bool:
        return slot in self._allocated

    @property
    def allocated(self) -> frozenset[int]:
        """The slots handed out now."""
        return frozenset(self._allocated)

    def shard_of(self, slots) -> np.ndarray:
        """The shard holding each slot, int64 like ``slots``."""
        return np.asarray(slots, np.int64) // self.slots_per_shard

    def local_ids(self, slots) -> np.ndarray:
        """Each slot's index within its shard's range, int64 like ``slots``."""
        return np.asarray(slots, np.int64) % self.slots_per_shard

    def allocate(self, n: int, near=None) -> list[int]:
        """``n`` free slots. near: one slot per new slot (a parent), each new slot going on
        its parent's shard (so copying the parent into it stays on one device); None: each
        on the shard with the most free slots, spreading new rows evenly."""
        if not (is_integer(n) and n >= 0):
            raise ValueError(f"the number of slots to allocate must be an integer >= 0, got "
                             f"{n!r}")
        if n > self.num_free:
            raise SlotPoolExhausted(
                f"asked for {n} cache slots but only {self.num_free} of {self.num_slots} "
                "are free; free the slots of finished nodes, or build the decoder with a "
                "larger num_slots")
        shards = self._balanced_shards(n) if near is None else self._parent_shards(n, near)
        slots = [heapq.heappop(self._free[s]) for s in shards]
        self._allocated.update(slots)
        self.peak_allocated = max(self.peak_allocated, len(self._allocated))
        return slots

    def free(self, slots) -> None:
        slots = [int(s) for s in slots]
        if len(set(slots)) != len(slots):
            raise ValueError(f"cannot free slots {slots}: a slot is listed more than once")
        not_allocated = sorted(s for s in slots if s not in self._allocated)
        if not_allocated:
            raise ValueError(f"cannot free slots {not_allocated}: they are not allocated "
                             "(freed already, or never handed out by allocate)")
        for s in slots:
            self._allocated.remove(s)
            heapq.heappush(self._free[s // self.slots_per_shard], s)

    def _balanced_shards(self, n: int) -> list[int]:
        """The shard of each of ``n`` new slots: in turn the one with the most free slots
        left (the lowest such)."""
        free = [len(f) for f in self._free]
        shards = []
        for _ in range(n):
            shard = max(range(self.shards), key=lambda s: (free[s], -s))
            free[shard] -= 1
            shards.append(shard)
        return shards

    def _parent_shards(self, n: int, near) -> list[int]:
        """The parents' shards, once each shard is known to have room for its new slots."""
        near = np.asarray(near, np.int64).reshape(-1)
        if len(near) != n or np.any((near < 0) | (near >= self.num_slots)):
            raise ValueError(f"near must be {n} slot ids in [0, {self.num_slots}), one per "
                             f"new slot, got {near.tolist()}")
        shards = self.shard_of(near)
        wanted = np.bincount(shards, minlength=self.shards)
        short = np.flatnonzero(wanted > [len(f) for f in self._free])
        if short.size:
            shard = int(short[0])
            raise SlotPoolExhausted(
                f"asked for {wanted[shard]} cache slots beside their parents on data shard "
                f"{shard}, but only {len(self._free[shard])} of its {self.slots_per_shard} "
                "are free; free the slots of finished nodes, or build the decoder with a "
                "larger num_slots")
        return shards.tolist()
