"""experiments/decode_step_breakdown.py (docs/decoder_speed.md's split of a decode step)
on a tiny random model in SmolLM2's place: every part it times runs once (the decoder's
prefill and step sampler, the cached, uncached and unrolled forward passes, the LM head),
and its JSON is of stand-in medians, so the figures are exact (but for its GFLOP, 0.0 on
a model this small)."""

import json
import sys
from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.loading import LoadedModel
from tests.decoding.tiny_models import tiny_config
from tests.support.experiments import experiment_module

SCRIPT = Path(__file__).parents[1] / "experiments/decode_step_breakdown.py"
# The medians, in the order the script asks for them: the prefill alone, generations of
# 64 and of 32 new tokens, then the cached, uncached and unrolled forward passes and the
# LM head.
MEDIAN_SECONDS = [1.05, 10.0, 5.2, 0.102, 0.0805, 0.209, 0.0434]


def test_each_part_runs_and_the_json_splits_the_step(monkeypatch, capsys):
    decode_step_breakdown = experiment_module(monkeypatch, "decode_step_breakdown")

    config = tiny_config(64)
    tiny = LoadedModel(config=config, model=LlamaModel(config, rngs=nnx.Rngs(0)),
                       tokenizer=None)
    loads = []
    monkeypatch.setattr("qstar_jax.models.loading.load_model",
                        lambda name, dtype: loads.append((name, dtype)) or tiny)
    medians = iter(MEDIAN_SECONDS)

    def median_seconds(run, reps):
        run()
        return next(medians)

    monkeypatch.setattr(decode_step_breakdown, "median_seconds", median_seconds)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--batch", "2", "--reps", "1"])
    decode_step_breakdown.main()
    assert loads == [("smollm2-135m-instruct", jnp.float32)]
    assert next(medians, None) is None
    lines = capsys.readouterr().out.strip().splitlines()
    # The 64 new tokens less the 32: 4.8 s over 32 tokens.
    assert json.loads(lines[-1]) == {
        "batch": 2, "prefill_s": 1.05, "sampler_ms_per_token": 150.0,
        "forward_cached_ms": 102.0, "forward_uncached_ms": 80.5, "forward_unrolled_ms": 209.0,
        "lm_head_ms": 43.4, "gflop_per_token_step": 0.0}
    assert lines[1] == "prefill of 2 x 64 tokens: 1.05 s"
    assert lines[-3:-1] == ["  forward unrolled: 209.0 ms", "  lm head: 43.4 ms"]

