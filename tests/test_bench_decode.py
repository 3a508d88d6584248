"""The decode benchmark's random-weight mode (what runs on an accelerator) runs end to end."""

import dataclasses
import json
import re
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flax import nnx

from qstar_jax.models import loading
from qstar_jax.models.config import ModelConfig
from qstar_jax.models.llama import LlamaModel

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
    assert figures["layer_weights"] == "per-layer-kernels"  # the decoder's default on a CPU
    assert figures["row_windows"] is True  # auto: on a CPU, over row windows
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
    # auto, on pages: over row windows where the jnp attention reads per-layer weights
    assert figures["row_windows"] is (layer_weights == "per-layer-transposed")
    # The profiled generation: its trace kept, its summary printed (no device on a CPU),
    # and the step loop's HLO saved beside it.
    assert (tmp_path / "decode_batch2.json.gz").stat().st_size > 0
    assert "while" in (tmp_path / "decode_batch2.hlo.txt").read_text()
    # XLA:CPU's runtime events carry its fusions' names: some are described from the HLO.
    assert any(line.startswith("[trace decode_batch2]       = ") and "reads" in line
               for line in lines)
    assert any(line.startswith("[trace decode_batch2]") and "host runtime events" in line
               for line in lines)


def test_the_roofline_and_the_products_by_hand():
    """A decode step reads every weight once and each row's cache at its mean length over
    the new tokens, 64 + 64 / 2 = 96; one layer applies seven products."""
    import bench_decode

    # 2 rows: 1000 weight bytes + 2 x 96 x 10 KV bytes a step at 1 MB/s.
    assert bench_decode.roofline_tok_s(2, 1000, 10, 1e6) == 2 * 1e6 / (1000 + 2 * 96 * 10)
    cfg = ModelConfig(model_type="llama", vocab_size=32, hidden_size=12, intermediate_size=20,
                      num_layers=3, num_heads=4, num_kv_heads=2, head_dim=5)
    assert bench_decode.kv_token_bytes(cfg, "bfloat16") == 2 * 3 * 2 * 5 * 2 == 120
    # q 4 x 5 = 20 outputs, k and v 2 x 5 = 10, o back to 12; gate, up and down over 20.
    assert bench_decode.layer_product_shapes(cfg) == [
        (12, 20), (12, 10), (12, 10), (20, 12), (12, 20), (12, 20), (20, 12)]
    # As each layer_weights holds them: the copy as loaded, or q/k/v as one and o over
    # rows (transposed), or every product over rows with gate and up as one (kernels).
    assert bench_decode.layer_products(cfg, "stacked") == [
        (shape, False) for shape in bench_decode.layer_product_shapes(cfg)]
    assert bench_decode.layer_products(cfg, "per-layer-transposed") == [
        ((12, 40), True), ((20, 12), True), ((12, 20), False), ((12, 20), False),
        ((20, 12), False)]
    assert bench_decode.layer_products(cfg, "per-layer-kernels") == [
        ((12, 40), True), ((20, 12), True), ((12, 40), True), ((20, 12), True)]
    # A product timed over rows runs [rows, 12] against [40, 12] weights.
    assert 0 < bench_decode.product_seconds(2, (12, 40), 2, "float32", as_rows=True, reps=1)


def test_the_matmul_cap_by_hand(monkeypatch):
    """Stand-in product times, a microsecond per input row and output column per copy
    timed: the cap of 2 rows is 2 x 64 tokens over the prompt's 128 rows through every
    layer's products (3 layers) plus 64 steps of 2 rows through them and the LM head."""
    import bench_decode

    timed = []

    def product_seconds(rows, shape, copies, dtype, as_rows):
        timed.append((rows, shape, copies, as_rows))
        return rows * sum(shape) * 1e-6 * (0.5 if as_rows else 1)

    monkeypatch.setattr(bench_decode, "product_seconds", product_seconds)
    cfg = ModelConfig(model_type="llama", vocab_size=32, hidden_size=12, intermediate_size=20,
                      num_layers=3, num_heads=4, num_kv_heads=2, head_dim=5)
    layer = sum(sum(shape) for shape in bench_decode.layer_product_shapes(cfg))  # 218
    head = 12 + 32
    total = 3 * 128 * layer * 1e-6 + 64 * (3 * 2 * layer + 2 * head) * 1e-6
    assert bench_decode.matmul_cap_tok_s(cfg, 2, "float32") == pytest.approx(2 * 64 / total)
    # Each layer product timed on the layers' 3 distinct weights, the head on its one.
    assert sorted(set(timed)) == sorted(
        {(rows, shape, 3, False) for rows in (128, 2)
         for shape in bench_decode.layer_product_shapes(cfg)} | {(2, (12, 32), 1, False)})
    # The CPU's default: the prompt through the scan's weights as loaded, each new token
    # through the copy's four products over rows (q/k/v 12 -> 40 and gate/up 12 -> 40 as
    # one each, o 20 -> 12, down 20 -> 12), a tied head over the embeddings' rows.
    timed.clear()
    tied = dataclasses.replace(cfg, tie_word_embeddings=True)
    rows_layer = (52 + 32 + 52 + 32) * 0.5
    total = 3 * 128 * layer * 1e-6 + 64 * (3 * 2 * rows_layer + 2 * head * 0.5) * 1e-6
    assert bench_decode.matmul_cap_tok_s(tied, 2, "float32", "per-layer-kernels",
                                         "stacked") == pytest.approx(2 * 64 / total)
    assert sorted(set(timed)) == sorted(
        {(128, shape, 3, False) for shape in bench_decode.layer_product_shapes(cfg)}
        | {(2, shape, 3, True) for shape in ((12, 40), (20, 12), (12, 40), (20, 12))}
        | {(2, (12, 32), 1, True)})


