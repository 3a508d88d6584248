"""What stage train_q hands Q̂'s training: the head's shape from q_train and the policy's
width, and optimiser settings sized by the number of labels; and the summary it writes."""

import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from flax import nnx

from qstar_jax.config import ConfigError
from qstar_jax.config_loading import load_config
from qstar_jax.models.loading import LoadedModel
from qstar_jax.outputs import durable
from qstar_jax.qvalue.checkpoint import BackboneIdentity
from qstar_jax.qvalue.dataset import LabelledStep, save_labelled
from qstar_jax.qvalue.head import QHead, QHeadConfig, QHeadModel, head_inputs
from qstar_jax.qvalue.train import TrainConfig, TrainResult
from qstar_jax.search.interface import QItem
from qstar_jax.stages import train_q
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.train_q import head_config, train_config, write_training_summary
from tests.qvalue.tiny import BACKBONE


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


def test_a_holdout_that_leaves_nothing_to_train_on_says_so():
    # 0.99 of 40 rounds to 40 held out, as the training split counts them; sized apart,
    # training met "0 training examples cannot fill batch_size=1".
    assert train_config(context("q_train.holdout_fraction=0.97"), 40).batch_size == 1
    with pytest.raises(ConfigError, match=r"^q_train.holdout_fraction=0.99 holds out all 40 "
                                          r"labelled examples, leaving none to train on: lower "
                                          r"it$"):
        train_config(context("q_train.holdout_fraction=0.99"), 40)


def test_a_single_step_of_training_has_no_warmup():
    assert train_config(context("q_train.max_epochs=1"), 9).warmup_steps == 0


def test_the_summary_counts_labels_above_one_half_as_positive(tmp_path, monkeypatch):
    result = TrainResult(steps=12, stopped_early=True, best_step=8, best_heldout_loss=0.25,
                         heldout_losses=((4, 0.5), (8, 0.25)), constant_heldout_loss=0.5,
                         heldout_auc=0.75)
    write_training_summary(tmp_path / "q_training.json", result,
                           np.array([0.5, 0.75, 0.25, 1.0], np.float32))
    assert json.loads((tmp_path / "q_training.json").read_text()) == {
        "steps": 12, "stopped_early": True, "best_heldout_loss": 0.25,
        "constant_heldout_loss": 0.5, "heldout_auc": 0.75, "examples": 4,
        "positive_fraction": 0.5}
    monkeypatch.setattr(train_q, "is_writer", lambda: False)  # another process
    write_training_summary(tmp_path / "other.json", result, np.ones(2, np.float32))
    assert not (tmp_path / "other.json").exists()


