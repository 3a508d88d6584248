"""The row-products benchmark (a device check) runs end to end: the kernel, here
interpreted, at two block settings against XLA's products on a tiny layer's shapes."""

import json
import runpy
import sys
from pathlib import Path

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
