"""The decode benchmark's random-weight mode (what runs on an accelerator) runs end to end."""

import json
import runpy
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "experiments/bench_decode.py"


def test_random_weight_benchmark_reports_decode_rate_against_the_roofline(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--random-llama", "tiny", "--batches", "1",
                                      "2", "--reps", "1"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["batch"] == [1, 2] and figures["hf_tok_s"] is None
    for whole, decode, roof, cap in zip(figures["jax_tok_s"], figures["decode_tok_s"],
                                        figures["roofline_tok_s"], figures["matmul_cap_tok_s"]):
        assert 0 < whole < decode  # the whole generation also prefills the prompt
        assert roof > 0 and cap > 0
    # Two rows read the weights once per step, as one does: the roofline nearly doubles.
    assert 1.5 < figures["roofline_tok_s"][1] / figures["roofline_tok_s"][0] <= 2
