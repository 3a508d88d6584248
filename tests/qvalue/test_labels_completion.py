import pytest

from qstar_jax.qvalue.dataset import StepPair
from qstar_jax.qvalue.labels_completion import SolverSampler, stronger_completion_labels
from tests.qvalue.toy_tree import PROBLEM, REWARDS, reward


class GreedyStrongModel:
    """Completes each state with one fixed continuation; records its calls."""

    COMPLETIONS = {("a",): ("a1",), ("b",): ("b1", "b12"), ("b", "b1"): ("b11",)}

    def __init__(self):
        self.calls = []

    def continue_from(self, items, n, temperature, max_steps=None):
        self.calls.append((list(items), n, temperature, max_steps))
        return [[self.COMPLETIONS[prefix]] * n for _, prefix in items]


def pair(prefix, step, terminal_reward=None):
    return StepPair(problem_index=PROBLEM, prefix_steps=prefix, step_text=step,
                    terminal_reward=terminal_reward)


def test_label_is_the_discounted_reward_of_the_strong_greedy_completion():
    pairs = [pair((), "a"), pair((), "b"), pair(("b",), "b1"), pair(("a",), "a2", 0.0)]
    strong = GreedyStrongModel()
    labels = stronger_completion_labels(pairs, strong, reward, discount=0.5, batch_pairs=2,
                                        max_steps=8, progress=False)
    # a ⊕ a1 -> 1 after one step; b ⊕ b1 b12 -> 0; b b1 ⊕ b11 -> 1 after one step; a a2 ends.
    assert [l.label for l in labels] == pytest.approx([0.5, 0.0, 0.5, REWARDS[("a", "a2")]])
    assert strong.calls == [([(PROBLEM, ("a",)), (PROBLEM, ("b",))], 1, 0.0, 8),
                            ([(PROBLEM, ("b", "b1"))], 1, 0.0, 8)]


@pytest.mark.parametrize(("settings", "message"), [
    ({"discount": 1.5}, r"discount=1.5 must lie in \(0, 1\]"),
    ({"discount": 0.0}, r"discount=0.0 must lie in \(0, 1\]"),
    ({"batch_pairs": 0}, "batch_pairs=0 must be at least 1"),
])
def test_settings_out_of_range_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        stronger_completion_labels([], GreedyStrongModel(), reward, **settings)


def test_a_completion_of_several_steps_is_discounted_once_per_step():
    class LongWayToTheReward(GreedyStrongModel):
        COMPLETIONS = {("b",): ("b1", "b11")}

    [label] = stronger_completion_labels([pair((), "b")], LongWayToTheReward(), reward,
                                         discount=0.5, progress=False)
    # b ⊕ b1 b11 -> 1 after two steps: γ² · 1.
    assert label.label == pytest.approx(0.25)


def test_a_solvers_completion_is_cut_at_max_steps_and_asked_per_problem_and_state():
    asked = []

    def complete(problem, steps):
        asked.append((problem, steps))
        return ("b1", "b11") if problem == PROBLEM else ("x",)

    solver = SolverSampler(complete)
    assert solver.continue_from([(PROBLEM, ("b",)), (3, ())], 2, 0.0, max_steps=1) == [
        [("b1",), ("b1",)], [("x",), ("x",)]]
    assert solver.continue_from([(PROBLEM, ("b",))], 1, 0.0) == [[("b1", "b11")]]
    assert asked == [(PROBLEM, ("b",)), (3, ()), (PROBLEM, ("b",))]
    # Cut after b1, the completion does not reach b11's reward: an unfinished trace is 0.
    [capped] = stronger_completion_labels(
        [pair((), "b")], SolverSampler(complete), lambda problem, steps: REWARDS.get(steps, 0.0),
        discount=0.5, max_steps=1, progress=False)
    assert capped.label == 0.0
    [uncapped] = stronger_completion_labels([pair((), "b")], SolverSampler(complete), reward,
                                            discount=0.5, max_steps=2, progress=False)
    assert uncapped.label == pytest.approx(0.25)
