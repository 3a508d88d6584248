"""The paged-attention benchmark (a device check) runs end to end: the kernel, here
interpreted, against the decoder's jnp path on ragged rows over shuffled pages."""

import json
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np

SCRIPT = Path(__file__).parents[1] / "experiments/bench_paged_attention.py"


def test_the_benchmark_times_each_kernel_block_against_the_jnp_path(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    monkeypatch.setattr(sys, "argv", [
        str(SCRIPT), "--interpret", "--rows", "3", "--lengths", "5", "70", "--layers", "2",
        "--head-dim", "16", "--keys-per-block", "16", "64", "--reps", "1"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(figures["us_per_call"]) == ["jnp", "pallas_16_keys", "pallas_64_keys"]
    assert all(us > 0 for us in figures["us_per_call"].values())
    # Every implementation attends as the decoder's jnp path does, pool sentinels and all.
    assert max(figures["max_abs_diff"].values()) < 1e-5
    fastest = min(figures["us_per_call"]["pallas_16_keys"],
                  figures["us_per_call"]["pallas_64_keys"])
    assert figures["kernel_vs_jnp"] == figures["us_per_call"]["jnp"] / fastest


def test_ragged_rows_hold_each_shuffled_page_once_and_every_layer_is_summed(monkeypatch):
    """5 rows of 1-40 tokens on 8-token pages: each row's first ceil(length / 8) table
    entries are pages of the pool, every page used by exactly one row, the rest of its 5
    entries the pool size; the layer loop sums all 3 layers' outputs (1 + 2 + 3 times q)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    bench = runpy.run_path(str(SCRIPT))
    args = SimpleNamespace(seed=3, lengths=[1, 40], page_size=8, rows=5, layers=2,
                           kv_heads=1, head_dim=4, heads=2)
    q, k_pages, v_pages, table, lengths = bench["ragged_pages"](args, jnp.float32)
    table, lengths = np.asarray(table), np.asarray(lengths)
    used = -(-lengths // 8)
    pool = int(used.sum())
    assert table.shape == (5, 5) and k_pages.shape == v_pages.shape == (2, pool, 1, 8, 4)
    assert q.shape == (5, 1, 2, 4) and all(1 <= length <= 40 for length in lengths)
    assert sorted(np.concatenate([row[:n] for row, n in zip(table, used)])) == list(range(pool))
    assert all((row[n:] == pool).all() for row, n in zip(table, used))
    run = bench["every_layer"](lambda q, k, v, table, lengths, layer: q * (layer + 1), 3)
    total, last = run(q, k_pages, v_pages, table, lengths)
    np.testing.assert_allclose(total, 6 * q)
    np.testing.assert_allclose(last, 3 * q)


def test_the_figures_are_each_loops_time_a_layer_and_each_kernels_gap_to_the_jnp_path(
        monkeypatch, capsys):
    """Stand-ins: the jnp path gives zeros, each kernel its keys per block everywhere, and
    the 2-layer loops take 8, 2 and 5 ms: a layer's call is 4000, 1000 and 2500 µs, the
    kernels differ from the jnp path by 16 and 64, and the fastest runs 4x the jnp path."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import cascade_attention
    import qstar_kernels

    kernel_calls = []

    def kernel(q, k_pages, v_pages, table, lengths, layer, *, keys_per_block, interpret):
        kernel_calls.append((keys_per_block, interpret))
        return jnp.full(q.shape, keys_per_block, q.dtype)

    loop_ms = iter([8.0, 2.0, 5.0])
    monkeypatch.setattr(cascade_attention, "paged_attention",
                        lambda attention, q, *args: jnp.zeros_like(q))
    monkeypatch.setattr(cascade_attention, "timed", lambda fn, args, reps: next(loop_ms))
    monkeypatch.setattr(qstar_kernels, "paged_decode_attention_gpu", kernel)
    monkeypatch.setattr(sys, "argv", [
        str(SCRIPT), "--interpret", "--rows", "3", "--lengths", "5", "70", "--layers", "2",
        "--head-dim", "16", "--keys-per-block", "16", "64", "--reps", "1"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["us_per_call"] == {"jnp": 4000.0, "pallas_16_keys": 1000.0,
                                      "pallas_64_keys": 2500.0}
    assert figures["max_abs_diff"] == {"jnp": 0.0, "pallas_16_keys": 16.0,
                                       "pallas_64_keys": 64.0}
    assert figures["kernel_vs_jnp"] == 4.0
    assert set(kernel_calls) == {(16, True), (64, True)}
