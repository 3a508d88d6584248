"""Parity of our loaded models with PyTorch `transformers` on tiny random checkpoints.

Each family runs a batch of two rows in separate cache slots: a 300-token sequence split
over two calls (so the second call reads keys the first one cached, across the sliding
window), and a 40-token row padded with out-of-range positions.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
import transformers

import jax.numpy as jnp

from qstar_jax.models import load_model, weights
from qstar_jax.models.config import ModelConfig
from tests.models.model_runs import empty_cache, forward
from tests.support.tiny_checkpoints import (FAMILIES, SLIDING_WINDOW, VOCAB_SIZE,
                                            make_tiny_torch_model, save_tiny_checkpoint,
                                            save_tiny_gguf)

LONG, SHORT, CHUNK = 300, 40, 150  # the long row goes in two equal calls: one compile
MAX_LEN = 320
FLOAT32_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def token_rows():
    rng = np.random.default_rng(1234)
    return rng.integers(0, VOCAB_SIZE, LONG).tolist(), rng.integers(0, VOCAB_SIZE, SHORT).tolist()


def torch_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def our_logits(model, long_row, short_row):
    """(logits [LONG, V] of the long row over two calls, logits [SHORT, V] of the short row)."""
    pad = MAX_LEN  # a position past the cache: the write is dropped, the output ignored
    cache = empty_cache(model, slots=2, max_len=MAX_LEN)
    first, cache = forward(model, [long_row[:CHUNK], short_row + [0] * (CHUNK - SHORT)],
                           [list(range(CHUNK)), list(range(SHORT)) + [pad] * (CHUNK - SHORT)],
                           [0, 1], cache)
    second, _ = forward(model, [long_row[CHUNK:], [0] * CHUNK],
                        [list(range(CHUNK, LONG)), [pad] * CHUNK], [0, 1], cache)
    return np.concatenate([first[0], second[0]]), first[1, :SHORT]


def assert_parity(model, reference, token_rows, tolerance=FLOAT32_TOLERANCE):
    long_row, short_row = token_rows
    got_long, got_short = our_logits(model, long_row, short_row)
    np.testing.assert_allclose(got_long, torch_logits(reference, long_row), rtol=0, atol=tolerance)
    np.testing.assert_allclose(got_short, torch_logits(reference, short_row), rtol=0,
                               atol=tolerance)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_logits_parity(tmp_path, token_rows, family):
    loaded = load_model(save_tiny_checkpoint(tmp_path, family))
    assert_parity(loaded.model, make_tiny_torch_model(family), token_rows)


def test_tiny_families_exercise_their_feature(tmp_path, token_rows):
    """Guards the parity test against passing because a feature is silently off."""
    configs = {f: load_model(save_tiny_checkpoint(tmp_path / f, f, with_tokenizer=False)).config
               for f in FAMILIES}
    assert configs["llama3_rope"].rope_scaling is not None
    assert not np.allclose(configs["llama3_rope"].rope_inv_freq(), configs["llama"].rope_inv_freq())
    np.testing.assert_allclose(configs["linear_rope"].rope_inv_freq() * 4,
                               configs["llama"].rope_inv_freq(), rtol=1e-6)
    yarn = configs["qwen2_yarn"]
    inv_freq, plain = yarn.rope_inv_freq(), configs["llama"].rope_inv_freq()
    # The fastest pairs kept, the slowest divided by the factor, some in between.
    assert inv_freq[0] == plain[0] and np.isclose(inv_freq[-1] * 4, plain[-1], rtol=1e-6)
    assert ((inv_freq < plain) & (inv_freq * 4 > plain * (1 + 1e-6))).any()
    assert yarn.attention_scale == pytest.approx(16 ** -0.5 * (0.1 * np.log(4) + 1) ** 2)
    assert configs["mistral_sliding"].sliding_windows == (SLIDING_WINDOW, SLIDING_WINDOW)
    assert configs["qwen2"].attention_bias and configs["qwen2"].tie_word_embeddings
    assert not configs["qwen2"].attention_out_bias
    # Past the window, full attention gives different logits than the windowed reference.
    windowed = make_tiny_torch_model("mistral_sliding")
    full = copy.deepcopy(windowed)
    full.config.sliding_window = None
    long_row = token_rows[0]
    gap = np.abs(torch_logits(full, long_row) - torch_logits(windowed, long_row))
    assert gap[:SLIDING_WINDOW].max() < FLOAT32_TOLERANCE
    assert gap[SLIDING_WINDOW + 1:].max() > 0.1


@pytest.mark.parametrize("keys", [
    {},  # Qwen2.5's: 0.1 ln factor + 1
    {"mscale": 0.707, "mscale_all_dim": 0.707},  # DeepSeek-V2's: the two cancel, 1
    {"mscale": 1.0, "mscale_all_dim": 0.5},  # their ratio, numerator mscale's
    {"mscale": 1.0},  # alone it changes nothing: Qwen2.5's again
    {"truncate": False},  # the ramp's ends where they fall, not rounded out to whole pairs
    {"beta_fast": 16, "beta_slow": 2},  # a narrower ramp than the default 32 and 1
    {"factor": None},  # the two context lengths' ratio, 256 / 64
    {"attention_factor": 1.2, "mscale": 1.0, "mscale_all_dim": 0.5},  # given: it wins
], ids=["factor", "equal mscales", "unequal mscales", "mscale alone", "untruncated",
        "betas", "no factor", "attention factor"])
def test_yarn_frequencies_and_attention_factor_are_transformers(keys):
    """Our YaRN reading of an HF config against transformers' own (``ROPE_INIT_FUNCTIONS``):
    the inverse frequencies and the attention factor, with DeepSeek's ``mscale`` and
    ``mscale_all_dim`` where a config gives both and no attention factor."""
    from transformers import Qwen2Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from qstar_jax.models.config import ModelConfig
    hf = Qwen2Config(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=256,
                     rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                      "original_max_position_embeddings": 64, **keys})
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](hf, "cpu")
    ours = ModelConfig.from_hf(hf.to_dict())
    np.testing.assert_allclose(ours.rope_inv_freq(), inv_freq.numpy(), rtol=1e-6)
    assert ours.rope_scaling.attention_factor == pytest.approx(attention_factor, rel=1e-12)
    assert ours.attention_scale == pytest.approx(16 ** -0.5 * attention_factor ** 2)


@pytest.mark.parametrize("inside,top_level,original", [
    (64, None, 64), (64, 128, 128), (None, None, 256)],
    ids=["in rope_parameters", "top-level wins", "max_position_embeddings"])
def test_llama3_frequencies_and_their_original_context_are_transformers(inside, top_level,
                                                                         original):
    """Our Llama-3 reading of a raw config.json against transformers' own: the original
    context the wavelengths are measured against is a top-level
    original_max_position_embeddings where there is one (Phi-3's layout), else
    rope_parameters', else max_position_embeddings (256)."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from qstar_jax.models.config import ModelConfig
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    raw = dict(model_type="llama", vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=256,
               rope_parameters={**rope, **({} if inside is None else {
                   "original_max_position_embeddings": inside})},
               **({} if top_level is None else {"original_max_position_embeddings": top_level}))
    ours = ModelConfig.from_hf(raw)  # first: LlamaConfig writes into the dicts it is given
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(**copy.deepcopy(raw)), "cpu")
    assert ours.rope_scaling.original_max_position_embeddings == original
    np.testing.assert_allclose(ours.rope_inv_freq(), inv_freq.numpy(), rtol=1e-6)


