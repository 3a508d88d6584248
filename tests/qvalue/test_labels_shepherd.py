"""Math-Shepherd per-step labels from M completions per step, against brute force over a
hand-built tree, whether the completions come from the best-of-rollouts label stage's
journal or are sampled for the PRM."""

import numpy as np
import pytest

from qstar_jax.qvalue.labels_best_of import BestOfRolloutsConfig, best_of_rollouts_labels
from qstar_jax.qvalue.labels_shepherd import (OutcomeJournal, missing_outcomes,
                                              sample_outcomes, shepherd_labels)
from tests.qvalue.toy_tree import (PROBLEM, REWARDS, EnumeratingSampler, all_pairs, completions,
                                   reward)


def brute_force(pairs, estimation):
    """A terminal step's own reward; else over every completion of s' in the tree: any
    right (hard) or the share right (soft)."""
    labels = []
    for p in pairs:
        if p.terminal_reward is not None:
            labels.append(p.terminal_reward)
            continue
        right = [REWARDS[(*p.next_state, *c)] == 1.0 for c in completions(p.next_state)]
        labels.append(float(any(right)) if estimation == "hard" else float(np.mean(right)))
    return labels


@pytest.mark.parametrize("estimation", ["hard", "soft"])
@pytest.mark.parametrize("source", ["label_stage", "sampled"])
def test_labels_match_brute_force_over_the_tree(tmp_path, estimation, source):
    pairs = all_pairs()
    journal = OutcomeJournal(tmp_path / "outcomes.jsonl")
    # The enumerating sampler cycles through a state's completions: 4 draws cover each
    # state's 2 completions twice, so the share right is exact.
    if source == "label_stage":
        best_of_rollouts_labels(pairs, EnumeratingSampler(), reward,
                                BestOfRolloutsConfig(rollouts=4, batch_pairs=2),
                                progress=False, outcomes=journal)
    else:
        sample_outcomes(missing_outcomes(pairs, journal), EnumeratingSampler(), reward, journal,
                        completions=4, temperature=0.9, batch_pairs=2, progress=False)
    assert missing_outcomes(pairs, journal) == []
    labels = shepherd_labels(pairs, journal.known(), estimation)
    assert [(l.prefix_steps, l.step_text) for l in labels] == [
        (p.prefix_steps, p.step_text) for p in pairs]
    assert [l.label for l in labels] == brute_force(pairs, estimation)


def test_hard_and_soft_differ_where_some_completions_fail(tmp_path):
    pairs = [p for p in all_pairs() if p.next_state == ("a",)]
    journal = OutcomeJournal(tmp_path / "outcomes.jsonl")
    sampler = EnumeratingSampler()
    sample_outcomes(pairs, sampler, reward, journal, completions=2, temperature=0.9,
                    max_steps=5, progress=False)
    assert [(c["items"], c["n"], c["temperature"], c["max_steps"]) for c in sampler.calls] == [
        ([(PROBLEM, ("a",))], 2, 0.9, 5)]  # the PRM's completions at the configured settings
    assert journal.known()[pairs[0].key] == [0.0, 1.0]  # a2 fails, a1 reaches the answer
    assert shepherd_labels(pairs, journal.known(), "hard")[0].label == 1.0
    assert shepherd_labels(pairs, journal.known(), "soft")[0].label == 0.5


def test_missing_completions_and_unknown_estimations_are_errors(tmp_path):
    pairs = all_pairs()
    with pytest.raises(ValueError, match="no completions recorded"):
        shepherd_labels(pairs, {}, "hard")
    with pytest.raises(ValueError, match="choose one of"):
        shepherd_labels(pairs, {}, "medium")


def test_the_label_stage_records_each_pairs_own_completion_rewards(tmp_path):
    """Both non-terminal pairs of one batch, a and b, have soft label .5, so labels alone
    cannot tell their rows apart; the rewards recorded for each are its own, in sample
    order, as the PRM stage would sample them itself."""
    pairs = all_pairs()
    stage, sampled = (OutcomeJournal(tmp_path / f"{name}.jsonl") for name in ("stage", "own"))
    best_of_rollouts_labels(pairs, EnumeratingSampler(), reward,
                            BestOfRolloutsConfig(rollouts=4, batch_pairs=2),
                            progress=False, outcomes=stage)
    sample_outcomes(missing_outcomes(pairs, sampled), EnumeratingSampler(), reward, sampled,
                    completions=4, temperature=0.9, batch_pairs=2, progress=False)
    assert stage.known() == sampled.known() == {
        (PROBLEM, (), "a"): [0.0, 1.0, 0.0, 1.0],  # a a2 fails, a a1 is right
        (PROBLEM, (), "b"): [1.0, 0.0, 1.0, 0.0],  # b b1 b11 is right, b b1 b12 fails
        (PROBLEM, ("b",), "b1"): [1.0, 0.0, 1.0, 0.0]}
