"""What stage train_q hands Q̂'s training: the head's shape from q_train and the policy's
width, and optimiser settings sized by the number of labels."""

from types import SimpleNamespace

import pytest

from qstar_jax.config import load_config
from qstar_jax.qvalue.head import QHeadConfig
from qstar_jax.qvalue.train import TrainConfig
from qstar_jax.stages.train_q import head_config, train_config


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
