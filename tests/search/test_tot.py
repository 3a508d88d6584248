from types import SimpleNamespace

import pytest

from qstar_jax.search.driver import run_search
from qstar_jax.search.planner import Outcome
from qstar_jax.search.process_utility import RuleUtility
from qstar_jax.search.tot import (ToTConfig, ToTDFSPlanner, process_value, q_value,
                                  tot_bfs_planner)
from qstar_jax.search.tree import best_by
from tests.search.fakes import FakeExpander, HiddenQ, child, tree

# Node ids in creation order: a 1, b 2, c 3; b's children 4-6, c's 7-9 (or a's 4-6 and
# c's 7-9 when a and c are kept), then the children of the next expansions.
# Q̂ ranks b (.9) and c (.5) first, the PRM (Agg = min of rewards) a (.9) and c (.6).
BFS_TREE = tree({
    "": [child("a", .1, reward=.9), child("b", .9, reward=.2), child("c", .5, reward=.6)],
    "a": [child("a1", .9, reward=.3, end=True), child("a2", .1, reward=.7),
          child("a3", .2, reward=.95)],
    "b": [child("b1", .3, end=True), child("b2", .8), child("b3", .4)],
    "c": [child("c1", .6, reward=.5, end=True), child("c2", .2, reward=.65),
          child("c3", .1, reward=.1)],
    "b b2": [child("z1", .7, end=True), child("z2", .2), child("z3", .1)],
    "a a3": [child("x1", 0, reward=.8, end=True), child("x2", 0, reward=.1),
             child("x3", 0, reward=.9, end=True)],
    "a a2": [child("y1", 0, reward=1.0, end=True), child("y2", 0), child("y3", 0)],
})


def search(make_planner, spec, utility=None):
    expander = FakeExpander({0: spec})
    extra = {} if utility is None else {"utility": utility(expander)}
    [result] = run_search(1, make_planner, expander, HiddenQ(), progress=False, **extra)
    assert not expander.live, "every handle is released"
    return result, [[r.node.id for r in call] for call in expander.expand_calls]


def test_bfs_with_q_keeps_the_best_b_states_by_q():
    config = ToTConfig(k=3, keep=2)
    result, expanded = search(lambda i: tot_bfs_planner(i, config, q_value), BFS_TREE)
    # Depth 1 keeps b, c; depth 2 pools b1 .3, b2 .8, b3 .4, c1 .6, c2 .2, c3 .1 and keeps
    # b2 and c1 (finished); depth 3 keeps z1 (finished: two states done) and z2.
    assert expanded == [[0], [2, 3], [5]]
    assert [(t.node_id, t.score) for t in result.trajectories] == [(7, .6), (10, .7)]
    assert result.outcome is Outcome.complete and result.steps == ("b", "b2", "z1")


def test_bfs_with_a_prm_keeps_the_best_b_states_by_aggregated_reward():
    config = ToTConfig(k=3, keep=2)
    result, expanded = search(lambda i: tot_bfs_planner(i, config, process_value), BFS_TREE,
                              lambda fake: RuleUtility(rule=fake.reward_rule))
    # Depth 1 keeps a .9, c .6; depth 2: g = min(parent, r) is a1 .3, a2 .7, a3 .9, c1 .5,
    # c2 .6, c3 .1, so a3 (6) and a2 (5) are kept; depth 3 pools x1 .8, x2 .1, x3 .9, y1 .7
    # and keeps x3 and x1, both finished.
    assert expanded == [[0], [1, 3], [6, 5]]
    assert [(t.node_id, t.score) for t in result.trajectories] == [(12, .9), (10, .8)]
    assert result.steps == ("a", "a3", "x3") and result.score == pytest.approx(.9)


def temperatures(expander_calls):
    return {r.temperature for call in expander_calls for r in call}


