"""Sizing a run: parameter counts, KV bytes, pages, and the refusal before a run that
cannot fit."""

import json

import jax
import pytest
from flax import nnx

from qstar_jax import memory_plan
from qstar_jax.config import ConfigError, load_config
from qstar_jax.models.config import ModelConfig
from qstar_jax.models.llama import LlamaModel

LLAMA2_7B = dict(model_type="llama", vocab_size=32000, hidden_size=4096,
                 intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32,
                 head_dim=128)
SMOLLM2_135M = dict(model_type="llama", vocab_size=49152, hidden_size=576,
                    intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3,
                    head_dim=64, tie_word_embeddings=True)


def test_parameter_counts_are_the_published_ones_and_the_models():
    assert memory_plan.parameter_count(ModelConfig(**LLAMA2_7B)) == 6_738_415_616
    assert memory_plan.parameter_count(ModelConfig(**SMOLLM2_135M)) == 134_515_008
    tiny = ModelConfig(model_type="qwen2", vocab_size=40, hidden_size=16, intermediate_size=24,
                       num_layers=2, num_heads=4, num_kv_heads=2, head_dim=4,
                       attention_bias=True)
    params = nnx.state(LlamaModel(tiny, rngs=nnx.Rngs(0)), nnx.Param)
    assert memory_plan.parameter_count(tiny) == sum(x.size for x in jax.tree.leaves(params))


def test_the_issue_s_smollm2_run_is_refused_with_the_largest_slots_that_fit():
    run = load_config(None, ["policy.source=smollm2-135m-instruct", "q_train.second_opinion=null",
                             "decode.slots=256",
                             "decode.max_len=768"])
    figures = memory_plan.plan(ModelConfig(**SMOLLM2_135M), run, memory_bytes=8 * 10**9,
                               on_cpu=True)
    assert figures.kv_bytes_per_token == 2 * 30 * 3 * 64 * 4
    assert figures.slot_pool_bytes == 256 * 768 * 46080
    assert not figures.fits
    left = int(0.9 * 8e9) - 2 * 134_515_008 * 4
    assert figures.largest_slots == left // (768 * 46080) == 173
    assert figures.pages == left // (16 * 46080)
    assert figures.rows_at_max_len == figures.pages * 16 // 768


def test_check_memory_refuses_before_a_stage_runs(monkeypatch):
    run = load_config(None, ["decode.slots=100000", "decode.max_len=1024"])
    monkeypatch.setattr(memory_plan, "available_memory", lambda: (10**9, True))
    with pytest.raises(ConfigError, match="does not fit the free host memory.*largest "
                                          "decode.slots that fits: \\d+"):
        memory_plan.check_memory(run)
    assert memory_plan.check_memory(load_config(None, ["decode.slots=8"])).fits


def test_command_sizes_a_7b_config_from_its_config_json(tmp_path, capsys):
    hf = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
          "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
          "num_key_value_heads": 32}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    code = memory_plan.main(["configs/gsm8k_llama2_7b.yaml", "--memory", "80GB",
                             "--model-config", str(tmp_path / "config.json")])
    figures = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert figures["weight_bytes"] == 6_738_415_616 * 2
    assert figures["kv_bytes_per_token"] == 2 * 32 * 32 * 128 * 2
    assert code == (0 if figures["fits"] else 1)
    with pytest.raises(ValueError, match="give a number"):
        memory_plan.parse_memory("80 parsecs")
