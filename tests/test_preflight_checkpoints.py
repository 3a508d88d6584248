"""The run's checks before any stage (``--check``) refuse a checkpoint the config names
that a stage's load would refuse: its weights, its shapes, its tokenizer and chat
template, each read without a weight."""

from __future__ import annotations

import pytest

from qstar_jax import run
from qstar_jax.config import ConfigError
from qstar_jax.config_loading import load_config
from qstar_jax.preflight import preflight
from tests.support.tiny_checkpoints import save_tiny_checkpoint

# A real-data task whose checkpoints are the test's (gsm8k's splits come from the hub,
# which the checks leave to the stages).
TASK = ["task.name=gsm8k", "search.utility=zero", "label.live_states_only=false",
        "label.method=best_of_rollouts", "q_train.second_opinion=null"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture
def weightless(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "weightless", "llama")
    (path / "model.safetensors").unlink()
    return path


@pytest.mark.parametrize("key, overrides", [
    ("policy.source", []),
    ("search.prm_model", ["search.utility=prm"]),
    ("label.stronger_model", ["label.method=stronger_model"]),
    ("q_train.separate_model", ["q_train.backbone=separate"]),
    ("q_train.second_opinion", []),
])
def test_each_checkpoint_the_config_names_is_checked_for_its_weights(tiny, weightless, key,
                                                                     overrides):
    # A stronger model without weights passed, and collect ran before label refused it.
    config = load_config(None, [*TASK, f"policy.source={tiny}", *overrides,
                                f"{key}={weightless}"])
    with pytest.raises(ConfigError, match=f"^{key}: {weightless} has no weights: none of "
                                          "model.safetensors.index.json, "):
        preflight(config)


def test_the_command_s_check_refuses_a_stronger_model_without_weights(tiny, weightless,
                                                                      capsys):
    assert run.main(["--check", *TASK, f"policy.source={tiny}", "stages=[collect,label]",
                     "label.method=stronger_model", f"label.stronger_model={weightless}"]) == 2
    assert capsys.readouterr().err.startswith(
        f"config error: label.stronger_model: {weightless} has no weights")


def test_a_policy_prompted_through_a_chat_template_needs_a_tokenizer_with_one(tmp_path, tiny):
    path = save_tiny_checkpoint(tmp_path / "plain", "llama")
    (path / "chat_template.jinja").unlink()
    preflight(load_config(None, [*TASK, f"policy.source={path}"]))
    with pytest.raises(ConfigError) as raised:
        preflight(load_config(None, [*TASK, f"policy.source={path}", "policy.chat_template=true"]))
    assert str(raised.value) == (
        f"policy.source: the tokenizer of {path} has no chat template, and "
        "policy.chat_template=true prompts through one; set policy.chat_template=false to "
        "prompt with plain text, or use a checkpoint whose tokenizer_config.json (or "
        "chat_template.jinja) has one")
    preflight(load_config(None, [*TASK, f"policy.source={tiny}", "policy.chat_template=true"]))


def test_a_policy_without_a_tokenizer_is_refused(tmp_path):
    path = save_tiny_checkpoint(tmp_path, "llama", with_tokenizer=False)
    with pytest.raises(ConfigError) as raised:
        preflight(load_config(None, [*TASK, f"policy.source={path}"]))
    assert str(raised.value) == (f"policy.source: model {path} ships no tokenizer; point the "
                                 "config at a checkpoint with tokenizer files")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_a_file_of_a_checkpoint_directory_is_told_to_be_the_directory(tiny, name):
    # It was called a GGUF file that is corrupt or truncated.
    with pytest.raises(ConfigError) as raised:
        preflight(load_config(None, [*TASK, f"policy.source={tiny / name}"]))
    assert str(raised.value) == (
        f"policy.source: {tiny / name} is neither a checkpoint directory nor a .gguf file; "
        f"pass an HF checkpoint directory (here {tiny}, which holds this file) or a .gguf file")
