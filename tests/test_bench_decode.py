"""The decode benchmark's random-weight mode (what runs on an accelerator) runs end to end."""

import json
import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "experiments/bench_decode.py"


@pytest.fixture(autouse=True)
def experiments_on_path(monkeypatch):
    """As ``python experiments/bench_decode.py`` has it: its folder's modules importable."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))


@pytest.mark.optimized
def test_random_weight_benchmark_reports_decode_rate_against_the_roofline(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--random-llama", "tiny", "--batches", "1",
                                      "2", "--reps", "1"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["batch"] == [1, 2] and figures["hf_tok_s"] is None
    assert figures["page_size"] == 0 and figures["attention"] is None  # row slots
    assert figures["layer_weights"] == "per-layer"  # the decoder's default on a CPU
    for whole, decode, roof, cap in zip(figures["jax_tok_s"], figures["decode_tok_s"],
                                        figures["roofline_tok_s"], figures["matmul_cap_tok_s"]):
        assert 0 < whole < decode  # the whole generation also prefills the prompt
        assert roof > 0 and cap > 0
    # Two rows read the weights once per step, as one does: the roofline nearly doubles.
    assert 1.5 < figures["roofline_tok_s"][1] / figures["roofline_tok_s"][0] <= 2


@pytest.mark.parametrize("attention, resolved, layer_weights",
                         [("jnp", "jnp", "stacked"), ("pallas", "pallas_interpret", "unrolled"),
                          ("jnp", "jnp", "per-layer-transposed")])
def test_the_benchmark_runs_ours_on_pages_with_the_attention_it_is_told(
        monkeypatch, capsys, tmp_path, attention, resolved, layer_weights):
    """The decoder's own pages and attention, as it resolved them on this CPU (without the
    matmul cap and with the layer weights it is told), and a profiled generation."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--random-llama", "tiny", "--batches", "2",
                                      "--reps", "1", "--page-size", "16", "--attention",
                                      attention, "--no-matmul-cap", "--layer-weights",
                                      layer_weights, "--trace", str(tmp_path)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    assert (figures["page_size"], figures["attention"]) == (16, resolved)
    assert figures["decode_tok_s"][0] > 0 and figures["roofline_tok_s"][0] > 0
    assert figures["matmul_cap_tok_s"] is None and figures["layer_weights"] == layer_weights
    # The profiled generation: its trace kept, its summary printed (no device on a CPU),
    # and the step loop's HLO saved beside it.
    assert (tmp_path / "decode_batch2.json.gz").stat().st_size > 0
    assert "while" in (tmp_path / "decode_batch2.hlo.txt").read_text()
    # XLA:CPU's runtime events carry its fusions' names: some are described from the HLO.
    assert any(line.startswith("[trace decode_batch2]       = ") and "reads" in line
               for line in lines)
    assert any(line.startswith("[trace decode_batch2]") and "host runtime events" in line
               for line in lines)
