"""The fitted-Q-iteration label stage end to end on a tiny Countdown run."""

import json

import jax
import numpy as np

from qstar_jax.qvalue.dataset import load_labelled, step_pairs
from qstar_jax.qvalue.rollouts import read_rollouts
from qstar_jax.run import main
from qstar_jax.stages import fitted_q
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