def test_bfs_hands_the_beam_its_temperature_depth_limit_and_folds():
    """Q̂ folded by h_agg=min, at temperature .7, two steps deep: depth 2 keeps b2 (.8) and
    c1 (min(.5, .6) = .5, finished), and stops there with c1, valued .5, not .6."""
    config = ToTConfig(k=3, keep=2, temperature=.7, h_agg="min", max_steps=2)
    expander = FakeExpander({0: BFS_TREE})
    [result] = run_search(1, lambda i: tot_bfs_planner(i, config, q_value), expander,
                          HiddenQ(), progress=False)
    assert [[r.node.id for r in call] for call in expander.expand_calls] == [[0], [2, 3]]
    assert temperatures(expander.expand_calls) == {.7}
    assert [(t.node_id, t.score) for t in result.trajectories] == [(7, .5)]
    assert result.steps == ("c", "c1")
    # Rewards summed by agg=sum: x3 is .9 + .95 + .9 = 2.75, x1 .9 + .95 + .8.
    summed = ToTConfig(k=3, keep=2, agg="sum")
    result, expanded = search(lambda i: tot_bfs_planner(i, summed, process_value), BFS_TREE,
                              lambda fake: RuleUtility(rule=fake.reward_rule))
    assert expanded == [[0], [1, 3], [6, 5]] and result.steps == ("a", "a3", "x3")
    assert [(t.node_id, t.score) for t in result.trajectories] == [
        (12, pytest.approx(2.75)), (10, pytest.approx(2.65))]


# Threshold .5: c (3) is pruned at once; a's children (4-6) all fall below it, so the
# search backtracks to b, whose best child b2 (8) leads to the terminal e1 (10).
DFS_TREE = tree({
    "": [child("a", .9), child("b", .6), child("c", .2)],
    "a": [child("a1", .3), child("a2", .4), child("a3", .1, end=True)],
    "b": [child("b1", .7), child("b2", .8), child("b3", .55)],
    "b b2": [child("e1", .9, end=True), child("e2", .6), child("e3", .2)],
})


def test_dfs_backtracks_past_a_pruned_branch():
    planners = []

    def make(i):
        planners.append(ToTDFSPlanner(i, ToTConfig(k=3, threshold=.5), q_value))
        return planners[-1]

    result, expanded = search(make, DFS_TREE)
    assert expanded == [[0], [1], [2], [8]]
    # Pruned in value order within each expansion; the terminal a3 below the threshold
    # is pruned, not collected.
    assert planners[0].pruned == [3, 5, 4, 6, 12]
    assert result.outcome is Outcome.complete and result.steps == ("b", "b2", "e1")
    assert [t.node_id for t in result.trajectories] == [10]


def test_dfs_keeps_a_state_valued_at_the_threshold_and_answers_with_the_best_complete():
    """Threshold .5, n_complete 3: a (1) at exactly .5 is kept, b (2) pruned; a's child y
    (4) is expanded and x (3, .6) collected; y's children collect z2 (6) and z3 (7), both
    .9, and z1 (5, .55). The answer is z2: the best value, ties to the lower node id,
    neither the first state collected (x) nor the last (z1)."""
    spec = tree({"": [child("a", .5), child("b", .3)],
                 "a": [child("x", .6, end=True), child("y", .7)],
                 "a y": [child("z1", .55, end=True), child("z2", .9, end=True),
                         child("z3", .9, end=True)]})
    planners = []

    def make(i):
        planners.append(ToTDFSPlanner(i, ToTConfig(k=3, threshold=.5, n_complete=3),
                                      q_value))
        return planners[-1]

    expander = FakeExpander({0: spec})
    [result] = run_search(1, make, expander, HiddenQ(), progress=False)
    expanded = [[r.node.id for r in call] for call in expander.expand_calls]
    assert expanded == [[0], [1], [4]] and planners[0].pruned == [2]
    assert [t.node_id for t in result.trajectories] == [3, 6, 7, 5]
    assert result.outcome is Outcome.complete and result.node_id == 6
    assert result.steps == ("a", "y", "z2") and result.score == pytest.approx(.9)
    # a after round 2, which expanded it, and the collected x in round 2, not at the end.
    expander.assert_released_promptly()


def test_dfs_samples_at_its_temperature_and_values_by_the_folded_q():
    """Q̂ summed by h_agg=sum lifts a's children over the threshold (a1 1.2, a2 1.3, a3
    1.0): a3 ends, so the search stops after a, answering a3 valued 1.0, c (.2) pruned."""
    planners = []

    def make(i):
        planners.append(ToTDFSPlanner(i, ToTConfig(k=3, threshold=.5, temperature=.7,
                                                   h_agg="sum"), q_value))
        return planners[-1]

    expander = FakeExpander({0: DFS_TREE})
    [result] = run_search(1, make, expander, HiddenQ(), progress=False)
    assert [[r.node.id for r in call] for call in expander.expand_calls] == [[0], [1]]
    assert temperatures(expander.expand_calls) == {.7} and planners[0].pruned == [3]
    assert result.steps == ("a", "a3") and result.score == pytest.approx(1.0)


