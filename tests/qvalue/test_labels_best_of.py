import math

import pytest

from qstar_jax.qvalue.dataset import StepPair, trace_continuations
from qstar_jax.qvalue.rollouts import ProblemRollouts, Rollout
from qstar_jax.qvalue.labels_best_of import BestOfRolloutsConfig, best_of_rollouts_labels
from qstar_jax.qvalue.labels_shepherd import OutcomeJournal, shepherd_labels
from qstar_jax.qvalue.uct import UCTConfig, uct_best_returns
from tests.qvalue.toy_tree import (PROBLEM, REWARDS, EnumeratingSampler, all_pairs, best_return,
                                   reward)

GAMMA = 0.9


def brute_force(pairs) -> list[float]:
    return [best_return(p.next_state, GAMMA) for p in pairs]


@pytest.mark.parametrize("method", ["sample", "mcts"])
def test_enough_rollouts_find_the_brute_force_best_return(method):
    pairs = all_pairs()
    config = BestOfRolloutsConfig(method=method, rollouts=4, discount=GAMMA, mcts_branching=2,
                                  batch_pairs=3)
    labels = best_of_rollouts_labels(pairs, EnumeratingSampler(), reward, config, progress=False)
    assert [(l.prefix_steps, l.step_text) for l in labels] == [
        (p.prefix_steps, p.step_text) for p in pairs]
    assert [l.label for l in labels] == pytest.approx(brute_force(pairs))
    by_pair = {(l.prefix_steps, l.step_text): l.label for l in labels}
    assert by_pair[((), "b")] == pytest.approx(GAMMA ** 2)  # b b1 b11 wins, 2 steps after b
    assert by_pair[((), "a")] == pytest.approx(GAMMA)


def test_one_rollout_labels_with_the_return_it_saw_not_the_best():
    pairs = [StepPair(problem_index=PROBLEM, prefix_steps=(), step_text="a")]
    sampler = EnumeratingSampler()
    config = BestOfRolloutsConfig(rollouts=1, discount=GAMMA, temperature=0.3, max_steps=5)
    (one,) = best_of_rollouts_labels(pairs, sampler, reward, config, progress=False)
    assert one.label == 0.0  # its only rollout is a2, reward 0
    assert sampler.calls == [{"items": [(PROBLEM, ("a",))], "n": 1, "temperature": 0.3,
                              "max_steps": 5}]
    (two,) = best_of_rollouts_labels(pairs, EnumeratingSampler(), reward,
                                     BestOfRolloutsConfig(rollouts=2, discount=GAMMA),
                                     progress=False)
    assert two.label == pytest.approx(GAMMA)


def test_uct_simulation_count_bounds_what_it_finds():
    pairs = [StepPair(problem_index=PROBLEM, prefix_steps=(), step_text="a")]
    found = [best_of_rollouts_labels(
        pairs, EnumeratingSampler(), reward,
        BestOfRolloutsConfig(method="mcts", rollouts=n, discount=GAMMA, mcts_branching=2),
        progress=False)[0].label for n in (1, 2)]
    assert found == pytest.approx([0.0, GAMMA])  # a2 is expanded first, a1 second


def test_uct_expands_single_steps_and_batches_pairs_in_lockstep():
    pairs = [p for p in all_pairs() if p.terminal_reward is None]
    sampler = EnumeratingSampler()
    simulations = 3
    best_of_rollouts_labels(pairs, sampler, reward,
                            BestOfRolloutsConfig(method="mcts", rollouts=simulations,
                                                 mcts_branching=2), progress=False)
    assert len(sampler.calls) <= 2 * simulations  # one expansion + one rollout call per round
    expansions = [c for c in sampler.calls if c["max_steps"] == 1]
    assert expansions and all(c["n"] == 2 for c in expansions)
    assert len(sampler.calls[0]["items"]) == len(pairs)  # the first round expands every root


def test_terminal_pairs_take_their_reward_without_sampling():
    pairs = [p for p in all_pairs() if p.terminal_reward is not None]
    sampler = EnumeratingSampler()
    labels = best_of_rollouts_labels(pairs, sampler, reward, BestOfRolloutsConfig(),
                                     progress=False)
    assert [l.label for l in labels] == [REWARDS[p.next_state] for p in pairs]
    assert sampler.calls == []


def test_discount_applies_once_per_step_after_the_action():
    pairs = [StepPair(problem_index=PROBLEM, prefix_steps=(), step_text="b")]
    (label,) = best_of_rollouts_labels(pairs, EnumeratingSampler(), reward,
                                       BestOfRolloutsConfig(rollouts=2, discount=0.5),
                                       progress=False)
    assert math.isclose(label.label, 0.25)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="method"):
        BestOfRolloutsConfig(method="beam")
    with pytest.raises(ValueError, match="discount"):
        BestOfRolloutsConfig(discount=0.0)
    with pytest.raises(ValueError, match="trace_is_a_rollout"):
        BestOfRolloutsConfig(method="mcts", trace_is_a_rollout=True)
    with pytest.raises(ValueError, match="traces="):
        best_of_rollouts_labels(all_pairs(), EnumeratingSampler(), reward,
                                BestOfRolloutsConfig(trace_is_a_rollout=True), progress=False)


