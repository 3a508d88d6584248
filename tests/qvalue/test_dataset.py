import numpy as np
import pytest

from qstar_jax.qvalue.dataset import (LabelledStep, features_path, load_labelled,
                                      load_step_logprobs, save_labelled, step_pairs)
from qstar_jax.qvalue.rollouts import ProblemRollouts, Rollout


def test_step_pairs_are_distinct_and_know_which_steps_end_a_trace():
    record = ProblemRollouts(problem_index=4, temperature=0.9, rollouts=(
        Rollout(steps=("x", "y"), reward=1.0), Rollout(steps=("x", "z"), reward=0.0),
        Rollout(steps=("x", "y"), reward=1.0)))
    pairs = step_pairs([record])
    assert [(p.prefix_steps, p.step_text, p.terminal_reward) for p in pairs] == [
        ((), "x", None), (("x",), "y", 1.0), (("x",), "z", 0.0)]
    assert pairs[1].next_state == ("x", "y")


def test_labelled_dataset_round_trips_with_features(tmp_path):
    steps = [LabelledStep(problem_index=i, prefix_steps=("a", "ü"), step_text=f"s{i}",
                          label=i / 4) for i in range(3)]
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "labels.jsonl"
    save_labelled(path, steps, features=features)
    loaded, loaded_features = load_labelled(path)
    assert loaded == steps
    np.testing.assert_array_equal(loaded_features, features)
    save_labelled(path, steps[:2])  # without features: no stale rows left behind
    assert load_labelled(path) == (steps[:2], None)
    assert not features_path(path).exists()


def test_features_must_align_with_records(tmp_path):
    steps = [LabelledStep(problem_index=0, prefix_steps=(), step_text="s", label=1.0)]
    with pytest.raises(ValueError, match=r"\[N=1, E\]"):
        save_labelled(tmp_path / "l.jsonl", steps, features=np.zeros((2, 4)))
    with pytest.raises(FileNotFoundError):
        load_labelled(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("rows", [2, 4])
def test_features_saved_apart_from_their_records_are_refused(tmp_path, rows):
    """A kill between the two atomic writes leaves new features beside old records: of a
    smaller label set, or of a larger one, whose first rows would pair with the records."""
    steps = [LabelledStep(problem_index=0, prefix_steps=(), step_text=f"s{i}", label=1.0)
             for i in range(4)]
    path, newer = tmp_path / "labels.jsonl", tmp_path / "newer.jsonl"
    save_labelled(path, steps[:3], features=np.zeros((3, 4), np.float32))
    save_labelled(newer, steps[:rows], features=np.ones((rows, 4), np.float32))
    features_path(newer).replace(features_path(path))
    with pytest.raises(ValueError, match=f"has {rows} feature rows for 3 records"):
        load_labelled(path)


def test_step_logprobs_round_trip_with_the_features_and_need_them(tmp_path):
    steps = [LabelledStep(problem_index=0, prefix_steps=(), step_text=f"s{i}", label=1.0)
             for i in range(3)]
    path = tmp_path / "labels.jsonl"
    logprobs = np.array([-0.5, -2.0, -7.25], np.float32)
    save_labelled(path, steps, features=np.zeros((3, 4), np.float32), step_logprobs=logprobs)
    np.testing.assert_array_equal(load_step_logprobs(path), logprobs)
    save_labelled(path, steps, features=np.zeros((3, 4), np.float32))
    assert load_step_logprobs(path) is None  # features without log-probabilities
    save_labelled(path, steps)
    assert load_step_logprobs(path) is None  # no features file at all
    for features, wrong in ((None, logprobs), (np.zeros((3, 4)), logprobs[:2]),
                            (np.zeros((3, 4)), logprobs.reshape(3, 1))):
        with pytest.raises(ValueError, match=r"step_logprobs go with features and must be \[N=3\]"):
            save_labelled(path, steps, features=features, step_logprobs=wrong)
