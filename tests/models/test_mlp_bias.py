"""``mlp_bias``: Llama's MLP with biases on its gate, up and down projections, as
transformers builds it (``LlamaMLP``: ``bias=config.mlp_bias``), read from safetensors and
from a GGUF (llama.cpp's optional ``ffn_*.bias`` tensors), checked without reading a
weight, and run through every layout of the decoder's per-layer weights and the decoder
itself; Mistral and Qwen2 build their MLPs without biases whatever the field says, and
so does ours. Every model here was refused before: mlp_bias=true was refused for all
three model types."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch
import transformers

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.models import load_model
from qstar_jax.models.loading import check_checkpoint
from qstar_jax.models.weights import CheckpointError
from tests.models.test_tiny_parity import assert_parity
from tests.support import tiny_checkpoints
from tests.support.tiny_checkpoints import (make_tiny_torch_model, save_tiny_checkpoint,
                                            save_tiny_gguf, train_tiny_tokenizer)

MLP_BIASES = ("gate_proj", "up_proj", "down_proj")


@pytest.fixture
def with_mlp_bias(monkeypatch):
    """The tiny families' configs with mlp_bias=true: a Llama gets its MLP biases (drawn
    at random with every other weight), Mistral and Qwen2 only the field."""
    plain = tiny_checkpoints._model_config

    def biased(family):
        config = plain(family)
        config.mlp_bias = True
        return config

    monkeypatch.setattr(tiny_checkpoints, "_model_config", biased)


@pytest.fixture
def token_rows():
    rng = np.random.default_rng(1234)
    return rng.integers(0, 512, 300).tolist(), rng.integers(0, 512, 40).tolist()


@pytest.mark.parametrize("source", ["safetensors", "gguf"])
def test_a_llama_with_mlp_bias_loads_as_transformers_runs_it(tmp_path, with_mlp_bias,
                                                             token_rows, source):
    path = (save_tiny_checkpoint(tmp_path, "llama", with_tokenizer=False)
            if source == "safetensors" else save_tiny_gguf(tmp_path / "tiny.gguf"))
    loaded = load_model(path)
    assert loaded.config.mlp_bias
    # Drawn as every other weight: parity is not met by biases of zero.
    mlp = loaded.model.layers.mlp
    assert all(np.abs(getattr(mlp, name).bias[...]).min() > 0 for name in MLP_BIASES)
    assert_parity(loaded.model, make_tiny_torch_model("llama"), token_rows)


@pytest.mark.parametrize("family", ["mistral_sliding", "qwen2"])
def test_mistral_and_qwen2_ignore_mlp_bias_as_transformers_does(tmp_path, with_mlp_bias,
                                                                token_rows, family):
    path = save_tiny_checkpoint(tmp_path, family, with_tokenizer=False)
    assert json.loads((path / "config.json").read_text())["mlp_bias"] is True
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager").eval()
    assert reference.model.layers[0].mlp.gate_proj.bias is None
    loaded = load_model(path)
    assert not loaded.config.mlp_bias
    assert_parity(loaded.model, reference, token_rows)


def test_a_check_finds_the_mlp_biases_without_reading_them(tmp_path, with_mlp_bias):
    path = save_tiny_checkpoint(tmp_path, "llama", with_tokenizer=False)
    train_tiny_tokenizer().save_pretrained(path)
    assert check_checkpoint(path).mlp_bias
    # The same weights under a config without the field: its biases are not the model's.
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "mlp_bias": False}))
    with pytest.raises(CheckpointError, match="^unexpected tensor "
                                              "'model.layers.0.mlp.down_proj.bias'"):
        check_checkpoint(path)


@pytest.fixture
def biased_llama(tmp_path, with_mlp_bias):
    return load_model(save_tiny_checkpoint(tmp_path, "llama", with_tokenizer=False)).model


def torch_greedy(model, prompt: list[int], count: int) -> list[int]:
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(count):
            tokens.append(int(model(torch.tensor([tokens])).logits[0, -1].argmax()))
    return tokens[len(prompt):]


def test_the_decoder_decodes_a_biased_llama_greedily_as_transformers(biased_llama,
                                                                    with_mlp_bias):
    """Through the decoder as a run drives it: on this CPU its steps read every product
    as rows (``per-layer-kernels``)."""
    prompts, count = [[3, 14, 15, 9, 26], [5, 35, 8, 9, 7, 9, 32, 3, 8, 4, 6]], 8
    decoder = Decoder(biased_llama, num_slots=2, max_len=32, newline_table=np.zeros(512, bool),
                      eos_ids=[])
    assert decoder.layer_weights == "per-layer-kernels"
    slots = decoder.allocate(len(prompts))
    decoder.prefill(slots, prompts)
    step = decoder.sample_steps(slots, problem_keys=jax.random.split(jax.random.key(0), 2),
                                node_ids=[0, 0], params=SamplingParams.make(2),
                                max_tokens=count)
    reference = make_tiny_torch_model("llama")
    for row, prompt in enumerate(prompts):
        assert step.row_tokens(row) == torch_greedy(reference, prompt, count), row
