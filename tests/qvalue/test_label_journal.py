"""A killed label stage resumes from its journal to the labels an uninterrupted one gives."""

import pytest

from qstar_jax.qvalue.label_journal import LabelJournal, starting_labels
from qstar_jax.qvalue.labels_best_of import BestOfRolloutsConfig, best_of_rollouts_labels
from qstar_jax.qvalue.labels_completion import stronger_completion_labels
from tests.qvalue.toy_tree import EnumeratingSampler, all_pairs, reward


class KilledAfter(EnumeratingSampler):
    """Raises on sampler call number ``calls + 1``, as a kill mid-stage would stop it."""

    def __init__(self, calls: int):
        super().__init__()
        self.limit = calls

    def continue_from(self, items, n, temperature, max_steps=None):
        if len(self.calls) == self.limit:
            raise KeyboardInterrupt
        return super().continue_from(items, n, temperature, max_steps)


def open_pairs():
    return [p for p in all_pairs() if p.terminal_reward is None]


@pytest.mark.parametrize("label", [
    lambda pairs, sampler, journal: best_of_rollouts_labels(
        pairs, sampler, reward, BestOfRolloutsConfig(rollouts=2, discount=0.9, batch_pairs=2),
        progress=False, journal=journal),
    lambda pairs, sampler, journal: stronger_completion_labels(
        pairs, sampler, reward, discount=0.9, batch_pairs=2, progress=False, journal=journal),
], ids=["best_of_rollouts", "stronger_model"])
def test_a_killed_estimator_resumes_to_the_uninterrupted_labels(label, tmp_path):
    pairs = open_pairs()
    assert len(pairs) == 3  # batches of two and one
    uninterrupted = label(pairs, EnumeratingSampler(), None)
    journal = LabelJournal(tmp_path / "labels.partial.jsonl")
    with pytest.raises(KeyboardInterrupt):
        label(pairs, KilledAfter(calls=1), journal)
    assert list(journal.known()) == [p.key for p in pairs[:2]]  # the first batch survived
    resumed_sampler = EnumeratingSampler()
    resumed = label(pairs, resumed_sampler, journal)
    assert resumed == uninterrupted
    asked = [state for call in resumed_sampler.calls for _, state in call["items"]]
    assert asked == [p.next_state for p in pairs[2:]]  # recorded pairs are not sampled again
    assert list(journal.known()) == [p.key for p in pairs]


def test_starting_labels_take_terminal_rewards_then_the_journal(tmp_path):
    pairs = all_pairs()
    journal = LabelJournal(tmp_path / "j.jsonl")
    first_open = next(p for p in pairs if p.terminal_reward is None)
    journal.record([first_open], [0.5])
    labels = starting_labels(pairs, journal)
    for pair, y in zip(pairs, labels):
        expected = pair.terminal_reward if pair.terminal_reward is not None else (
            0.5 if pair is first_open else None)
        assert y == expected
    journal.remove()
    assert not journal.path.exists() and journal.known() == {}
