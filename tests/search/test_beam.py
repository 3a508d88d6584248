import pytest

from qstar_jax.search.aggregate import Agg
from qstar_jax.search.beam import BeamConfig, BeamPlanner
from qstar_jax.search.driver import run_search
from qstar_jax.search.planner import Outcome
from qstar_jax.search.process_utility import RuleUtility
from tests.search.fakes import FakeExpander, HiddenQ, child, tree

# B = 2, K = 3, f = Q̂. Round 1 keeps b .9 (2), c .7 (3), drops a (1). Round 2 pools
# b1 .2 (4), b2 .6 (5), b3 .95 end (6), c1 .8 (7), c2 .1 (8), c3 .3 (9): keeps b3
# (finished) and c1. Round 3 pools d1 .4 end (10), d2 .3 (11), d3 .35 (12): keeps d1
# (finished: two beams done) and d3.
BEAM_TREE = tree({
    "": [child("a", .5), child("b", .9), child("c", .7)],
    "b": [child("b1", .2), child("b2", .6), child("b3", .95, end=True)],
    "c": [child("c1", .8), child("c2", .1), child("c3", .3)],
    "c c1": [child("d1", .4, end=True), child("d2", .3), child("d3", .35)],
})


def search(trees, config):
    expander = FakeExpander(trees)
    results = run_search(len(trees), lambda i: BeamPlanner(i, config), expander, HiddenQ(),
                         include_trees=True, progress=False)
    assert not expander.live, "every handle is released"
    return results, expander


def test_keeps_the_top_b_children_and_returns_the_best_finished_beam():
    [result], expander = search({0: BEAM_TREE}, BeamConfig(beam_width=2, k=3))
    assert [[r.node.id for r in call] for call in expander.expand_calls] == [[0], [2, 3], [7]]
    assert result.outcome is Outcome.complete and result.steps == ("b", "b3")
    assert result.score == pytest.approx(.95)
    assert [(t.node_id, t.score) for t in result.trajectories] == [(6, .95), (10, .4)]
    assert result.counters.q_calls == 3 + 6 + 3
    # The dropped child a is released in round 1, before anything else is expanded.
    assert 1 in expander.release_calls[0]
    # b and c after round 2, which expanded them, and the finished b3 in round 2 too.
    expander.assert_released_promptly()


def test_duplicate_children_take_one_beam_slot():
    duplicates = tree({"": [child("a", .9), child("a", .9), child("b", .5)],
                       "a": [child("=1", .1, end=True)], "b": [child("=2", .2, end=True)]})
    [result], expander = search({0: duplicates}, BeamConfig(beam_width=2, k=3))
    assert [[r.node.steps for r in call] for call in expander.expand_calls] == [
        [()], [("a",), ("b",)]]
    assert result.steps == ("b", "=2")


def test_beams_cut_by_max_steps_give_the_best_partial_beam():
    config = BeamConfig(beam_width=2, k=3, max_steps=1)
    [result], expander = search({0: BEAM_TREE}, config)
    assert len(expander.expand_calls) == 1
    assert result.outcome is Outcome.partial and result.steps == ("b",)
    assert result.trajectories == ()


# f = g + λ·h with g summing the rewards, h the largest Q̂ on the path, λ = .5. Round 1
# keeps b (2, f .85) and a (1, f .4), in that order. Round 2: b1 (3) g 1.2, h .9, f 1.65;
# b2 (4) 1.5, .5 (b's Q̂), 1.75; a1 (5) .4, .6, .7; a2 (6) .4, .2, .5: b2 and b1 finish.
# Under λ = 1, g = min or h = last Q̂, b1 would rank first (2.1 > 2.0, 1.05 > .85,
# 1.65 > 1.5).
SCORED_TREE = tree({
    "": [child("a", .2, reward=.3), child("b", .5, reward=.6)],
    "a": [child("a1", .6, reward=.1, end=True), child("a2", .2, reward=.1, end=True)],
    "b": [child("b1", .9, reward=.6, end=True), child("b2", 0., reward=.9, end=True)],
})


def test_beams_rank_by_f_with_the_configs_lambda_agg_and_h_agg():
    expander = FakeExpander({0: SCORED_TREE})
    config = BeamConfig(beam_width=2, k=2, lam=.5, agg=Agg.sum, h_agg=Agg.max)
    [result] = run_search(1, lambda i: BeamPlanner(i, config), expander, HiddenQ(),
                          RuleUtility(rule=expander.reward_rule), progress=False)
    assert result.outcome is Outcome.complete and result.steps == ("b", "b2")
    assert result.score == pytest.approx(1.5 + .5 * .5)
    assert [(t.node_id, t.score) for t in result.trajectories] == [
        (4, pytest.approx(1.75)), (3, pytest.approx(1.65))]