def test_a_mistral_config_that_sets_attention_bias_runs_as_transformers_runs_it(tmp_path,
                                                                              token_rows):
    # transformers' Mistral ignores the field (no bias anywhere); read as Llama's, it asked
    # for bias tensors the checkpoint does not hold, and the load was refused.
    path = save_tiny_checkpoint(tmp_path, "mistral_sliding", with_tokenizer=False)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "attention_bias": True}))
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager").eval()
    assert reference.model.layers[0].self_attn.q_proj.bias is None
    assert_parity(load_model(path).model, reference, token_rows)


def test_sharded_checkpoint_parity(tmp_path, token_rows):
    path = save_tiny_checkpoint(tmp_path, "qwen2", sharded=True, with_tokenizer=False)
    assert len(list(path.glob("model-*-of-*.safetensors"))) > 1
    loaded = load_model(path)
    assert loaded.tokenizer is None
    assert_parity(loaded.model, make_tiny_torch_model("qwen2"), token_rows)


def test_a_large_load_shows_its_progress_tensor_by_tensor(tmp_path, monkeypatch, capsys):
    path = save_tiny_checkpoint(tmp_path, "llama", with_tokenizer=False)
    load_model(path)
    assert "reading weights" not in capsys.readouterr().err  # too small for a bar
    monkeypatch.setattr(weights, "PROGRESS_FROM_VALUES", 0)
    load_model(path)
    bar = capsys.readouterr().err
    # 2 layers of 9 tensors, the embedding, the final norm and the head
    assert "reading weights: 100%" in bar and "21/21" in bar


