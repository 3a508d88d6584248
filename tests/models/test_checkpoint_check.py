"""``check_checkpoint``: what loading a checkpoint for a stage would refuse, said in the
loader's words from the config, the weight files' headers and the tokenizer, without
reading a weight."""

from __future__ import annotations

import json
import os

import pytest

from qstar_jax.models import CheckpointError, load_model
from qstar_jax.models.loading import check_checkpoint
from qstar_jax.models.sharded_params import PARAMS_FOLDER
from tests.support.tiny_checkpoints import save_tiny_checkpoint, save_tiny_gguf

LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0"
               "ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 13476839424\n")


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))


def no_weights(path):
    (path / "model.safetensors").unlink()


def truncated_weights(path):
    os.truncate(path / "model.safetensors", os.path.getsize(path / "model.safetensors") // 2)


def lfs_pointer(path):
    (path / "model.safetensors").write_text(LFS_POINTER)


def missing_shard(path):
    sorted(path.glob("model-*-of-*.safetensors"))[1].unlink()


def truncated_bin(path):
    os.truncate(path / "pytorch_model.bin", os.path.getsize(path / "pytorch_model.bin") - 100)


def other_shapes(path):
    edit_config(path, intermediate_size=96)


def mixed_windows(path):
    edit_config(path, model_type="qwen2", use_sliding_window=True, sliding_window=16,
                max_window_layers=1)


def quantized(path):
    edit_config(path, quantization_config={"quant_method": "gptq", "bits": 4})


def broken_tokenizer(path):
    (path / "tokenizer.json").write_text('{"version": "1.0", "trunc')


BREAKAGES = {  # name: (how the tiny llama checkpoint is written, what breaks it)
    "no weights": ({}, no_weights),
    "truncated safetensors": ({}, truncated_weights),
    "git-lfs pointer": ({}, lfs_pointer),
    "missing shard": ({"sharded": True}, missing_shard),
    "truncated pytorch bin": ({"torch_bin": True}, truncated_bin),
    "config of other shapes": ({}, other_shapes),
    "windows mixed over layers": ({}, mixed_windows),
    "gptq config": ({}, quantized),
    "tokenizer that does not parse": ({}, broken_tokenizer),
}


@pytest.mark.parametrize("name", BREAKAGES)
def test_the_check_refuses_what_the_loader_refuses_in_its_words(tmp_path, name):
    # Each passed --check and was refused by the first stage that loaded the model.
    options, breakage = BREAKAGES[name]
    path = save_tiny_checkpoint(tmp_path, "llama", **options)
    breakage(path)
    with pytest.raises(ValueError) as loading:
        load_model(path)
    with pytest.raises(type(loading.value)) as checking:
        check_checkpoint(path)
    assert str(checking.value) == str(loading.value)


@pytest.mark.parametrize("drop, truncate", [("blk.1.ffn_up.weight", False), (None, True)],
                         ids=["missing tensor", "truncated"])
def test_the_check_reads_a_gguf_header_as_the_loader_does(tmp_path, drop, truncate):
    path = save_tiny_gguf(tmp_path / "tiny.gguf", drop=[drop] if drop else ())
    if truncate:
        os.truncate(path, int(os.path.getsize(path) * 0.9))
    with pytest.raises(CheckpointError) as loading:
        load_model(path)
    with pytest.raises(CheckpointError) as checking:
        check_checkpoint(path)
    assert str(checking.value) == str(loading.value)


def test_a_checkpoint_that_loads_passes_with_the_config_it_loads_with(tmp_path):
    for path in (save_tiny_checkpoint(tmp_path / "st", "qwen2", sharded=True),
                 save_tiny_checkpoint(tmp_path / "bin", "mistral_sliding", torch_bin=True)):
        assert check_checkpoint(path, chat_template=True) == load_model(path).config


def test_a_checkpoint_without_a_tokenizer_is_refused_as_a_stage_refuses_it(tmp_path):
    path = save_tiny_checkpoint(tmp_path, "llama", with_tokenizer=False)
    assert load_model(path).tokenizer is None  # the stage's ctx.load refuses it
    with pytest.raises(CheckpointError) as checking:
        check_checkpoint(path)
    assert str(checking.value) == (f"model {path} ships no tokenizer; point the config at a "
                                   "checkpoint with tokenizer files")
    gguf = save_tiny_gguf(tmp_path / "tiny.gguf")  # no vocabulary
    with pytest.raises(CheckpointError, match=f"^model {gguf} ships no tokenizer: the file "
                                              r"holds no vocabulary \(tokenizer.ggml.tokens\)"):
        check_checkpoint(gguf)


def test_a_chat_template_is_asked_for_where_the_policy_prompts_through_one(tmp_path):
    path = save_tiny_checkpoint(tmp_path, "llama")
    (path / "chat_template.jinja").unlink()
    check_checkpoint(path)
    no_template = (f"the tokenizer of {path} has no chat template, and policy.chat_template=true "
                   "prompts through one; set policy.chat_template=false to prompt with plain "
                   "text, or use a checkpoint whose tokenizer_config.json (or "
                   "chat_template.jinja) has one")
    with pytest.raises(CheckpointError) as checking:
        check_checkpoint(path, chat_template=True)
    assert str(checking.value) == no_template
    # A GGUF's vocabulary and template are looked for in its header, not converted.
    vocabulary = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"]}
    plain = save_tiny_gguf(tmp_path / "plain.gguf", extra_keys=vocabulary)
    check_checkpoint(plain)
    with pytest.raises(CheckpointError, match="^the tokenizer of .*plain.gguf has no chat "
                                              "template"):
        check_checkpoint(plain, chat_template=True)
    chat = save_tiny_gguf(tmp_path / "chat.gguf", extra_keys={
        **vocabulary, "tokenizer.chat_template": "{{ messages[0]['content'] }}"})
    check_checkpoint(chat, chat_template=True)


def test_a_model_a_run_trained_is_checked_as_a_run_loads_it(tmp_path):
    # A run loads such a directory from its parameters for meshes, not its weight files.
    path = save_tiny_checkpoint(tmp_path, "llama")
    no_weights(path)
    (path / PARAMS_FOLDER).mkdir()
    assert check_checkpoint(path).num_layers == 2