def test_timings_leave_the_warm_up_call_out(monkeypatch):
    """Calls taking 9 (the warm-up), 4, 1 and 2 s on a stand-in clock: 3 timed, the median
    2 s and the fastest 1 s."""
    import bench_decode

    clock, durations = [0.0], iter([9.0, 4.0, 1.0, 2.0] * 2)

    def run():
        clock[0] += next(durations)

    monkeypatch.setattr(bench_decode.time, "perf_counter", lambda: clock[0])
    assert bench_decode.timings(run, 3) == [4.0, 1.0, 2.0]
    assert bench_decode.median_seconds(run, 3) == 2.0
    durations = iter([9.0, 4.0, 1.0, 2.0])
    assert bench_decode.fastest_seconds(run, 3) == 1.0


def test_the_ratio_to_transformers_is_ours_over_theirs(monkeypatch, capsys):
    """A checkpoint (the tiny random llama) and its transformers side stood in, and timings
    too: ours takes 2.0 s a batch of 2 (its prefill 0.25 s on a stand-in clock),
    transformers 8.0 s; its 2 x 64 tokens give ours 64 tok/s, theirs 16, a ratio of 4, and
    the decode alone 128 / 1.75 tok/s."""
    import bench_decode

    cfg = ModelConfig.from_hf(bench_decode.RANDOM_LLAMAS["tiny"])
    tokenizer = SimpleNamespace(encode=lambda text: list(range(len(text))), pad_id=0)
    loaded = SimpleNamespace(model=LlamaModel(cfg, rngs=nnx.Rngs(0)), config=cfg,
                             tokenizer=tokenizer)
    theirs = []

    def transformers_generate(path, dtype, threads, prompt, pad_id):
        theirs.append((path, dtype, prompt, pad_id))
        return lambda batch: np.zeros((batch, 64), np.int32)

    seconds = iter([2.0, 8.0])  # ours, then theirs

    def median_seconds(run, reps):
        run(), run()  # a warm-up and a timed call, as timings makes them
        return next(seconds)

    clock = [0.0]

    def perf_counter():
        clock[0] += 0.25
        return clock[0]

    monkeypatch.setattr(loading, "source_path", lambda model: Path("/models") / model)
    monkeypatch.setattr(loading, "load_model", lambda path, dtype: loaded)
    monkeypatch.setattr(bench_decode, "transformers_generate", transformers_generate)
    monkeypatch.setattr(bench_decode, "median_seconds", median_seconds)
    monkeypatch.setattr(bench_decode, "copy_bandwidth", lambda: 1e9)
    monkeypatch.setattr(bench_decode, "time", SimpleNamespace(perf_counter=perf_counter))
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--model", "m", "--batches", "2",
                                      "--no-matmul-cap"])
    bench_decode.main()
    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    assert theirs == [(Path("/models/m"), "float32", list(range(64)), 0)]
    assert (figures["jax_tok_s"], figures["hf_tok_s"], figures["ratio"]) == (
        [64.0], [16.0], [4.0])
    assert figures["decode_tok_s"] == [round(128 / 1.75, 1)]
    assert figures["bandwidth_gb_s"] == 1.0 and figures["matmul_cap_tok_s"] is None
    assert re.fullmatch(r"greedy tokens agreeing with transformers before the first "
                        r"difference: \d+/64", lines[1])
