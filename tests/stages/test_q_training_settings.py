"""What stage train_q hands Q̂'s training: the head's shape from q_train and the policy's
width, and optimiser settings sized by the number of labels; and the summary it writes."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from qstar_jax.config import load_config
from qstar_jax.qvalue.head import QHeadConfig
from qstar_jax.qvalue.train import TrainConfig, TrainResult
from qstar_jax.stages import train_q
from qstar_jax.stages.train_q import _write_summary, head_config, train_config


def context(*overrides, hidden_size=32):
    return SimpleNamespace(config=load_config(None, list(overrides)),
                           policy=SimpleNamespace(config=SimpleNamespace(hidden_size=hidden_size)))


def test_the_head_reads_what_q_train_asks_at_the_policys_width():
    assert head_config(context()) == QHeadConfig(hidden_size=32, mlp_widths=(32,),
                                                 step_logprob=True, second_opinion=True,
                                                 output="sigmoid")
    assert head_config(context("q_train.loss=mse", "q_train.hidden_layers=2",
                               "q_train.step_logprob=false", "q_train.second_opinion=null",
                               hidden_size=48)) == QHeadConfig(
        hidden_size=48, mlp_widths=(48, 48), step_logprob=False, second_opinion=False,
        output="raw")


@pytest.fixture(scope="module")
def settings():
    return context("q_train.loss=mse", "q_train.learning_rate=0.01", "q_train.patience=7",
                   "q_train.max_epochs=30", "seed=5")


@pytest.mark.parametrize("examples, holdout, batch_size, steps_per_epoch, warmup", [
    (1000, 0.1, 256, 4, 4),  # 900 to train on: 4 batches of 256 an epoch
    (100_000, 0.1, 256, 352, 100),  # 90 000 to train on: the warmup is held to 100 steps
    (10, 0.1, 9, 1, 1),  # one example held out; the other 9 are one batch
    (9, 0.0, 9, 1, 1),  # too few to hold any out
])
def test_training_is_sized_by_the_labels(settings, examples, holdout, batch_size,
                                         steps_per_epoch, warmup):
    assert train_config(settings, examples) == TrainConfig(
        loss="mse", learning_rate=0.01, max_steps=30 * steps_per_epoch, batch_size=batch_size,
        heldout_fraction=holdout, eval_every=steps_per_epoch, patience=7,
        checkpoint_every=steps_per_epoch, warmup_steps=warmup, seed=5)


def test_a_single_step_of_training_has_no_warmup():
    assert train_config(context("q_train.max_epochs=1"), 9).warmup_steps == 0


def test_the_summary_counts_labels_above_one_half_as_positive(tmp_path, monkeypatch):
    result = TrainResult(steps=12, stopped_early=True, best_step=8, best_heldout_loss=0.25,
                         heldout_losses=((4, 0.5), (8, 0.25)), constant_heldout_loss=0.5,
                         heldout_auc=0.75)
    _write_summary(tmp_path / "q_training.json", result,
                   np.array([0.5, 0.75, 0.25, 1.0], np.float32))
    assert json.loads((tmp_path / "q_training.json").read_text()) == {
        "steps": 12, "stopped_early": True, "best_heldout_loss": 0.25,
        "constant_heldout_loss": 0.5, "heldout_auc": 0.75, "examples": 4,
        "positive_fraction": 0.5}
    monkeypatch.setattr(train_q, "is_writer", lambda: False)  # another process
    _write_summary(tmp_path / "other.json", result, np.ones(2, np.float32))
    assert not (tmp_path / "other.json").exists()