def test_the_summary_marking_training_done_is_written_whole_or_not_at_all(tmp_path,
                                                                           monkeypatch):
    """A kill mid-write left an empty q_training.json, which the next run took for a
    finished train_q stage: the file now appears only once whole (a rename)."""
    def killed(source, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(durable.os, "replace", killed)
    result = TrainResult(steps=1, stopped_early=False, best_step=1, best_heldout_loss=0.5,
                         heldout_losses=(), constant_heldout_loss=0.5, heldout_auc=None)
    with pytest.raises(KeyboardInterrupt):
        write_training_summary(tmp_path / "q_training.json", result, np.ones(2, np.float32))
    assert not (tmp_path / "q_training.json").exists()


STEPS = [LabelledStep(problem_index=1, prefix_steps=(), step_text="a = 1", label=1.0),
         LabelledStep(problem_index=0, prefix_steps=("b = 2",), step_text="#### 2", label=0.0),
         LabelledStep(problem_index=1, prefix_steps=("a = 1",), step_text="#### 1", label=0.5)]


def test_train_q_fits_a_seeded_head_on_the_saved_features_and_both_log_probabilities(
        tmp_path, monkeypatch):
    """On the policy's features (width 16): the head reads each labelled step's saved
    hidden state, 10 x its saved log-probability and 10 x the second policy's, asked over
    the training problems' prompts; it starts from q_train's seed (5) and checkpoints
    under the policy's identity in the run's q_dir."""
    loaded = []
    monkeypatch.setattr(RunContext, "load", lambda self, source: loaded.append(source)
                        or LoadedModel(config=BACKBONE, model=None, tokenizer=None))
    asked = {}

    class SecondOpinion:
        def __init__(self, model, prompts):
            asked.update(model=model, prompts=prompts)

        def __call__(self, steps):
            asked["steps"] = list(steps)
            return np.array([-0.25, -1.0, -3.0], np.float32)
    monkeypatch.setattr(train_q, "SecondOpinion", SecondOpinion)
    fitted = {}

    def fit(model, inputs, labels, config, *, checkpointer, mesh):
        fitted.update(model=model, inputs=inputs, labels=labels, config=config,
                      identity=checkpointer.identity, head=checkpointer.head_config,
                      directory=checkpointer.directory)
        return TrainResult(steps=3, stopped_early=False, best_step=None,
                           best_heldout_loss=None, heldout_losses=())
    monkeypatch.setattr(train_q, "train_q_model", fit)
    ctx = RunContext(config=load_config(None, ["task.train_problems=2", "seed=5"]),
                     out=tmp_path)
    features = np.arange(48, dtype=np.float32).reshape(3, 16)
    save_labelled(ctx.labels_path, STEPS, features=features,
                  step_logprobs=np.array([-0.5, -2.0, -40.0], np.float32))
    train_q.train_q(ctx)

    assert sorted(map(str, loaded)) == sorted(map(str, [ctx.policy_dir, ctx.second_opinion_dir]))
    assert asked["prompts"] == ctx.prompts(ctx.problems("train", 2))
    assert asked["steps"] == STEPS
    np.testing.assert_array_equal(fitted["inputs"][:, :16], features)
    np.testing.assert_array_equal(fitted["inputs"][:, 16:],
                                  [[-5.0, -2.5], [-20.0, -10.0], [-300.0, -30.0]])
    np.testing.assert_array_equal(fitted["labels"], [1.0, 0.0, 0.5])
    assert fitted["config"] == train_config(ctx, 3)
    head = QHeadConfig(hidden_size=16, mlp_widths=(16,), step_logprob=True,
                       second_opinion=True, output="sigmoid")
    assert fitted["model"].head_config == fitted["head"] == head
    jax.tree.map(np.testing.assert_array_equal,
                 nnx.to_pure_dict(nnx.state(fitted["model"], nnx.Param)),
                 nnx.to_pure_dict(nnx.state(QHead(head, rngs=nnx.Rngs(5)), nnx.Param)))
    assert fitted["identity"] == BackboneIdentity.of_policy(BACKBONE)
    assert fitted["directory"] == ctx.q_dir
    assert json.loads((tmp_path / "q_training.json").read_text())["examples"] == 3


def test_q_for_search_is_the_trained_head_with_the_second_opinion_over_the_searched_problems(
        tmp_path, monkeypatch):
    monkeypatch.setattr(RunContext, "load", lambda self, source: LoadedModel(
        config=BACKBONE, model=None, tokenizer=None))
    head = QHead(QHeadConfig(hidden_size=16, step_logprob=True, second_opinion=True),
                 rngs=nnx.Rngs(0))
    loaded = []
    monkeypatch.setattr(train_q, "load_q_head", lambda directory, **kwargs: loaded.append(
        (directory, kwargs)) or head)
    asked = {}

    class SecondOpinion:
        def __init__(self, model, prompts):
            asked["prompts"] = prompts

        def __call__(self, items):
            asked["items"] = list(items)
            return np.zeros(len(items), np.float32)
    monkeypatch.setattr(train_q, "SecondOpinion", SecondOpinion)
    mesh = object()
    ctx = RunContext(config=load_config(None, ["task.train_problems=2"]), out=tmp_path,
                     mesh=mesh)
    searched = ctx.problems("test", 3)
    q_fn = train_q.load_q_function(ctx, searched)
    assert loaded == [(ctx.q_dir, {"policy_config": BACKBONE, "mesh": mesh})]
    assert asked["prompts"] == ctx.prompts(searched) != ctx.prompts(ctx.problems("train", 3))
    item = QItem(problem_index=2, prefix_steps=(), step_text="a", logprob=-1.0,
                 hidden=np.ones(16, np.float32))
    assert q_fn.score([item]) == pytest.approx(QHeadModel(head).score_hidden(
        head_inputs(np.ones((1, 16)), np.array([-1.0]), head.head_config, np.zeros(1))))
    assert asked["items"] == [item]