def test_dfs_merges_a_repeated_step_into_one_state():
    """The root's second "a" is dropped (no node, its handle released): a (1) is expanded
    once, its children (3-5) pruned, and the search backtracks to b (2)."""
    spec = tree({"": [child("a", .9), child("a", .9), child("b", .6)],
                 "a": [child("a1", .3), child("a2", .2), child("a3", .1)],
                 "b": [child("e1", .8, end=True)]})
    planners = []

    def make(i):
        planners.append(ToTDFSPlanner(i, ToTConfig(k=3, threshold=.5), q_value))
        return planners[-1]

    result, expanded = search(make, spec)
    assert expanded == [[0], [1], [2]] and planners[0].pruned == [3, 4, 5]
    assert result.steps == ("b", "e1") and result.node_id == 6


@pytest.mark.parametrize("max_expansions, answer, value", [(1, ("a",), .9), (2, ("b",), .6)])
def test_dfs_stops_at_the_step_limit_with_the_best_state_left_unexpanded(max_expansions,
                                                                         answer, value):
    """One expansion leaves a (.9) and b (.6) on the stack: a answers, not the root. Two
    expand a, whose children are all pruned: b, the state left, answers, as A* answers
    from its frontier."""
    config = ToTConfig(k=3, threshold=.5, max_expansions=max_expansions)
    result, expanded = search(lambda i: ToTDFSPlanner(i, config, q_value), DFS_TREE)
    assert expanded == [[0], [1]][:max_expansions]
    assert result.outcome is Outcome.partial and result.steps == answer
    assert result.score == pytest.approx(value) and result.trajectories == ()


def test_dfs_does_not_go_deeper_than_max_steps_and_answers_the_best_state_cut_there():
    config = ToTConfig(k=3, threshold=.5, max_steps=1)
    result, expanded = search(lambda i: ToTDFSPlanner(i, config, q_value), DFS_TREE)
    assert expanded == [[0]]
    assert result.outcome is Outcome.partial and result.steps == ("a",)
    assert result.score == pytest.approx(.9)


def test_dfs_says_how_many_states_it_pruned():
    """A threshold above every value prunes all three of the root's children: the answer
    is the empty root, and the result says three states were pruned."""
    config = ToTConfig(k=3, threshold=.95)
    result, expanded = search(lambda i: ToTDFSPlanner(i, config, q_value), DFS_TREE)
    assert expanded == [[0]]
    assert result.outcome is Outcome.partial and result.steps == ()
    assert result.pruned == 3
    backtracked, _ = search(lambda i: ToTDFSPlanner(i, ToTConfig(k=3, threshold=.5), q_value),
                            DFS_TREE)
    assert backtracked.pruned == 5


def test_dfs_collects_a_terminal_state_at_max_steps():
    """max_steps 2: a's children are at the limit; the terminal a1 (.8) is collected, the
    open a2 (.7) is dropped, and the answer is a1, complete."""
    spec = tree({"": [child("a", .9)], "a": [child("a1", .8, end=True), child("a2", .7)]})
    config = ToTConfig(k=2, threshold=.5, max_steps=2)
    result, expanded = search(lambda i: ToTDFSPlanner(i, config, q_value), spec)
    assert expanded == [[0], [1]]
    assert result.outcome is Outcome.complete and result.steps == ("a", "a1")
    assert [(t.node_id, t.score) for t in result.trajectories] == [(2, .8)]


def test_best_by_takes_the_highest_value_and_ties_to_the_lowest_node_id():
    nodes = [SimpleNamespace(id=i, v=v) for i, v in [(5, .2), (7, .9), (3, .9), (4, .1)]]
    assert best_by(nodes, lambda node: node.v).id == 3
    assert best_by(nodes, lambda node: -node.v).id == 4


def test_bad_tot_config_is_a_clear_error():
    with pytest.raises(ValueError, match="keep must be an integer >= 1"):
        ToTConfig(keep=0)
    with pytest.raises(ValueError, match="max_expansions must be an integer >= 1, got 0"):
        ToTConfig(max_expansions=0)
    with pytest.raises(ValueError, match=r"temperature must be >= 0 \(0 = greedy\), got -1"):
        ToTConfig(temperature=-1.0)
