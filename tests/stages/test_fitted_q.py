"""The fitted-Q-iteration label stage end to end on a tiny Countdown run."""

import json

import jax
import numpy as np
import pytest

from qstar_jax.config import load_config
from qstar_jax.qvalue.dataset import load_labelled, step_pairs
from qstar_jax.qvalue.rollouts import read_rollouts
from qstar_jax.run import main
from qstar_jax.stages import fitted_q
from qstar_jax.stages.context import RunContext
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
