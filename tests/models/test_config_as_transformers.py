"""``ModelConfig.from_hf`` against transformers' own reading of the same config.json:
the defaults its config classes put where a file leaves a field out, the fields its
models read or pass over, and the configs it fails on, which are refused here by name."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import transformers

from qstar_jax.models.config import ModelConfig, UnsupportedConfigError

# Three layers of 16 heads: no class default of num_key_value_heads (Mistral's 8,
# Qwen2's 32) is the head count.
BASE = dict(vocab_size=32, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=16)


def transformers_config(raw: dict) -> transformers.PretrainedConfig:
    # Their config classes write into the dicts they are given.
    return transformers.AutoConfig.for_model(**copy.deepcopy(raw))


def transformers_windows(config: transformers.PretrainedConfig) -> tuple:
    """Each layer's window as the model of ``config``'s type reads it: Mistral's
    attention and mask read sliding_window alone, Qwen2's the window of the layers
    layer_types names."""
    layers = config.num_hidden_layers
    if config.model_type == "llama":
        return (None,) * layers
    if config.model_type == "mistral":
        return (config.sliding_window,) * layers
    return tuple(config.sliding_window if kind == "sliding_attention" else None
                 for kind in config.layer_types)


@pytest.mark.parametrize("raw", [
    {"model_type": "mistral"},  # num_key_value_heads 8, sliding_window 4096
    {"model_type": "qwen2", "num_attention_heads": 64},  # num_key_value_heads 32
    {"model_type": "mistral", "num_key_value_heads": 4, "sliding_window": 8,
     "layer_types": ["full_attention"] * 3},  # Mistral windows every layer whatever it says
    {"model_type": "llama", "rope_theta": 1000.0, "rope_scaling": {"rope_type": "default"},
     "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}},
], ids=["mistral defaults", "qwen2 defaults", "mistral layer types", "rope_scaling wins"])
def test_a_config_reads_as_transformers_reads_it(raw):
    # Read before, the first two took the head count for num_key_value_heads and Mistral
    # no window; Mistral's layer_types took its window away; RoPE's base was
    # rope_parameters' where transformers takes the rope_scaling beside it (and the
    # top-level rope_theta it is given).
    raw = {**BASE, **raw}
    ours, theirs = ModelConfig.from_hf(copy.deepcopy(raw)), transformers_config(raw)
    assert ours.num_kv_heads == theirs.num_key_value_heads
    assert ours.sliding_windows == transformers_windows(theirs)
    assert ours.rope_theta == theirs.rope_parameters["rope_theta"]


def run_transformers(raw: dict) -> None:
    model = transformers.AutoModelForCausalLM.from_config(transformers_config(raw))
    with torch.no_grad():
        model(torch.arange(12)[None])


@pytest.mark.parametrize("raw,message", [
    ({"model_type": "llama", "partial_rotary_factor": 0.5,
      "rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}},
     "partial_rotary_factor=0.5 with linear RoPE scaling is not supported: RoPE over part of "
     "each head is not computed"),
    ({"model_type": "mistral", "rope_parameters": {
        "rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "partial_rotary_factor": 0.25,
        "original_max_position_embeddings": 64}},
     "partial_rotary_factor=0.25 with yarn RoPE scaling is not supported: RoPE over part of "
     "each head is not computed"),
    ({"model_type": "qwen2", "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}},
     "RoPE settings per layer type (full_attention, sliding_attention) are not supported"),
    ({"model_type": "qwen2", "sliding_window": 8, "layer_types": ["sliding_attention"] * 3},
     "layer_types names sliding_attention layers, but no window is on "
     "(use_sliding_window=False, sliding_window=8)"),
], ids=["partial rotary, linear", "partial rotary, yarn", "rope per layer type",
        "qwen2 sliding layers, window off"])
def test_a_config_transformers_fails_on_is_refused_by_name(raw, message):
    # Read before, they ran: RoPE over whole heads, plain RoPE at base 10000, and a window
    # of sliding_window on every layer.
    raw = {**BASE, "num_key_value_heads": 4, **raw}
    with pytest.raises(UnsupportedConfigError, match=f"^{re.escape(message)}$"):
        ModelConfig.from_hf(copy.deepcopy(raw))
    with pytest.raises((RuntimeError, KeyError, TypeError)):
        run_transformers(raw)
