import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qstar_jax.decoding.kv_cache import (KVCache, SlotPool, SlotPoolExhausted, fork_slots,
                                         init_cache)
from tests.decoding.tiny_models import tiny_config


def _random_cache(slots=4, max_len=8) -> KVCache:
    cfg = tiny_config(16)
    empty = init_cache(cfg, slots=slots, max_len=max_len)
    keys = jax.random.split(jax.random.key(0), 4)
    return KVCache(k=jax.random.normal(keys[0], empty.k.shape),
                   v=jax.random.normal(keys[1], empty.v.shape),
                   lengths=jnp.arange(slots, dtype=jnp.int32) + 3,
                   last_hidden=jax.random.normal(keys[2], empty.last_hidden.shape))


def test_init_cache_shapes_and_dtypes():
    cache = init_cache(tiny_config(16), slots=3, max_len=10, dtype=jnp.bfloat16)
    assert cache.k.shape == cache.v.shape == (2, 3, 2, 10, 8)
    assert cache.k.dtype == jnp.bfloat16
    assert cache.lengths.shape == (3,) and cache.lengths.dtype == jnp.int32
    assert cache.last_hidden.shape == (3, 32) and cache.last_hidden.dtype == jnp.float32
    assert (cache.num_slots, cache.max_len) == (3, 10)
    assert len(jax.tree.leaves(cache)) == 4


def test_fork_copies_parent_rows_and_leaves_others():
    cache = _random_cache()
    before = jax.tree.map(np.asarray, cache)
    # Slot 3 forks from 0 and slot 1 from 3: parents are read before children are written,
    # so slot 1 receives slot 3's old contents. The last entry (child 4 = S) is padding.
    forked = fork_slots(cache, jnp.array([0, 3, 0], jnp.int32), jnp.array([3, 1, 4], jnp.int32))
    after = jax.tree.map(np.asarray, forked)
    for name in ("k", "v"):
        np.testing.assert_array_equal(getattr(after, name)[:, 3], getattr(before, name)[:, 0])
        np.testing.assert_array_equal(getattr(after, name)[:, 1], getattr(before, name)[:, 3])
        for untouched in (0, 2):
            np.testing.assert_array_equal(getattr(after, name)[:, untouched],
                                          getattr(before, name)[:, untouched])
    np.testing.assert_array_equal(after.lengths, [3, 6, 5, 3])
    np.testing.assert_array_equal(after.last_hidden[[0, 1, 2, 3]],
                                  before.last_hidden[[0, 3, 2, 0]])


def test_slot_pool_allocates_lowest_free_and_reuses_freed():
    pool = SlotPool(4)
    assert pool.allocate(3) == [0, 1, 2]
    pool.free([1])
    assert pool.num_free == 2
    assert pool.allocate(2) == [1, 3]
    assert all(pool.is_allocated(s) for s in range(4))


def test_slot_pool_exhausted_says_what_to_do():
    pool = SlotPool(2)
    pool.allocate(1)
    with pytest.raises(SlotPoolExhausted, match=r"asked for 2 cache slots but only 1 of 2.*free"):
        pool.allocate(2)
    assert pool.num_free == 1


@pytest.mark.parametrize("to_free, message", [
    ([1], r"cannot free slots \[1\]: they are not allocated"),
    ([0, 0], r"cannot free slots \[0, 0\]: a slot is listed more than once"),
    # Slot 0 is allocated, 1 is not: the refusal frees neither.
    ([0, 1], r"cannot free slots \[1\]: they are not allocated"),
])
def test_slot_pool_rejects_double_or_foreign_free(to_free, message):
    pool = SlotPool(2)
    pool.allocate(1)
    with pytest.raises(ValueError, match=message):
        pool.free(to_free)
    assert pool.is_allocated(0) and pool.num_free == 1


def test_sharded_slot_pool_spreads_new_rows_and_puts_children_beside_parents():
    pool = SlotPool(8, shards=4)  # shard s holds slots 2s, 2s + 1
    assert pool.allocate(3) == [0, 2, 4]  # the shards with the most free slots, lowest first
    assert pool.allocate(2, near=[4, 0]) == [5, 1]
    assert pool.allocate(2) == [6, 3]  # shard 3 had two free, then shard 1 one
    np.testing.assert_array_equal(pool.shard_of([0, 3, 5, 6]), [0, 1, 2, 3])
    np.testing.assert_array_equal(pool.local_ids([0, 3, 5, 6]), [0, 1, 1, 0])
    pool.free([2])
    assert pool.allocate(1, near=[3]) == [2]


def test_a_full_shard_is_exhausted_though_others_have_room():
    pool = SlotPool(4, shards=2)
    assert pool.allocate(2, near=[0, 0]) == [0, 1]
    with pytest.raises(SlotPoolExhausted, match="1 cache slots beside their parents on data "
                                                "shard 0, but only 0 of its 2 are free"):
        pool.allocate(2, near=[1, 2])
    assert pool.num_free == 2
    with pytest.raises(ValueError, match="near must be 1 slot ids in"):
        pool.allocate(1, near=[0, 1])


@pytest.mark.parametrize("slots, max_len", [(0, 8), (2, 0)])
def test_init_cache_refuses_an_empty_pool(slots, max_len):
    with pytest.raises(ValueError, match=rf"slots >= 1 and max_len >= 1, got slots={slots} "
                                         rf"max_len={max_len}"):
        init_cache(tiny_config(16), slots=slots, max_len=max_len)


def test_slot_pool_refuses_uneven_shards_a_negative_count_and_a_parent_past_the_pool():
    with pytest.raises(ValueError, match="6 slots do not split into 4 equal shards"):
        SlotPool(6, shards=4)
    pool = SlotPool(4, shards=2)
    with pytest.raises(ValueError, match=r"slots to allocate must be an integer >= 0, got -1"):
        pool.allocate(-1)
    for parent in (-1, 4):
        with pytest.raises(ValueError, match=rf"near must be 1 slot ids in \[0, 4\), one per "
                                             rf"new slot, got \[{parent}\]"):
            pool.allocate(1, near=[parent])
    assert pool.num_free == 4 and pool.allocate(1, near=[3]) == [2]
