import numpy as np
import pytest

from qstar_jax.qvalue.dataset import StepPair
from qstar_jax.qvalue.labels_fqi import FittedQConfig, fitted_q_iteration_labels
from tests.qvalue.toy_tree import PROBLEM, EnumeratingSampler, all_pairs

GAMMA = 0.9
# Q*(s, a) of the deterministic toy tree (reward 1 only at a a1 and b b1 b11), γ = 0.9.
OPTIMAL_Q = {
    ((), "a"): 0.9, ((), "b"): 0.81, ((), "c"): 0.0,
    (("a",), "a1"): 1.0, (("a",), "a2"): 0.0,
    (("b",), "b1"): 0.9,
    (("b", "b1"), "b11"): 1.0, (("b", "b1"), "b12"): 0.0,
}


def tabular_fit(pairs, targets):
    table = {p.key: float(t) for p, t in zip(pairs, targets)}
    return lambda query: np.array([table.get(p.key, 0.0) for p in query])


def as_table(labels):
    return {(l.prefix_steps, l.step_text): l.label for l in labels}


def test_converges_to_the_optimal_q_values():
    pairs = all_pairs()
    labels, q_fn = fitted_q_iteration_labels(pairs, tabular_fit,
                                             FittedQConfig(rounds=3, discount=GAMMA))
    assert as_table(labels) == pytest.approx(OPTIMAL_Q)
    assert q_fn(pairs) == pytest.approx([OPTIMAL_Q[(p.prefix_steps, p.step_text)]
                                         for p in pairs])
    more_rounds, _ = fitted_q_iteration_labels(pairs, tabular_fit,
                                               FittedQConfig(rounds=6, discount=GAMMA))
    assert as_table(more_rounds) == pytest.approx(OPTIMAL_Q)  # a fixed point


def test_each_round_propagates_value_one_step_back():
    labels, _ = fitted_q_iteration_labels(all_pairs(), tabular_fit,
                                          FittedQConfig(rounds=2, discount=GAMMA))
    table = as_table(labels)
    assert table[((), "a")] == pytest.approx(0.9)
    assert table[(("b",), "b1")] == pytest.approx(0.9)
    assert table[((), "b")] == 0.0  # three steps from its reward: needs a third round


def test_sampled_candidates_match_observed_ones_on_the_full_tree():
    sampler = EnumeratingSampler()
    labels, _ = fitted_q_iteration_labels(
        all_pairs(), tabular_fit,
        FittedQConfig(rounds=3, discount=GAMMA, candidates="sampled", sampled_candidates=2,
                      temperature=0.7),
        sampler=sampler)
    assert as_table(labels) == pytest.approx(OPTIMAL_Q)
    assert [(c["n"], c["max_steps"], c["temperature"]) for c in sampler.calls] == [(2, 1, 0.7)]


def test_an_open_pair_without_any_observed_next_step_is_an_error():
    dangling = [StepPair(problem_index=PROBLEM, prefix_steps=(), step_text="b")]
    with pytest.raises(ValueError, match="no observed next step"):
        fitted_q_iteration_labels(dangling, tabular_fit, FittedQConfig())
    with pytest.raises(ValueError, match="needs a sampler"):
        fitted_q_iteration_labels(dangling, tabular_fit, FittedQConfig(candidates="sampled"))


def test_a_sampler_that_ends_the_trace_after_an_open_step_is_an_error():
    # In the tree, a1 ends the trace after a: every completion from there is empty.
    unended = [StepPair(problem_index=PROBLEM, prefix_steps=("a",), step_text="a1")]
    with pytest.raises(ValueError, match=r"the sampler ends the trace after \(7, \('a',\), 'a1'\)"):
        fitted_q_iteration_labels(unended, tabular_fit, FittedQConfig(candidates="sampled"),
                                  sampler=EnumeratingSampler())


@pytest.mark.parametrize(("settings", "message"), [
    ({"rounds": 0}, "rounds=0 and sampled_candidates=6 must both be at least 1"),
    ({"sampled_candidates": 0}, "rounds=3 and sampled_candidates=0 must both be at least 1"),
    ({"candidates": "all"}, "candidates='all': choose 'observed' or 'sampled'"),
    ({"discount": 0.0}, r"discount=0.0 must lie in \(0, 1\]"),
    ({"discount": 1.5}, r"discount=1.5 must lie in \(0, 1\]"),
])
def test_settings_out_of_range_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        FittedQConfig(**settings)


def test_a_fit_returning_the_wrong_shape_is_named():
    def bad_fit(pairs, targets):
        return lambda query: np.zeros(1)

    with pytest.raises(ValueError, match="one value per pair"):
        fitted_q_iteration_labels(all_pairs(), bad_fit, FittedQConfig(rounds=2))


def test_a_state_takes_the_best_of_its_own_problems_next_steps():
    """Problem 0's 'x' leads to steps worth 1 and .5, its 'w' to one worth -1; problem 1's
    'x' leads to one worth 0: each open step is γ times the best of its own next steps."""
    pairs = [StepPair(problem_index=0, prefix_steps=(), step_text="x"),
             StepPair(problem_index=0, prefix_steps=("x",), step_text="y", terminal_reward=1.0),
             StepPair(problem_index=0, prefix_steps=("x",), step_text="z", terminal_reward=0.5),
             StepPair(problem_index=0, prefix_steps=(), step_text="w"),
             StepPair(problem_index=0, prefix_steps=("w",), step_text="v", terminal_reward=-1.0),
             StepPair(problem_index=1, prefix_steps=(), step_text="x"),
             StepPair(problem_index=1, prefix_steps=("x",), step_text="y", terminal_reward=0.0)]
    labels, _ = fitted_q_iteration_labels(pairs, tabular_fit,
                                          FittedQConfig(rounds=2, discount=GAMMA))
    assert [l.label for l in labels] == pytest.approx([0.9, 1.0, 0.5, -0.9, -1.0, 0.0, 0.0])