def traces_of(*steps_and_rewards) -> ProblemRollouts:
    return ProblemRollouts(problem_index=PROBLEM, temperature=0.9, rollouts=tuple(
        Rollout(steps=steps, reward=r) for steps, r in steps_and_rewards))


def test_a_traces_continuations_are_kept_per_step_and_per_trace():
    both_b = traces_of((("b", "b1", "b11"), 1.0), (("b", "b1", "b12"), 0.0))
    continued = trace_continuations([both_b])
    assert continued[(PROBLEM, (), "b")] == [(2, 1.0), (2, 0.0)]
    assert continued[(PROBLEM, ("b",), "b1")] == [(1, 1.0), (1, 0.0)]
    assert continued[(PROBLEM, ("b", "b1"), "b12")] == [(0, 0.0)]


def test_with_traces_that_cover_the_tree_one_rollout_each_is_the_brute_force_best():
    pairs, sampler = all_pairs(), EnumeratingSampler()
    traces = trace_continuations([traces_of(*REWARDS.items())])
    config = BestOfRolloutsConfig(rollouts=1, discount=GAMMA, trace_is_a_rollout=True)
    labels = best_of_rollouts_labels(pairs, sampler, reward, config, progress=False,
                                     traces=traces)
    assert [l.label for l in labels] == pytest.approx(brute_force(pairs))
    assert sampler.calls == []  # the traces were the rollouts: nothing drawn


def test_a_trace_counts_as_one_of_the_rollouts_and_one_fewer_is_drawn():
    pairs = [StepPair(problem_index=PROBLEM, prefix_steps=(), step_text="a")]
    traces = trace_continuations([traces_of((("a", "a1"), 1.0))])
    sampler = EnumeratingSampler()
    (label,) = best_of_rollouts_labels(
        pairs, sampler, reward, BestOfRolloutsConfig(rollouts=2, discount=GAMMA,
                                                     trace_is_a_rollout=True),
        progress=False, traces=traces)
    assert label.label == pytest.approx(GAMMA)  # the trace's a1; the one drawn was a2 (0)
    assert [call["n"] for call in sampler.calls] == [1]


def test_the_outcomes_recorded_for_the_prm_include_the_traces_own(tmp_path):
    """With trace_is_a_rollout, the M completions the PRM's labels read are the one drawn
    (a2: 0) and the trace's own (a1: 1), so soft estimation gives .5, not 0."""
    pairs = [StepPair(problem_index=PROBLEM, prefix_steps=(), step_text="a")]
    traces = trace_continuations([traces_of((("a", "a1"), 1.0))])
    outcomes = OutcomeJournal(tmp_path / "outcomes.jsonl")
    best_of_rollouts_labels(pairs, EnumeratingSampler(), reward,
                            BestOfRolloutsConfig(rollouts=2, trace_is_a_rollout=True),
                            progress=False, traces=traces, outcomes=outcomes)
    assert outcomes.known() == {(PROBLEM, (), "a"): [0.0, 1.0]}
    assert shepherd_labels(pairs, outcomes.known(), "soft")[0].label == 0.5


def test_each_distinct_trace_is_graded_once():
    graded = []

    def counting_reward(problem, steps):
        graded.append(steps)
        return reward(problem, steps)

    pairs = [StepPair(problem_index=PROBLEM, prefix_steps=(), step_text="a")]
    best_of_rollouts_labels(pairs, EnumeratingSampler(), counting_reward,
                            BestOfRolloutsConfig(rollouts=4), progress=False)
    assert sorted(graded) == [("a", "a1"), ("a", "a2")]  # 4 rollouts, 2 distinct traces


class ScriptedUCTSampler:
    """From state s the single steps sampled are CHILDREN[s] (every state below has 3);
    a rollout from s is the one step "end", and its return ROLLOUT_RETURN[s] (0 if not
    listed). Records the states expanded and rolled out from, in order, and each call's
    (n, temperature, max_steps)."""

    CHILDREN = {("s",): ("x", "y", "z"), ("s", "x"): ("x1", "x2", "x3"),
                ("s", "y"): ("y1", "y2", "y3"), ("s", "z"): ("z1", "z2", "z3")}
    ROLLOUT_RETURN = {("s", "x"): .5, ("s", "y"): .6, ("s", "z"): 0.0,
                      ("s", "y", "y1"): .6, ("s", "x", "x1"): 1.0}

    def __init__(self):
        self.expanded, self.rolled_out, self.settings = [], [], []

    def continue_from(self, items, n, temperature, max_steps=None):
        self.settings.append((n, temperature, max_steps))
        states = [steps for _, steps in items]
        if max_steps == 1:
            self.expanded += states
            return [[(step,) for step in self.CHILDREN[s][:n]] for s in states]
        self.rolled_out += states
        return [[("end",)] * n for _ in states]

    @classmethod
    def reward(cls, problem, trace):
        assert trace[-1] == "end"
        return cls.ROLLOUT_RETURN.get(trace[:-1], 0.0)


