"""ModelConfig.from_hf on config.json dicts: each field as read, each default, each refusal,
and the RoPE scalings' own readings (no checkpoint, no torch)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from qstar_jax.models.config import ModelConfig, UnsupportedConfigError
from qstar_jax.models.rope_scaling import (LinearRopeScaling, Llama3RopeScaling,
                                           PerFrequencyRopeScaling, YarnRopeScaling,
                                           rope_scaling_from_fields)

# A minimal config.json: every key from_hf requires, none it has a default for.
LLAMA = dict(model_type="llama", vocab_size=32, hidden_size=64, intermediate_size=96,
             num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)


def read(**changes) -> ModelConfig:
    return ModelConfig.from_hf({**LLAMA, **changes})


def test_a_minimal_config_takes_every_default():
    assert read() == ModelConfig(
        model_type="llama", vocab_size=32, hidden_size=64, intermediate_size=96, num_layers=3,
        num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=10000.0,
        rope_scaling=None, max_position_embeddings=4096, tie_word_embeddings=False,
        attention_bias=False, attention_out_bias=False, sliding_windows=(None, None, None),
        bos_token_id=None, eos_token_ids=())


def test_every_field_is_read_from_its_key():
    cfg = read(num_key_value_heads=None, head_dim=32, rms_norm_eps=1e-5, rope_theta=5e5,
               max_position_embeddings=8192, tie_word_embeddings=True, attention_bias=True,
               bos_token_id=1, eos_token_id=[7, 8])
    assert cfg == ModelConfig(
        model_type="llama", vocab_size=32, hidden_size=64, intermediate_size=96, num_layers=3,
        num_heads=4, num_kv_heads=4, head_dim=32, rms_norm_eps=1e-5, rope_theta=5e5,
        max_position_embeddings=8192, tie_word_embeddings=True, attention_bias=True,
        attention_out_bias=True, bos_token_id=1, eos_token_ids=(7, 8))
    assert read(eos_token_id=7).eos_token_ids == (7,)
    # RoPE's base where transformers 5 writes it; Qwen2 biases q, k and v whatever
    # attention_bias says, and never the output projection.
    assert read(rope_parameters={"rope_type": "default", "rope_theta": 1e6}).rope_theta == 1e6
    for bias in (False, True):
        qwen2 = read(model_type="qwen2", attention_bias=bias)
        assert (qwen2.attention_bias, qwen2.attention_out_bias) == (True, False)


def test_mistral_has_no_attention_bias_whatever_its_config_says():
    # As transformers' Mistral, which builds its projections without bias and ignores the
    # field; read as Llama's, it refused the checkpoint's weights as not its config's.
    mistral = read(model_type="mistral", attention_bias=True)
    assert (mistral.attention_bias, mistral.attention_out_bias) == (False, False)


@pytest.mark.parametrize("changes,message", [
    ({"model_type": "gemma"}, "model_type='gemma' is not supported; supported: "
                              "('llama', 'mistral', 'qwen2')"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu': only 'silu' (SwiGLU) is supported"),
    ({"num_key_value_heads": 3}, "num_attention_heads=4 is not a multiple of "
                                 "num_key_value_heads=3"),
    ({"rope_scaling": {"rope_type": "linear", "factor": "four"}},
     "linear rope_scaling {'rope_type': 'linear', 'factor': 'four'} is malformed: could not "
     "convert string to float: 'four'"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}},
     "quantization_config (quant_method='gptq'): weights packed by a quantization method are "
     "not read; use the model's unquantized checkpoint (float32, float16 or bfloat16) or a "
     "GGUF file of it (a GGUF's quantized weights are dequantized as they load)"),
    ({"quantization_config": {"quant_method": "awq", "bits": 4}},
     "quantization_config (quant_method='awq'): weights packed by a quantization method are "
     "not read; use the model's unquantized checkpoint (float32, float16 or bfloat16) or a "
     "GGUF file of it (a GGUF's quantized weights are dequantized as they load)"),
], ids=["model type", "activation", "kv heads", "malformed scaling", "gptq", "awq"])
def test_math_this_decoder_does_not_compute_is_refused_by_name(changes, message):
    # A GPTQ config was read as plain weights: the load failed on its 'g_idx' tensors.
    with pytest.raises(UnsupportedConfigError, match=f"^{re.escape(message)}$"):
        read(**changes)


def test_hidden_act_silu_and_mlp_bias_false_are_taken():
    assert read(hidden_act="silu", mlp_bias=False) == read()


def test_mlp_bias_is_llamas_alone():
    # As transformers builds the MLPs: LlamaMLP with bias=config.mlp_bias, MistralMLP and
    # Qwen2MLP with bias=False whatever the config says. It was refused for all three.
    assert read(mlp_bias=True).mlp_bias
    assert not read(model_type="mistral", mlp_bias=True).mlp_bias
    assert not read(model_type="qwen2", mlp_bias=True).mlp_bias


@pytest.mark.parametrize("changes,windows", [
    ({"sliding_window": 8}, (None, None, None)),  # Llama has no window, whatever it says
    ({"model_type": "mistral", "sliding_window": 8}, (8, 8, 8)),
    ({"model_type": "mistral", "sliding_window": None}, (None, None, None)),
    ({"model_type": "qwen2", "sliding_window": 8, "max_window_layers": 1},
     (None, None, None)),  # not switched on: Qwen2.5's use_sliding_window false
    ({"model_type": "qwen2", "sliding_window": 8, "use_sliding_window": True,
      "max_window_layers": 0}, (8, 8, 8)),  # layers from max_window_layers on
    ({"model_type": "qwen2", "sliding_window": 8, "use_sliding_window": True},
     (None, None, None)),  # max_window_layers defaults to every layer: none windowed
    ({"model_type": "mistral", "sliding_window": 8,
      "layer_types": ["sliding_attention"] * 3}, (8, 8, 8)),
], ids=["llama", "mistral", "mistral null", "qwen2 off", "qwen2 from layer 0",
        "qwen2 no max layers", "layer types"])
def test_sliding_windows_per_layer(changes, windows):
    assert read(**changes).sliding_windows == windows


@pytest.mark.parametrize("changes", [
    {"model_type": "qwen2", "sliding_window": 8, "use_sliding_window": True,
     "max_window_layers": 1},  # full attention in layer 0, windowed from layer 1 on
    {"model_type": "qwen2", "sliding_window": 8, "use_sliding_window": True,
     "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]},
    # Qwen2Config's max_window_layers is 28 where the config leaves it out: 30 layers
    # window their last two (read as every layer's count, none were windowed).
    {"model_type": "qwen2", "sliding_window": 8, "use_sliding_window": True,
     "num_hidden_layers": 30},
], ids=["qwen2 from layer 1", "layer types", "qwen2 default max layers"])
def test_layers_that_mix_windows_are_refused_as_the_config_is_read(changes):
    # Read, they were refused only when a stage built the model.
    with pytest.raises(UnsupportedConfigError, match=re.escape(
            "layers mix attention windows [8, None]; per-layer windows are not supported by "
            "the scanned decoder")):
        read(**changes)


def test_the_scanned_decoder_needs_one_window_for_every_layer():
    assert read(model_type="mistral", sliding_window=8).uniform_sliding_window == 8
    assert read().uniform_sliding_window is None
    with pytest.raises(UnsupportedConfigError, match="^2 sliding-window entries for 3 layers$"):
        ModelConfig(model_type="mistral", vocab_size=32, hidden_size=64, intermediate_size=96,
                    num_layers=3, num_heads=4, num_kv_heads=2, head_dim=16,
                    sliding_windows=(8, 8))


def test_rope_scaling_keys_as_older_and_newer_configs_write_them():
    # transformers 4's rope_scaling with the older 'type' key; 'default' is plain RoPE.
    assert read(rope_scaling={"type": "linear", "factor": 2.0}).rope_scaling == \
        LinearRopeScaling(factor=2.0)
    assert read(rope_scaling={"rope_type": "default"}).rope_scaling is None
    assert read(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 3.0,
                                 "type": "default"}).rope_scaling == LinearRopeScaling(factor=3.0)
    assert read(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0},
                max_position_embeddings=512).rope_scaling == Llama3RopeScaling(
        factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=512)
    assert read(rope_scaling={"rope_type": "yarn", "factor": 4.0,
                              "original_max_position_embeddings": 64}).rope_scaling == \
        YarnRopeScaling(factor=4.0, original_max_position_embeddings=64,
                        attention_factor=0.1 * np.log(4.0) + 1, beta_fast=32.0, beta_slow=1.0,
                        truncate=True)


def test_linear_scaling_divides_every_frequency_and_per_frequency_each_its_own():
    plain = read().rope_inv_freq()
    np.testing.assert_allclose(read(rope_scaling={"rope_type": "linear", "factor": 2.0})
                               .rope_inv_freq(), plain / 2, rtol=1e-7)
    factors = (1.0, 2.0, 4.0, 8.0, 1.0, 1.0, 1.0, 2.0)
    scaled = PerFrequencyRopeScaling(factors=factors).scale(plain.astype(np.float64), 1e4)
    np.testing.assert_allclose(scaled, plain / np.array(factors), rtol=1e-7)
    with pytest.raises(ValueError, match="^3 RoPE frequency factors for 8 frequencies$"):
        PerFrequencyRopeScaling(factors=(1.0, 2.0, 4.0)).scale(plain, 1e4)


def test_stored_scaling_fields_read_back_as_their_kind_or_are_refused():
    assert rope_scaling_from_fields({"factor": 2.0}) == LinearRopeScaling(factor=2.0)
    assert rope_scaling_from_fields({"factors": [1, 2]}) == \
        PerFrequencyRopeScaling(factors=(1.0, 2.0))
    with pytest.raises(ValueError, match=re.escape(
            "rope_scaling fields ['factor', 'shift'] match no known scaling")):
        rope_scaling_from_fields({"factor": 2.0, "shift": 1})


@pytest.mark.parametrize("changes,message", [
    ({"hidden_size": "64"}, "hidden_size='64': each must be a positive integer"),
    ({"num_attention_heads": 0, "num_hidden_layers": 2.0},
     "num_attention_heads=0, num_hidden_layers=2.0: each must be a positive integer"),
    ({"vocab_size": None}, "vocab_size=None: each must be a positive integer"),
    ({"intermediate_size": True}, "intermediate_size=True: each must be a positive integer"),
    ({"head_dim": -16}, "head_dim=-16: each must be a positive integer"),
    ({"eos_token_id": "</s>"}, "eos_token_id: '</s>' is not a token id or a list of them "
                               "(integers >= 0)"),
    ({"eos_token_id": [2, "</s>"]}, "eos_token_id: [2, '</s>'] is not a token id or a list "
                                    "of them (integers >= 0)"),
    ({"bos_token_id": [1, 2]}, "bos_token_id=[1, 2] names 2 tokens; one is read"),
], ids=["text", "zero and float", "null", "bool", "negative optional", "eos text",
        "eos list with text", "two bos"])
def test_a_field_of_the_wrong_type_is_refused_by_name(changes, message):
    # Read as they were, each failed later: a TypeError or ZeroDivisionError naming
    # nothing, or int('</s>').
    with pytest.raises(UnsupportedConfigError, match=f"^{re.escape(message)}$"):
        read(**changes)


def test_a_config_that_is_not_a_json_object_is_refused():
    with pytest.raises(UnsupportedConfigError, match="^holds a JSON list, where a config.json "
                                                      "holds an object of settings$"):
        ModelConfig.from_hf([LLAMA])
    assert read(bos_token_id=[1]).bos_token_id == 1
    assert read(head_dim=None, num_key_value_heads=None).head_dim == 16
