"""The fitted-Q-iteration label stage end to end on a tiny Countdown run."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from qstar_jax.config_loading import load_config
from qstar_jax.qvalue.dataset import load_labelled, step_pairs
from qstar_jax.qvalue.head import QHead, QHeadConfig
from qstar_jax.qvalue.rollouts import read_rollouts
from qstar_jax.run import main
from qstar_jax.stages import fitted_q
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.train_q import train_config
from tests.qvalue.toy_tree import all_pairs
from tests.support.train_q_spy import meshes_passed_to_train_q_model
from tests.test_run_pipeline import TINY


def test_fitted_q_labels_lie_in_the_label_range_and_train_q_takes_them(tmp_path, monkeypatch):
    meshes = meshes_passed_to_train_q_model(monkeypatch, fitted_q)
    out = tmp_path / "fqi"
    assert main([*TINY, "label.method=fitted_q_iteration", "label.gamma=0.9",
                 "stages=[train_policy,collect,label,train_q]", "--out", str(out)]) == 0
    steps, features = load_labelled(out / "labels.jsonl")
    labels = np.array([s.label for s in steps])
    assert len(steps) == len(features) > 0
    assert np.all((labels >= 0.0) & (labels <= 1.0))
    pairs = step_pairs(read_rollouts(out / "rollouts.jsonl"))
    assert [(p.prefix_steps, p.step_text) for p in pairs] == [
        (s.prefix_steps, s.step_text) for s in steps]
    # A step that ends its trace is labelled with the trace's reward, no bootstrap.
    for pair, label in zip(pairs, labels):
        if pair.terminal_reward is not None:
            assert label == pair.terminal_reward
    summary = json.loads((out / "q_training.json").read_text())
    assert summary["examples"] == len(steps) and summary["steps"] > 0
    # Every round's Q̂ fit ran on the run's mesh (over all the devices there are).
    assert meshes and all(m is not None and m.size == jax.device_count() for m in meshes)


def fitted_q_rounds(monkeypatch) -> list:
    """(targets, the Q̂ fitted to them) of each round of the stage's fitted Q-iteration,
    as the rounds happen."""
    rounds = []
    iterate = fitted_q.fitted_q_iteration_labels

    def spy(pairs, fit, config, **kwargs):
        def recorded_fit(fit_pairs, targets):
            q_fn = fit(fit_pairs, targets)
            rounds.append((np.array(targets), q_fn))
            return q_fn
        return iterate(pairs, recorded_fit, config, **kwargs)
    monkeypatch.setattr(fitted_q, "fitted_q_iteration_labels", spy)
    return rounds


def test_fitted_q_labels_an_open_step_by_the_head_fitted_in_the_round_before(tmp_path,
                                                                             monkeypatch):
    """Round 2 labels a step that does not end its trace γ · max Q̂_1 over the steps that
    follow it in the data, Q̂_1 being the head fitted to round 1's targets (the traces'
    rewards): after the toy tree's rewarded steps a1 and b11, above 0. (The tiny run's
    traces above all fail, so its heads fit 0 everywhere.)"""
    rounds = fitted_q_rounds(monkeypatch)
    ctx = RunContext(config=load_config(None, [
        *TINY, "label.method=fitted_q_iteration", "label.gamma=0.9", "label.rounds=2",
        "q_train.max_epochs=20", "q_train.learning_rate=1e-2"]), out=tmp_path)
    pairs = all_pairs()
    features = np.eye(len(pairs), 8, dtype=np.float32)  # a row of its own per pair
    labels = {p.key: s.label for p, s in zip(pairs, fitted_q.fitted_q_labels(
        ctx, pairs, features))}
    [(first_targets, q_1), (last_targets, _)] = rounds
    rewards = [p.terminal_reward for p in pairs]
    assert list(first_targets) == [r or 0.0 for r in rewards]
    assert list(labels.values()) == pytest.approx(last_targets)
    following = {}
    for p in pairs:
        following.setdefault(p.prefix_steps, []).append(p)
    for p in pairs:
        if p.terminal_reward is not None:
            assert labels[p.key] == p.terminal_reward
        else:
            assert labels[p.key] == pytest.approx(0.9 * q_1(following[p.next_state]).max())
    # a and b b1 are one step from a rewarded step: Q̂_1 learnt that.
    a, b_b1 = (labels[p.key] for p in pairs if p.next_state in (("a",), ("b", "b1")))
    assert a > 0.0 and b_b1 > 0.0


def test_each_rounds_head_is_a_seeded_raw_mse_fit_whose_values_are_clipped_to_0_1(
        tmp_path, monkeypatch):
    """Round 1 fits a raw head of q_train's shape from the run's seed (3) with MSE to the
    rewards; its values (here read from the features' first column, no training) are
    clipped to [0, 1] before round 2 bootstraps: a's next steps a2 -.5 and a1 1.5 give
    .9 x 1, b's one next step b1 at -.4 gives 0, b b1's b11 2.0 gives .9."""
    fits = []

    def fit(head, features, targets, settings, *, progress, mesh):
        fits.append((head, np.array(targets), settings))
    monkeypatch.setattr(fitted_q, "train_q_model", fit)

    class FirstColumn:
        def __init__(self, head):
            pass

        def score_hidden(self, rows):
            return rows[:, 0]
    monkeypatch.setattr(fitted_q, "QHeadModel", FirstColumn)
    ctx = RunContext(config=load_config(None, [
        "label.method=fitted_q_iteration", "label.gamma=0.9", "label.rounds=2",
        "q_train.hidden_layers=2", "seed=3"]), out=tmp_path)
    pairs = all_pairs()
    q_1 = {("a",): 0.7, ("a", "a2"): -0.5, ("a", "a1"): 1.5, ("b",): 0.2, ("b", "b1"): -0.4,
           ("b", "b1", "b11"): 2.0, ("b", "b1", "b12"): 0.3, ("c",): 0.1}
    features = np.zeros((len(pairs), 8), np.float32)
    features[:, 0] = [q_1[p.next_state] for p in pairs]
    labels = {p.next_state: s.label
              for p, s in zip(pairs, fitted_q.fitted_q_labels(ctx, pairs, features))}
    assert labels == pytest.approx({
        ("a",): 0.9, ("a", "a2"): 0.0, ("a", "a1"): 1.0, ("b",): 0.0, ("b", "b1"): 0.9,
        ("b", "b1", "b11"): 1.0, ("b", "b1", "b12"): 0.0, ("c",): 0.0})
    head_config = QHeadConfig(hidden_size=8, mlp_widths=(8, 8), output="raw")
    assert len(fits) == 2
    for head, targets, settings in fits:
        assert head.head_config == head_config
        jax.tree.map(np.testing.assert_array_equal,
                     nnx.to_pure_dict(nnx.state(head, nnx.Param)),
                     nnx.to_pure_dict(nnx.state(QHead(head_config, rngs=nnx.Rngs(3)),
                                                nnx.Param)))
        assert settings == dataclasses.replace(train_config(ctx, 8), loss="mse")
    assert list(fits[0][1]) == [p.terminal_reward or 0.0 for p in pairs]
