"""A model written by ``save_hf_checkpoint`` is the same model to transformers and to our
loader: every setting a from-scratch policy may differ from the defaults in (RoPE base,
norm epsilon, a head size apart from hidden / heads, attention and MLP biases, an untied
head) reaches the config, every tensor its HF name and layout."""

import errno

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from jax.sharding import NamedSharding
from safetensors import SafetensorError

from qstar_jax.models import hf_export, load_model
from qstar_jax.models.char_tokenizer import build_char_tokenizer
from qstar_jax.models.config import ModelConfig
from qstar_jax.models.hf_export import save_hf_checkpoint
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.sharded_params import PARAMS_FOLDER, save_params
from qstar_jax.parallel import make_mesh

TOKENS = [[1, 5, 9, 33, 2, 17, 40, 8, 8, 3, 26, 11]]


def _random_model(tied: bool) -> LlamaModel:
    # head_dim 12 is not hidden 40 / 4 heads; an epsilon and a RoPE base far from the
    # defaults change the logits by far more than the tolerance; every projection is
    # non-square, so a transposed one cannot load.
    cfg = ModelConfig(model_type="llama", vocab_size=48, hidden_size=40, intermediate_size=72,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=12,
                      rms_norm_eps=0.05, rope_theta=30.0, max_position_embeddings=256,
                      tie_word_embeddings=tied, attention_bias=True,
                      attention_out_bias=True, mlp_bias=True, bos_token_id=1,
                      eos_token_ids=(2, 3))
    model = LlamaModel(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(7)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = var.get_value().shape
        noise = rng.normal(0, 0.3, shape).astype(np.float32)
        var.set_value(jnp.asarray(1 + noise if "norm" in path[-2] else noise))
    return model


@pytest.mark.parametrize("tied", [False, True], ids=["untied head", "tied head"])
def test_an_exported_model_is_the_same_model_to_transformers_and_to_our_loader(tmp_path,
                                                                               tied):
    model = _random_model(tied)
    ours = np.asarray(model.logits(model.forward_sequence(jnp.asarray(TOKENS))))[0]
    save_hf_checkpoint(model, build_char_tokenizer("abc\n"), tmp_path)

    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert theirs.config.eos_token_id == [2, 3] and theirs.config.bos_token_id == 1
    with torch.no_grad():
        expected = theirs(torch.tensor(TOKENS)).logits[0].numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)

    loaded = load_model(tmp_path)
    assert loaded.config == model.config
    back = loaded.model
    np.testing.assert_allclose(np.asarray(back.logits(back.forward_sequence(
        jnp.asarray(TOKENS))))[0], ours, rtol=0, atol=1e-5)


def test_a_trained_policy_loads_onto_a_mesh_from_its_sharded_params_in_the_asked_dtype(
        tmp_path):
    """A run's policy directory holds the HF export and, in PARAMS_FOLDER, the parameters
    every process wrote: given a mesh, ``load_model`` reads the latter (here other weights
    than the export's), cast to bfloat16 and laid out on the mesh."""
    exported = _random_model(tied=False)
    save_hf_checkpoint(exported, build_char_tokenizer("abc\n"), tmp_path)
    trained = LlamaModel(exported.config, rngs=nnx.Rngs(1))
    save_params(trained, tmp_path / PARAMS_FOLDER)
    mesh = make_mesh(1, 1)
    loaded = load_model(tmp_path, dtype=jnp.bfloat16, mesh=mesh)
    assert loaded.config == exported.config and loaded.tokenizer is not None

    def params(model):
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))
    got = params(loaded.model)
    assert all(x.dtype == jnp.bfloat16 and isinstance(x.sharding, NamedSharding)
               and x.sharding.mesh == mesh for x in jax.tree.leaves(got))
    expected = jax.tree.map(lambda x: np.asarray(x.astype(jnp.bfloat16)), params(trained))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, got), expected)


@pytest.mark.parametrize("writer", ["weights", "tokenizer"])
def test_an_export_on_a_full_disk_is_an_os_error(tmp_path, monkeypatch, writer):
    """safetensors and tokenizers raise their own errors for a full disk (not OSError),
    which run reported as a traceback, exit 1, where a full disk is one line, exit 2."""
    tokenizer = build_char_tokenizer("abc\n")

    def full(*args, **kwargs):
        raise (SafetensorError if writer == "weights" else Exception)(
            "No space left on device (os error 28)")

    if writer == "weights":
        monkeypatch.setattr(hf_export, "save_file", full)
    else:
        monkeypatch.setattr(tokenizer, "save_pretrained", full)
    with pytest.raises(OSError) as raised:
        save_hf_checkpoint(_random_model(tied=False), tokenizer, tmp_path)
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(tmp_path))
