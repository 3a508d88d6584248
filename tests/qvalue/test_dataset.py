import numpy as np
import pytest

from qstar_jax.outputs.durable import DamagedOutputError
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
    with pytest.raises(DamagedOutputError, match=f"has {rows} feature rows for 3 records"):
        load_labelled(path)


def saved_with_features(path, count=3):
    steps = [LabelledStep(problem_index=0, prefix_steps=(), step_text=f"s{i}", label=1.0)
             for i in range(count)]
    save_labelled(path, steps, features=np.zeros((count, 4), np.float32),
                  step_logprobs=np.zeros(count, np.float32))
    return steps


def test_a_torn_labels_file_says_to_delete_it_so_the_label_stage_runs_again(tmp_path):
    """labels.jsonl is written whole: a torn last line is damage, whose records no longer
    match their feature rows, and saving again is no advice a run's user can follow."""
    path = tmp_path / "labels.jsonl"
    saved_with_features(path)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DamagedOutputError) as raised:
        load_labelled(path)
    assert str(raised.value) == (
        f"{features_path(path)} has 3 feature rows for 2 records in {path}: the two were not "
        f"saved together; delete {path} so that stage label labels the rollouts again")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1][:10] + "\n")  # a damaged complete line
    with pytest.raises(DamagedOutputError, match=f":2 is not valid JSON .*; delete {path} so "
                       "that stage label labels the rollouts again$"):
        load_labelled(path)


@pytest.mark.parametrize("size", [1000, 30])
def test_a_cut_feature_file_says_to_delete_the_labels(tmp_path, size):
    path = tmp_path / "labels.jsonl"
    saved_with_features(path, count=100)
    with open(features_path(path), "r+b") as f:
        f.truncate(size)
    for load in (load_labelled, load_step_logprobs):
        with pytest.raises(DamagedOutputError, match=(
                f"^cannot read {features_path(path)} \\(.*\\): it is damaged; delete {path} so "
                "that stage label labels the rollouts again$")):
            load(path)


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