@pytest.mark.parametrize("sharded", [False, True], ids=["one file", "sharded"])
def test_pytorch_bin_checkpoint_parity(tmp_path, token_rows, sharded):
    """transformers' pre-safetensors format, read without torch; Qwen2's tied embedding
    is stored once and read for both."""
    path = save_tiny_checkpoint(tmp_path, "qwen2", sharded=sharded, torch_bin=True,
                                with_tokenizer=False)
    assert not list(path.glob("*.safetensors"))
    files = [p.name for p in path.glob("pytorch_model*.bin")]
    if sharded:
        assert len(files) > 1 and (path / "pytorch_model.bin.index.json").is_file()
    else:
        assert files == ["pytorch_model.bin"]
    assert_parity(load_model(path).model, make_tiny_torch_model("qwen2"), token_rows)


@pytest.mark.parametrize("torch_bin", [False, True], ids=["safetensors", "pytorch .bin"])
def test_bfloat16_checkpoint_parity(tmp_path, token_rows, torch_bin):
    path = save_tiny_checkpoint(tmp_path, "llama", dtype="bfloat16", with_tokenizer=False,
                                torch_bin=torch_bin)
    reference = make_tiny_torch_model("llama")
    with torch.no_grad():  # round the weights only: RoPE buffers stay float32, as on reload
        for param in reference.parameters():
            param.copy_(param.to(torch.bfloat16))
    # Upcast on load: the bf16 values are exact in float32, so the float32 bound holds.
    upcast = load_model(path, dtype=jnp.float32)
    assert upcast.model.embed_tokens.embedding.get_value().dtype == jnp.float32
    assert_parity(upcast.model, reference, token_rows)
    # Computing in bf16 rounds activations to 8 bits of mantissa: on logits of size ~4 the
    # drift over two layers measured 0.043, so 0.1 holds it and still catches a wrong weight.
    in_bf16 = load_model(path, dtype=jnp.bfloat16)
    assert in_bf16.model.embed_tokens.embedding.get_value().dtype == jnp.bfloat16
    assert_parity(in_bf16.model, reference, token_rows, tolerance=0.1)


@pytest.mark.parametrize("family", ["llama", "linear_rope", "llama3_rope", "qwen2",
                                    "qwen2_yarn"])
def test_tiny_gguf_parity(tmp_path, token_rows, family):
    """An F32 GGUF with llama.cpp's Q/K row order (and, for linear_rope, llama.cpp's
    scaling type and factor; for llama3_rope, its rope_freqs tensor; qwen2 with its q/k/v
    biases, rows as transformers holds them and the head tied; qwen2_yarn with llama.cpp's
    YaRN keys) loads back to the original model."""
    loaded = load_model(save_tiny_gguf(tmp_path / "tiny.gguf", family=family))
    if family == "qwen2_yarn":
        assert loaded.config.attention_scale > 1 / np.sqrt(loaded.config.head_dim)
    if family == "llama3_rope":  # every frequency region of the rule: kept, blended, divided
        factors = np.array(loaded.config.rope_scaling.factors)
        assert factors.min() == 1 and factors.max() == pytest.approx(8) and np.any(
            (factors > 1) & (factors < 8))
    assert loaded.tokenizer is None  # the file has no vocabulary
    # output.weight is present but for the qwen2 family's tied head
    assert loaded.config.tie_word_embeddings == (family == "qwen2")
    assert loaded.config.attention_bias == family.startswith("qwen2")
    # Every field the metadata carries (epsilon, RoPE base, context, token ids...) as the
    # HF config has it; llama3_rope's scaling is the per-frequency factors, checked above.
    hf = ModelConfig.from_hf(make_tiny_torch_model(family).config.to_dict())
    if family == "llama3_rope":
        hf = dataclasses.replace(hf, rope_scaling=loaded.config.rope_scaling)
    assert loaded.config.rms_norm_eps == pytest.approx(hf.rms_norm_eps, rel=1e-6)  # float32
    assert loaded.config == dataclasses.replace(hf, rms_norm_eps=loaded.config.rms_norm_eps)
    assert_parity(loaded.model, make_tiny_torch_model(family), token_rows)
