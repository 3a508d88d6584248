"""Where a call's rows go on the data shards, and the checks that children and spares lie
beside their parents (host side; the sharded decoder itself runs in
tests/support/sharded_decoding.py)."""

import types

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from qstar_jax.decoding.data_shards import (RowLayout, cache_specs, loop_partitioner,
                                            on_slot_shards, padded_params)
from qstar_jax.decoding.input_checks import (check_children_beside_parents,
                                             check_spares_beside_groups)
from qstar_jax.decoding.kv_cache import KVCache, SlotPool
from qstar_jax.decoding.paged_cache import PagedKVCache, Paging
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.parallel import make_mesh


def test_rows_are_grouped_by_shard_in_blocks_of_a_common_size():
    layout = RowLayout.of([1, 0, 1, 1], shards=2, min_rows=2)
    assert layout.block == 4 and layout.size == 8  # shard 1's three rows, bucketed
    np.testing.assert_array_equal(layout.positions, [4, 0, 5, 6])
    placed = layout.place([10, 11, 12, 13], -1)
    np.testing.assert_array_equal(placed, [11, -1, -1, -1, 10, 12, 13, -1])
    assert placed.dtype == np.int32
    np.testing.assert_array_equal(layout.place([10, 11], -1), [11, -1, -1, -1, 10, -1, -1, -1])
    np.testing.assert_array_equal(layout.take(placed), [10, 11, 12, 13])


def test_each_shards_rows_keep_the_call_order_past_numpys_small_sorts():
    """40 rows alternating between 2 shards (numpy's default sort keeps a few rows' order
    by chance, not these): row 2i of shard 1 goes to 32 + i, row 2i + 1 of shard 0 to i."""
    layout = RowLayout.of([1, 0] * 20, shards=2)
    assert layout.block == 32
    np.testing.assert_array_equal(layout.positions[0::2], np.arange(20) + 32)
    np.testing.assert_array_equal(layout.positions[1::2], np.arange(20))


def test_blocks_together_hold_at_least_min_rows():
    # 3 rows over 2 shards: blocks of 2 (of 1, the two would hold only 2).
    layout = RowLayout.of([0], shards=2, min_rows=3)
    assert layout.block == 2 and layout.size == 4
    assert RowLayout.block_size(1, shards=4, min_rows=5, fine=True) == 2


def test_fine_blocks_may_be_three_quarters_of_a_power_of_two():
    layout = RowLayout.of([0, 0, 0, 0, 0, 1], shards=2, fine=True)
    assert layout.block == 6 and layout.size == 12  # not 8: five rows fit in 6
    np.testing.assert_array_equal(layout.positions, [0, 1, 2, 3, 4, 6])
    assert RowLayout.of([0, 0, 0, 0, 0, 1], shards=2).block == 8


def test_padding_rows_sample_greedily_and_each_row_keeps_its_own_settings():
    layout = RowLayout.of([1, 0], shards=2)  # blocks of 1: row 0 at 1, row 1 at 0
    params = SamplingParams.make(2, temperature=[0.7, 0.5], top_k=[5, 3], top_p=[0.9, 0.8])
    padded = padded_params(params, layout)
    np.testing.assert_array_equal(padded.temperature, np.float32([0.5, 0.7]))
    np.testing.assert_array_equal(padded.top_k, [3, 5])
    assert padded.top_k.dtype == np.int32
    layout = RowLayout.of([1], shards=2, min_rows=4)  # blocks of 2: the row at 2
    padded = padded_params(SamplingParams.make(1, temperature=0.7, top_k=5, top_p=0.9), layout)
    np.testing.assert_array_equal(padded.temperature, np.float32([0, 0, 0.7, 0]))
    np.testing.assert_array_equal(padded.top_k, [0, 0, 5, 0])
    np.testing.assert_array_equal(padded.top_p, np.float32([1, 1, 0.9, 1]))


def test_the_cache_splits_its_slots_and_pages_over_the_slot_axis():
    rows = PartitionSpec(None, "data")  # [layers, slots or pages, ...]
    assert cache_specs("data") == KVCache(k=rows, v=rows, lengths=PartitionSpec("data"),
                                          last_hidden=PartitionSpec("data"))
    paged = cache_specs("data", Paging(num_pages=8, attention="jnp"))
    assert paged == PagedKVCache(k=rows, v=rows, page_table=PartitionSpec("data"),
                                 lengths=PartitionSpec("data"),
                                 last_hidden=PartitionSpec("data"), attention="jnp")


def test_functions_run_per_shard_of_the_slot_axis_and_as_they_are_without_one():
    def double(x):
        return x * 2
    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    assert on_slot_shards(double, mesh, None, PartitionSpec(), PartitionSpec()) is double
    assert on_slot_shards(double, None, None, PartitionSpec(), PartitionSpec()) is double
    # Manual over 'data': the function sees its shard's index and the shard count.
    per_shard = on_slot_shards(
        lambda x: x * 10 + jax.lax.axis_index("data") + jax.lax.axis_size("data"), mesh,
        "data", PartitionSpec("data"), PartitionSpec("data"))
    np.testing.assert_array_equal(jax.jit(per_shard)(np.arange(3)), [1, 11, 21])


def test_one_shard_keeps_the_call_order_padded_to_a_bucket():
    layout = RowLayout.of([0, 0, 0], shards=1, min_rows=8)
    np.testing.assert_array_equal(layout.positions, [0, 1, 2])
    assert layout.size == 8


def test_children_and_spares_must_lie_beside_their_parents():
    pool = SlotPool(8, shards=2)  # slots 0-3 on shard 0, 4-7 on shard 1
    check_children_beside_parents(pool, np.array([0, 0, 5]), np.array([1, 2, 6]))
    with pytest.raises(ValueError, match=r"children \[4\] lie on other data shards than "
                                         r"their parents \[0\]; allocate children with"):
        check_children_beside_parents(pool, np.array([0, 0]), np.array([1, 4]))
    check_spares_beside_groups(pool, np.array([0, 5]), np.array([3, 2]), np.array([1, 2, 3, 6]))
    with pytest.raises(ValueError, match="groups on data shard 0 need 2 spare slots there, "
                                         "but 1 of the spares lie on it"):
        check_spares_beside_groups(pool, np.array([0, 5]), np.array([3, 2]),
                                   np.array([1, 6, 7]))


def test_sampling_loops_compile_with_gspmd_only_on_jax_0_11_over_several_data_shards(
        monkeypatch):
    """JAX 0.11's Shardy pass crashes on the data-sharded sampling loops: there, and only
    there, they compile with GSPMD (the setting jit keys on), and the setting is back after."""
    mesh = types.SimpleNamespace(shape={"data": 2, "model": 1})
    one_shard = types.SimpleNamespace(shape={"data": 1, "model": 2})
    shardy = jax.config.jax_use_shardy_partitioner

    def inside(factory):
        with factory():
            return jax.config.jax_use_shardy_partitioner

    monkeypatch.setattr(jax, "__version_info__", (0, 10, 2))
    assert inside(loop_partitioner(mesh, "data")) == shardy
    monkeypatch.setattr(jax, "__version_info__", (0, 11, 2))
    assert inside(loop_partitioner(mesh, "data")) is False
    assert jax.config.jax_use_shardy_partitioner == shardy
    for no_shards in [(None, None), (one_shard, "data")]:
        assert inside(loop_partitioner(*no_shards)) == shardy
