"""Policy training resumes from its mid-training checkpoints (``checkpoint_dir``): a run
killed mid-way and started again ends with the parameters and log of a run never killed,
bit for bit; a damaged last step is passed over for the one before; a checkpoint of other
settings or data is not resumed from; train_policy deletes the checkpoints once the
policy is saved."""

import dataclasses
import errno
import json
import logging
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from qstar_jax.config import ConfigError
from qstar_jax.config_loading import load_config
from qstar_jax.models import lm_training
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.lm_training import (LMTrainingConfig, pack_examples, pack_value_rows,
                                          train_causal_lm)
from qstar_jax.parallel import make_mesh
from qstar_jax.stages import train_policy
from qstar_jax.stages.context import RunContext
from tests.models.test_sequence_forward import NEXT_DIGIT, TINY_LM
from tests.support.step_traces import count_step_traces

TOKENS, MASK = pack_examples(NEXT_DIGIT, pad_id=0, length=4)
# The joint value head's rows: whether token 2 is token 1 plus one.
VALUE_ROWS = pack_value_rows([([1, 3 + d, 3 + e], [(2, float(e == (d + 1) % 8))])
                              for d in range(8) for e in range(8)], pad_id=0, length=4)
# 61 steps log the losses of steps 0, 50 and 60: the log a killed run saved must be read back.
CONFIG = LMTrainingConfig(steps=61, batch_size=4, learning_rate=3e-3, warmup_steps=5,
                          checkpoint_every=20)
JOINT = LMTrainingConfig(steps=61, batch_size=4, learning_rate=3e-3, warmup_steps=5,
                         checkpoint_every=20, value_weight=1.0, value_batch_size=8)


def params_of(model):
    return jax.tree.map(np.asarray, nnx.state(model, nnx.Param))


def assert_bit_identical(ours, theirs):
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def train(config, tokens=TOKENS, *, joint=False, **kw):
    """(params, log) of a model drawn from Rngs(0) and trained under ``config``."""
    model = LlamaModel(TINY_LM, rngs=nnx.Rngs(0))
    log = train_causal_lm(model, tokens, MASK, config,
                          value_rows=VALUE_ROWS if joint else None, **kw)
    return params_of(model), log


def kill_at(monkeypatch, step: int, bars: list | None = None) -> None:
    """Training is interrupted (KeyboardInterrupt) as step ``step`` begins (steps before
    it done, it not); the keyword arguments of each progress bar go to ``bars``."""
    real = lm_training.tqdm

    class Killing(real):
        def __init__(self, *args, **kwargs):
            if bars is not None:
                bars.append(kwargs)
            super().__init__(*args, **kwargs)

        def __iter__(self):
            for at in super().__iter__():
                if at == step:
                    raise KeyboardInterrupt
                yield at

    monkeypatch.setattr(lm_training, "tqdm", Killing)


def bars_of(monkeypatch) -> list:
    """The keyword arguments of each progress bar training opens from now on."""
    bars = []
    kill_at(monkeypatch, -1, bars)
    return bars


@pytest.fixture(scope="module")
def uninterrupted():
    """(params, log) of runs never killed (nor checkpointed), with and without the head."""
    return {False: train(CONFIG), True: train(JOINT, joint=True)}


def steps_in(folder):
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


@pytest.mark.parametrize("joint", [False, True], ids=["lm", "joint_value_head"])
def test_a_killed_run_resumes_from_its_last_checkpoint_to_the_same_result(
        tmp_path, monkeypatch, capsys, uninterrupted, joint):
    """Killed at step 47, the run has saved steps 20 and 40; started again it resumes at
    step 40 (its progress bar starting there, one line saying so), redoes steps 40-46
    with the batches the generator drew for them, and ends with the params and log (with
    step 0's loss, logged before the kill) of a run never killed. A resumed run may save
    at other intervals: how often changes nothing it computes."""
    config = JOINT if joint else CONFIG
    kill_at(monkeypatch, 47)
    with pytest.raises(KeyboardInterrupt):
        train(config, joint=joint, checkpoint_dir=tmp_path)
    assert steps_in(tmp_path) == [20, 40]
    monkeypatch.undo()
    capsys.readouterr()
    bars = bars_of(monkeypatch)
    params, log = train(dataclasses.replace(config, checkpoint_every=7), joint=joint,
                        checkpoint_dir=tmp_path)
    assert f"[qstar] train policy: resuming at step 40 of 61 from {tmp_path}" in (
        capsys.readouterr().out)
    assert [(bar["initial"], bar["total"]) for bar in bars] == [(40, 61)]
    want_params, want_log = uninterrupted[joint]
    assert log == want_log and len(log["loss"]) == 3
    assert list(log) == (["loss", "value_loss"] if joint else ["loss"])
    assert json.dumps(log) == json.dumps(want_log)  # training_log.json, byte for byte
    assert_bit_identical(params, want_params)
    assert steps_in(tmp_path) == [56, 61]  # and after the last step


