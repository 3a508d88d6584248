"""The paged-attention benchmark (a device check) runs end to end: the kernel, here
interpreted, against the decoder's jnp path on ragged rows over shuffled pages."""

import json
import runpy
import sys
from pathlib import Path

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