def test_beam_ties_go_to_the_lower_node_id_and_requests_carry_the_temperature():
    # B = 1: y (2) and z (3) tie on f = .9; y is kept, z dropped.
    ties = tree({"": [child("x", .5), child("y", .9), child("z", .9)],
                 "y": [child("=1", .1, end=True)], "z": [child("=2", .8, end=True)]})
    [result], expander = search({0: ties}, BeamConfig(beam_width=1, k=3, temperature=.7))
    assert result.steps == ("y", "=1")
    assert [[(r.node.steps, r.num_children, r.temperature) for r in call]
            for call in expander.expand_calls] == [[((), 3, .7)], [(("y",), 3, .7)]]


@pytest.mark.parametrize("fields, message", [
    ({"beam_width": 0}, "beam_width must be an integer >= 1"),
    ({"k": 0}, "BeamConfig.k must be an integer >= 1, got 0"),
    ({"max_steps": 0}, "max_steps must be an integer >= 1, got 0"),
    ({"temperature": -.5}, "temperature must be >= 0"),
    ({"h_agg": "mean"}, "unknown aggregation 'mean'"),
])
def test_bad_beam_config_is_a_clear_error(fields, message):
    with pytest.raises(ValueError, match=message):
        BeamConfig(**{"beam_width": 2, "k": 3, **fields})


def test_a_beam_finished_later_wins_when_its_f_is_higher():
    # B = 2: round 1 keeps t (.5, finished) and a (.4); round 2 keeps a1 (.9, finished).
    spec = tree({"": [child("t", .5, end=True), child("a", .4)],
                 "a": [child("a1", .9, end=True), child("a2", .1)]})
    [result], _ = search({0: spec}, BeamConfig(beam_width=2, k=2))
    assert [(t.node_id, t.score) for t in result.trajectories] == [(1, .5), (3, .9)]
    assert result.outcome is Outcome.complete and result.steps == ("a", "a1")
    assert result.node_id == 3 and result.score == .9


def test_a_finished_beam_does_not_narrow_the_beams_kept_after_it():
    # B = 2: round 1 keeps t (.5, finished) and a; round 2 still keeps two, a1 (.6) and
    # a2 (.5), and a2's child y (.9) is the answer. Keeping B minus the finished beams
    # would drop a2 and answer t.
    spec = tree({"": [child("t", .5, end=True), child("a", .4)],
                 "a": [child("a1", .6), child("a2", .5)],
                 "a a1": [child("x", .1, end=True)], "a a2": [child("y", .9, end=True)]})
    [result], expander = search({0: spec}, BeamConfig(beam_width=2, k=2))
    assert [[r.node.id for r in call] for call in expander.expand_calls] == [[0], [2], [3, 4]]
    assert [(t.node_id, t.score) for t in result.trajectories] == [(1, .5), (6, .9), (5, .1)]
    assert result.steps == ("a", "a2", "y") and result.node_id == 6


def test_a_round_that_keeps_nothing_leaves_the_last_kept_beams_as_the_answer():
    # Round 1 keeps a (.9) and b (.5); neither has a next step, so round 2 keeps nothing.
    spec = tree({"": [child("a", .9), child("b", .5)], "a": [], "b": []})
    [result], expander = search({0: spec}, BeamConfig(beam_width=2, k=2))
    assert len(expander.expand_calls) == 2
    assert result.outcome is Outcome.partial and result.steps == ("a",)
    assert result.node_id == 1 and result.score == .9



def test_a_value_other_than_f_ranks_the_beams_and_picks_and_scores_the_answer():
    # value = 1 - Q̂ (f = Q̂), B = 2: round 1 keeps a (.8) and c (.4); round 2 keeps a1
    # (.7) and c1 (.6), both finished; f would rank c1 (.4) above a1 (.3).
    spec = tree({"": [child("a", .2), child("b", .9), child("c", .6)],
                 "a": [child("a1", .3, end=True), child("a2", .95)],
                 "c": [child("c1", .4, end=True), child("c2", .9)]})
    [result] = run_search(1, lambda i: BeamPlanner(i, BeamConfig(beam_width=2, k=3),
                                                   value=lambda node: 1 - node.h),
                          FakeExpander({0: spec}), HiddenQ(), include_trees=True,
                          progress=False)
    assert result.tree["expansion_order"] == [0, 1, 3]
    assert result.steps == ("a", "a1") and result.node_id == 4
    assert result.score == pytest.approx(.7)
    assert [(t.node_id, t.score) for t in result.trajectories] == [
        (4, pytest.approx(.7)), (6, pytest.approx(.6))]