def cut(files) -> None:
    """Damage each of ``files`` as a disk can: cut it short."""
    for file in files:
        with open(file, "r+b") as f:
            f.truncate(5)


def test_a_damaged_last_step_is_passed_over_for_the_one_before(tmp_path, monkeypatch,
                                                               uninterrupted, caplog):
    kill_at(monkeypatch, 47)
    with pytest.raises(KeyboardInterrupt):
        train(CONFIG, checkpoint_dir=tmp_path)
    monkeypatch.undo()
    cut([tmp_path / "40" / "progress" / "metadata"])
    with caplog.at_level(logging.WARNING):
        params, log = train(CONFIG, checkpoint_dir=tmp_path)
    assert f"{tmp_path}: passing over the damaged step 40: " in caplog.text
    assert "restored step 20" in caplog.text
    assert log == uninterrupted[False][1]
    assert_bit_identical(params, uninterrupted[False][0])


def test_where_no_step_reads_back_training_starts_over(tmp_path, monkeypatch, uninterrupted,
                                                       caplog):
    kill_at(monkeypatch, 47)
    with pytest.raises(KeyboardInterrupt):
        train(CONFIG, checkpoint_dir=tmp_path)
    monkeypatch.undo()
    cut([tmp_path / "40" / "meta" / "metadata", tmp_path / "20" / "progress" / "metadata"])
    bars = bars_of(monkeypatch)
    with caplog.at_level(logging.WARNING):
        params, log = train(CONFIG, checkpoint_dir=tmp_path)
    assert f"cannot read the checkpoint in {tmp_path} (step 40: " in caplog.text
    assert "it is damaged; training starts over from step 0" in caplog.text
    assert bars[0]["initial"] == 0
    assert log == uninterrupted[False][1]
    assert_bit_identical(params, uninterrupted[False][0])
    assert steps_in(tmp_path) == [60, 61]  # the damaged steps replaced


OTHER_TOKENS = TOKENS.copy()
OTHER_TOKENS[0, 2] = 5  # one token of one row


@pytest.mark.parametrize("other, differs", [
    ({"config": dataclasses.replace(CONFIG, learning_rate=1e-3)},
     "settings.learning_rate 0.001 there, 0.003 here"),
    ({"tokens": OTHER_TOKENS}, "data.tokens"),
    ({"config": CONFIG, "model_seed": 1}, "initial_params"),
], ids=["learning_rate", "data", "initial_model"])
def test_a_checkpoint_of_other_training_is_not_resumed_from(tmp_path, monkeypatch,
                                                            uninterrupted, caplog, other,
                                                            differs):
    """A run killed under another learning rate, on other token rows or from another
    initial model leaves a checkpoint this run does not resume from: it trains from step
    0 (a warning names what differs) to the result of a run never killed."""
    kill_at(monkeypatch, 47)
    model = LlamaModel(TINY_LM, rngs=nnx.Rngs(other.get("model_seed", 0)))
    with pytest.raises(KeyboardInterrupt):
        train_causal_lm(model, other.get("tokens", TOKENS), MASK, other.get("config", CONFIG),
                        checkpoint_dir=tmp_path)
    monkeypatch.undo()
    bars = bars_of(monkeypatch)
    with caplog.at_level(logging.WARNING):
        params, log = train(CONFIG, checkpoint_dir=tmp_path)
    assert f"{tmp_path}: written for other training (" in caplog.text
    assert differs in caplog.text and "training starts over from step 0" in caplog.text
    assert bars[0]["initial"] == 0
    assert log == uninterrupted[False][1]
    assert_bit_identical(params, uninterrupted[False][0])