def test_uct_tries_each_new_child_in_order_then_the_best_mean_plus_exploration():
    """By hand, c = 1, γ = 1. 1: expand s, roll out from its first child x (.5). 2, 3: the
    unvisited y (.6), then z (0). 4: all visited once, so the best mean, y: expand it, roll
    out from y1 (.6; y's mean stays .6). 5: x scores .5 + √(ln 4 / 1) = 1.68 against y's
    .6 + √(ln 4 / 2) = 1.43 (the bonus of fewer visits outweighs y's mean): expand x,
    roll out from x1, which reaches 1."""
    sampler = ScriptedUCTSampler()
    best = uct_best_returns([(0, ("s",))], sampler, sampler.reward, UCTConfig(
        simulations=5, branching=3, exploration=1.0, discount=1.0))
    assert sampler.expanded == [("s",), ("s", "y"), ("s", "x")]
    assert sampler.rolled_out == [("s", "x"), ("s", "y"), ("s", "z"), ("s", "y", "y1"),
                                  ("s", "x", "x1")]
    assert list(best) == [1.0]


class TraceEndingAtY(ScriptedUCTSampler):
    """s's three sampled steps are x, x again and y; y ends the trace (worth .6), so a
    rollout or an expansion from there is empty."""

    CHILDREN = {("s",): ("x", "x", "y")}

    def continue_from(self, items, n, temperature, max_steps=None):
        [(_, state)] = items
        if state != ("s", "y"):
            return super().continue_from(items, n, temperature, max_steps)
        (self.expanded if max_steps == 1 else self.rolled_out).append(state)
        return [[()] * n]

    @classmethod
    def reward(cls, problem, trace):
        return 0.6 if trace == ("s", "y") else super().reward(problem, trace)


def test_uct_keeps_one_child_per_distinct_step_and_never_expands_where_a_trace_ended():
    """1: s's steps x, x, y are two children; roll out from x (.5). 2: the unvisited y,
    whose rollout is empty: the trace ended there (.6). 3: y's .6 + √(ln 2) beats x's:
    y's end is backed up again, with no call to expand it."""
    sampler = TraceEndingAtY()
    best = uct_best_returns([(0, ("s",))], sampler, sampler.reward, UCTConfig(
        simulations=3, branching=3, exploration=1.0, discount=1.0))
    assert sampler.expanded == [("s",)]
    assert sampler.rolled_out == [("s", "x"), ("s", "y")]
    assert list(best) == [0.6]


def test_mcts_labels_search_with_the_configured_exploration_temperature_and_step_cap():
    """The scripted tree of the test above through best_of_rollouts_labels, at exploration
    0: simulations 1-4 as there; at 5 the best mean, y (.6 against x's .5), is descended
    again instead of x, so y2 (0) is rolled out and x1's 1 is never found: the label is
    .6. Expansions ask for 3 single steps, rollouts for one of at most 4 steps, all at
    temperature .3."""
    sampler = ScriptedUCTSampler()
    pairs = [StepPair(problem_index=0, prefix_steps=(), step_text="s")]
    config = BestOfRolloutsConfig(method="mcts", rollouts=5, mcts_branching=3,
                                  mcts_exploration=0.0, temperature=0.3, max_steps=4)
    (label,) = best_of_rollouts_labels(pairs, sampler, sampler.reward, config, progress=False)
    assert label.label == pytest.approx(0.6)
    assert sampler.expanded == [("s",), ("s", "y")]
    assert sampler.rolled_out == [("s", "x"), ("s", "y"), ("s", "z"), ("s", "y", "y1"),
                                  ("s", "y", "y2")]
    expand, roll_out = (3, 0.3, 1), (1, 0.3, 4)
    assert sampler.settings == [expand, roll_out, roll_out, roll_out, expand, roll_out,
                                roll_out]


@pytest.mark.parametrize(("config", "settings", "message"), [
    (BestOfRolloutsConfig, {"rollouts": 0},
     "rollouts=0 and batch_pairs=32 must both be at least 1"),
    (BestOfRolloutsConfig, {"batch_pairs": 0},
     "rollouts=4 and batch_pairs=0 must both be at least 1"),
    (BestOfRolloutsConfig, {"discount": 1.5}, r"discount=1.5 must lie in \(0, 1\]"),
    (UCTConfig, {"simulations": 0}, "simulations=0 and branching=3 must both be at least 1"),
    (UCTConfig, {"branching": 0}, "simulations=8 and branching=0 must both be at least 1"),
], ids=["rollouts", "batch_pairs", "discount", "simulations", "branching"])
def test_settings_out_of_range_are_refused(config, settings, message):
    with pytest.raises(ValueError, match=message):
        config(**settings)
