"""The row-products benchmark (a device check) runs end to end: the kernel, here
interpreted, at two block settings against XLA's products on a tiny layer's shapes."""

import json
import runpy
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

SCRIPT = Path(__file__).parents[1] / "experiments/bench_row_products.py"


def test_the_benchmark_times_each_setting_against_xlas_products(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    monkeypatch.setattr(sys, "argv", [
        str(SCRIPT), "--interpret", "--shape", "tiny", "--layers", "2", "--tokens", "1", "3",
        "--blocks", "8x16x4", "4x64x4", "--reps", "1"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    runs = figures["runs"]
    assert [(run["tokens"], run["product"]) for run in runs] == [
        (tokens, product) for tokens in (1, 3) for product in ("qkv", "o", "gate_up", "down")]
    # The tiny layer: q/k/v 96 rows of 64, o 64 of 64, gate and up 128 each, down 64 of 128.
    assert [run["weight_mb"] for run in runs[:4]] == pytest.approx(
        [96 * 64 * 4e-6, 64 * 64 * 4e-6, 256 * 64 * 4e-6, 64 * 128 * 4e-6])
    for run in runs:
        assert list(run["us"]) == ["xla", "8x16x4", "4x64x4"]
        assert max(run["max_abs_diff"].values()) < 1e-5  # every setting computes XLA's result
        # MB a µs is TB a second
        assert run["gb_s"]["xla"] == pytest.approx(run["weight_mb"] / run["us"]["xla"] * 1e3)
    for tokens in ("1", "3"):
        best = figures["best_blocks"][tokens]
        by_product = {run["product"]: run for run in runs if str(run["tokens"]) == tokens}
        for name, setting in best.items():  # the fastest setting of each product
            settings = {k: us for k, us in by_product[name]["us"].items() if k != "xla"}
            assert settings[setting] == min(settings.values()), (tokens, name)
        assert figures["layer_us"][tokens]["kernel_best"] == pytest.approx(
            sum(by_product[name]["us"][best[name]] for name in best))
        assert figures["layer_us"][tokens]["xla"] == pytest.approx(
            sum(run["us"]["xla"] for run in by_product.values()))


def test_the_figures_are_each_calls_time_a_layer_against_xlas_products(monkeypatch, capsys):
    """Stand-ins: XLA's product gives zeros, a kernel setting its outputs a block
    everywhere, the device copies at 250 GB/s, and the 2-layer calls of each product take
    (XLA, 8x16x4, 4x64x4) ms of qkv (4, 2, 6), o (2, 3, 1), gate_up (8, 4, 2), down (6, 5,
    7): a product's figure is half its call, in µs; the kernels differ from XLA by 8 and 4;
    the layer sums XLA's 2000 + 1000 + 4000 + 3000 µs and the best settings' 1000 + 500 +
    1000 + 2500."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import bench_decode
    import cascade_attention
    import qstar_kernels

    products, settings = [], set()

    def reference(x, rows, *, gated, x_segments, **options):
        products.append((rows.shape, gated, x_segments, sorted(options)))
        return jnp.zeros((x.shape[0], rows.shape[0] // (2 if gated else 1)), x.dtype)

    def kernel(x, rows, *, gated, x_segments, block_out, block_in, num_warps, interpret,
               **options):
        settings.add((block_out, block_in, num_warps, interpret))
        return jnp.full((x.shape[0], rows.shape[0] // (2 if gated else 1)), block_out,
                        x.dtype)

    call_ms = iter([4, 2, 6, 2, 3, 1, 8, 4, 2, 6, 5, 7])
    monkeypatch.setattr(qstar_kernels, "rows_product_reference", reference)
    monkeypatch.setattr(qstar_kernels, "rows_product_gpu", kernel)
    monkeypatch.setattr(cascade_attention, "timed", lambda fn, args, reps: next(call_ms))
    monkeypatch.setattr(bench_decode, "copy_bandwidth", lambda: 2.5e11)
    monkeypatch.setattr(sys, "argv", [
        str(SCRIPT), "--interpret", "--shape", "tiny", "--layers", "2", "--tokens", "3",
        "--blocks", "8x16x4", "4x64x4", "--reps", "1"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["bandwidth_gb_s"] == 250.0
    assert [(run["product"], run["us"]) for run in figures["runs"]] == [
        ("qkv", {"xla": 2000, "8x16x4": 1000, "4x64x4": 3000}),
        ("o", {"xla": 1000, "8x16x4": 1500, "4x64x4": 500}),
        ("gate_up", {"xla": 4000, "8x16x4": 2000, "4x64x4": 1000}),
        ("down", {"xla": 3000, "8x16x4": 2500, "4x64x4": 3500})]
    assert all(run["max_abs_diff"] == {"xla": 0, "8x16x4": 8, "4x64x4": 4}
               for run in figures["runs"])
    # qkv's 96 x 64 float32 weights in 2000 µs: 24,576 bytes / 2 ms = 0.012288 GB/s.
    assert figures["runs"][0]["gb_s"]["xla"] == pytest.approx(0.012288)
    assert figures["best_blocks"] == {"3": {"qkv": "8x16x4", "o": "4x64x4",
                                            "gate_up": "4x64x4", "down": "8x16x4"}}
    assert figures["layer_us"] == {"3": {"xla": 10000, "kernel_best": 5000}}
    # Each product traced once, for each of its 2 layers: the MLP's gate and up gated, o
    # reading the attention kernel's padded rows (4 heads of 16 in 16 rows of 16), the
    # normed products with their norm weights and the others onto the residual.
    assert products == [call for call in [((96, 64), False, None, ["norm_weight"]),
                                          ((64, 64), False, (64, 256), ["residual"]),
                                          ((256, 64), True, None, ["norm_weight"]),
                                          ((64, 128), False, None, ["residual"])]
                        for _ in range(2)]
    assert settings == {(8, 16, 4, True), (4, 64, 4, True)}