def test_a_run_resumed_on_a_mesh_restores_replicated_params_and_traces_its_step_once(
        tmp_path, monkeypatch):
    """On a mesh the restored params and optimizer state are laid out as the live ones
    (replicated), so the resumed run's step reuses one program, and ends as a run on the
    mesh never killed."""
    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    want_params, want_log = train(CONFIG, mesh=mesh)
    kill_at(monkeypatch, 47)
    with pytest.raises(KeyboardInterrupt):
        train(CONFIG, mesh=mesh, checkpoint_dir=tmp_path)
    monkeypatch.undo()
    bars = bars_of(monkeypatch)
    traced = count_step_traces(monkeypatch, lm_training)
    updated = []
    real_update = nnx.update
    monkeypatch.setattr(lm_training.nnx, "update",
                        lambda model, state: updated.append(state) or real_update(model, state))
    params, log = train(CONFIG, mesh=mesh, checkpoint_dir=tmp_path)
    assert bars[0]["initial"] == 40 and traced == [mesh]
    assert {leaf.sharding.spec for leaf in jax.tree.leaves(updated[0])} == {
        jax.sharding.PartitionSpec()}
    assert {leaf.sharding.mesh for leaf in jax.tree.leaves(updated[0])} == {mesh}
    assert log == want_log
    assert_bit_identical(params, want_params)


def test_a_disk_that_fills_during_a_checkpoint_save_raises_the_oserror_a_run_reports(
        tmp_path, monkeypatch):
    """Orbax raises a full disk as a ValueError; training raises it as the OSError the run
    reports in one line (exit 2: resumed once there is room)."""
    def full(*args, **kwargs):
        raise ValueError(f'RESOURCE_EXHAUSTED: Error writing local file "{tmp_path}/20": '
                         "No space left on device [os_error_code='28']")
    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    with pytest.raises(OSError) as raised:
        train(CONFIG, checkpoint_dir=tmp_path)
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(tmp_path))


def test_checkpoint_every_must_be_positive():
    with pytest.raises(ValueError, match="checkpoint_every must be at least 1, got 0"):
        LMTrainingConfig(steps=1, batch_size=1, learning_rate=1e-3, warmup_steps=0,
                         checkpoint_every=0)
    with pytest.raises(ConfigError, match="^policy_training.checkpoint_every: must be >= 1, "
                                          "got 0$"):
        load_config(None, ["policy_training.checkpoint_every=0"])
    assert load_config(None, []).policy_training.checkpoint_every == 200


# A tiny arithmetic policy, as tests/stages/test_arithmetic_run.py trains one.
TINY_POLICY = ["task.name=arithmetic", "policy_training.steps=12",
               "policy_training.train_problems=20", "policy_training.hidden_size=32",
               "policy_training.intermediate_size=64", "policy_training.num_layers=1",
               "policy_training.num_heads=2", "policy_training.num_kv_heads=1",
               "policy_training.batch_size=4", "policy_training.warmup_steps=2",
               "policy_training.checkpoint_every=4", "decode.max_len=96",
               "q_train.second_opinion=null", "task.options={config: {operations: [2, 3]}}"]


def policy_files(folder):
    """The saved policy's training log and weights (bytes)."""
    return ((folder / "training_log.json").read_text(),
            (folder / "model.safetensors").read_bytes())


def test_train_policy_resumes_a_killed_training_and_deletes_its_checkpoints_once_saved(
        tmp_path, monkeypatch, capsys):
    """Killed at step 9, train_policy leaves its checkpoints (steps 4 and 8) in
    policy.training and no policy; run again it resumes at step 8, saves the policy a run
    never killed saves, and deletes the checkpoints, which were there until it was saved;
    a policy already there has the checkpoints a kill left beside it deleted."""
    config = load_config(None, TINY_POLICY)
    whole = tmp_path / "whole"
    train_policy.train_from_scratch(RunContext(config=config, out=whole), whole / "policy")
    assert not (whole / "policy.training").exists()

    out = tmp_path / "killed"
    ctx = RunContext(config=config, out=out)
    target = out / "policy"
    kill_at(monkeypatch, 9)
    with pytest.raises(KeyboardInterrupt):
        train_policy.train_from_scratch(ctx, target)
    monkeypatch.undo()
    assert steps_in(out / "policy.training") == [4, 8] and not target.exists()

    at_save = []
    real_save = train_policy.save_policy

    def save(model, tokenizer, log, into):
        at_save.append(steps_in(out / "policy.training"))
        real_save(model, tokenizer, log, into)
    monkeypatch.setattr(train_policy, "save_policy", save)
    capsys.readouterr()
    train_policy.train_from_scratch(ctx, target)
    assert "[qstar] train policy: resuming at step 8 of 12" in capsys.readouterr().out
    assert at_save == [[8, 12]]
    assert not (out / "policy.training").exists()
    assert policy_files(target) == policy_files(whole / "policy")

    shutil.copytree(target, out / "policy.training")  # as a kill before the deletion left
    train_policy.train_from_scratch(ctx, target)
    assert not (out / "policy.training").exists() and (target / "config.json").exists()
