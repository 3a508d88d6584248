import dataclasses
import json

import pytest

from qstar_jax.search.aggregate import Agg
from qstar_jax.search.astar import AStarConfig, AStarPlanner, Budget
from qstar_jax.search.driver import run_search
from qstar_jax.search.planner import Outcome
from qstar_jax.search.process_utility import RuleUtility, ZeroUtility
from tests.search.fakes import FakeExpander, HiddenQ, child, tree

# With g = 0 and λ = 1, f = Q̂. By hand: expand root (0); frontier b .9, a .5, c .2;
# expand b (2) -> b1 .3 (4), b2 .4 (5); expand a (1) -> a1 .8 end (6), a2 .6 (7);
# pop a1: complete #1; expand a2 (7) -> x .1 end (8); expand b2 (5) -> y .45 end (9);
# pop y: complete #2.
QSTAR_TREE = tree({
    "": [child("a", .5, tokens=2), child("b", .9, tokens=3), child("c", .2, tokens=4)],
    "b": [child("b1", .3, tokens=5), child("b2", .4, tokens=6)],
    "a": [child("a1", .8, tokens=7, end=True), child("a2", .6, tokens=8)],
    "a a2": [child("x", .1, tokens=9, end=True)],
    "b b2": [child("y", .45, tokens=10, end=True)],
    "b b1": [],
    "c": [],
})


def search(trees, config, *, utility=ZeroUtility(), problems=None):
    problems = list(trees) if problems is None else problems
    expander, q_fn = FakeExpander(trees), HiddenQ()
    results = run_search(len(problems), lambda i: AStarPlanner(problems[i], config), expander,
                         q_fn, utility, include_trees=True, progress=False)
    assert not expander.live, "every handle is released"
    return results, expander, q_fn


def test_expands_in_best_first_order_and_returns_the_best_complete_trajectory():
    [result], expander, q_fn = search({0: QSTAR_TREE}, AStarConfig(k=3, n_complete=2))
    assert result.tree["expansion_order"] == [0, 2, 1, 7, 5]
    assert result.outcome is Outcome.complete and result.completed
    assert result.steps == ("a", "a1") and result.node_id == 6
    assert result.score == pytest.approx(.8)
    assert [(t.node_id, t.steps) for t in result.trajectories] == [(6, ("a", "a1")),
                                                                 (9, ("b", "b2", "y"))]
    assert [t.score for t in result.trajectories] == pytest.approx([.8, .45])
    c = result.counters
    assert (c.expansions, c.q_calls, c.prm_calls) == (5, 9, 0)
    assert c.generated_tokens == sum(range(2, 11)) and c.prefilled_tokens == 10
    assert q_fn.batches == [3, 2, 2, 1, 1] and len(expander.expand_calls) == 5
    assert expander.issued == 9
    nodes = result.tree["nodes"]
    assert [n["id"] for n in nodes] == list(range(10))
    assert {n["id"]: n["expansion_index"] for n in nodes
            if n["expansion_index"] is not None} == {0: 0, 2: 1, 1: 2, 7: 3, 5: 4}
    y = nodes[9]
    assert (y["parent"], y["steps"], y["depth"], y["terminal"]) == (5, ["b", "b2", "y"], 3, True)
    assert (y["g"], y["h"], y["f"]) == (0.0, .45, .45)
    json.dumps(result.tree)  # the dump is plain JSON


def test_handles_are_released_as_soon_as_their_node_cannot_be_expanded():
    _, expander, _ = search({0: QSTAR_TREE}, AStarConfig(k=3, n_complete=2))
    expander.assert_released_promptly()


def test_stops_after_n_complete_trajectories():
    [one], _, _ = search({0: QSTAR_TREE}, AStarConfig(k=3, n_complete=1))
    assert one.tree["expansion_order"] == [0, 2, 1]
    assert [t.node_id for t in one.trajectories] == [6]
    assert one.steps == ("a", "a1") and one.counters.expansions == 3
    # With no N reached the search runs until the frontier is empty.
    [all_of_it], _, _ = search({0: QSTAR_TREE}, AStarConfig(k=3, n_complete=6))
    assert [t.node_id for t in all_of_it.trajectories] == [6, 9, 8]
    assert all_of_it.tree["expansion_order"] == [0, 2, 1, 7, 5, 4, 3]


def test_several_expansions_per_round_pop_the_best_nodes_together():
    config = AStarConfig(k=3, n_complete=2, expansions_per_round=2)
    [result], expander, _ = search({0: QSTAR_TREE}, config)
    assert [[r.node.id for r in call] for call in expander.expand_calls] == [[0], [2, 1], [7, 5]]
    assert result.steps == ("a", "a1")
    assert [t.node_id for t in result.trajectories] == [6, 9]


LAMBDA_TREE = tree({
    "": [child("a", .9), child("b", .2, reward=.5)],
    "a": [child("a1", .1, end=True)],
    "b": [child("b1", 0., reward=.5, end=True)],
})


@pytest.mark.parametrize("weight, order, answer", [(1.0, [0, 1, 2], ("b", "b1")),
                                                   (0.1, [0, 2], ("b", "b1")),
                                                   (10.0, [0, 1, 2], ("a", "a1"))])
def test_lam_trades_q_against_g(weight, order, answer):
    expander = FakeExpander({0: LAMBDA_TREE})
    config = AStarConfig(k=2, n_complete=1, lam=weight, agg=Agg.last)
    [result], _, _ = search({0: LAMBDA_TREE}, config,
                            utility=RuleUtility(rule=expander.reward_rule))
    assert result.tree["expansion_order"] == order
    assert result.steps == answer
    f = {n["id"]: n["f"] for n in result.tree["nodes"]}
    assert f[1] == pytest.approx(0.0 + weight * .9) and f[2] == pytest.approx(.5 + weight * .2)


# Rewards only (Q̂ = 0): after root and a, a1's g decides whether b is expanded.
AGG_TREE = tree({
    "": [child("a", 0., reward=.9), child("b", 0., reward=.5)],
    "a": [child("a1", 0., reward=.1, end=True)],
    "b": [child("b1", 0., reward=.6, end=True)],
})


@pytest.mark.parametrize("agg, g_a1, g_b1, answer", [
    (Agg.min, .1, .5, ("b", "b1")),
    (Agg.last, .1, .6, ("b", "b1")),
    (Agg.product, .09, .3, ("b", "b1")),
    (Agg.sum, 1.0, None, ("a", "a1")),
    (Agg.max, .9, None, ("a", "a1")),
])
def test_aggregation_of_process_rewards_sets_g_and_the_order(agg, g_a1, g_b1, answer):
    expander = FakeExpander({0: AGG_TREE})
    config = AStarConfig(k=2, n_complete=1, agg=agg)
    [result], _, _ = search({0: AGG_TREE}, config, utility=RuleUtility(rule=expander.reward_rule))
    g = {tuple(n["steps"]): n["g"] for n in result.tree["nodes"]}
    assert g[("a", "a1")] == pytest.approx(g_a1)
    if g_b1 is None:  # a1 outranks b: b is never expanded
        assert result.tree["expansion_order"] == [0, 1] and ("b", "b1") not in g
    else:
        assert g[("b", "b1")] == pytest.approx(g_b1)
        assert result.tree["expansion_order"] == [0, 1, 2]
    assert result.steps == answer


def test_h_folds_the_q_of_the_paths_edges_by_h_agg():
    """With h_agg = product a node's h is the product of its path's Q̂: b2 (.9 x .4) falls
    below a2 (.5 x .6), which Q̂ of the last edge alone ranks the other way round."""
    config = AStarConfig(k=3, n_complete=2, h_agg=Agg.product)
    [result], _, _ = search({0: QSTAR_TREE}, config)
    h = {tuple(n["steps"]): n["h"] for n in result.tree["nodes"]}
    assert h[("b", "b2")] == pytest.approx(.36) and h[("a", "a2")] == pytest.approx(.3)
    assert h[("b", "b2", "y")] == pytest.approx(.162) and h[("a", "a2", "x")] == pytest.approx(.03)
    assert result.tree["expansion_order"] == [0, 2, 1, 5, 7, 4, 3]
    assert [t.steps for t in result.trajectories] == [("a", "a1"), ("b", "b2", "y")]
    assert result.steps == ("a", "a1") and result.score == pytest.approx(.4)
    with pytest.raises(ValueError, match="unknown aggregation"):
        AStarConfig(h_agg="mean")


def test_identical_siblings_merge_into_the_first_sample():
    duplicates = tree({"": [child("a", .3, tokens=2), child("a", .9, tokens=3),
                            child("b", .1, tokens=4, end=True)],
                       "a": [child("a1", .5, end=True)]})
    [result], expander, q_fn = search({0: duplicates}, AStarConfig(k=3, n_complete=2))
    nodes = {n["id"]: (tuple(n["steps"]), n["h"]) for n in result.tree["nodes"]}
    assert nodes == {0: ((), 0.0), 1: (("a",), .3), 2: (("b",), .1), 3: (("a", "a1"), .5)}
    assert result.counters.generated_tokens == 2 + 3 + 4 + 1  # the duplicate was generated
    assert result.counters.q_calls == 4 and q_fn.batches == [3, 1]
    # The duplicate's handle (issued second) is released in the round that produced it.
    assert 2 in expander.release_calls[0]


def test_expansion_budget_falls_back_to_the_best_frontier_node():
    config = AStarConfig(k=3, n_complete=2, budget=Budget(max_expansions=2))
    [result], _, _ = search({0: QSTAR_TREE}, config)
    assert result.tree["expansion_order"] == [0, 2]
    assert result.outcome is Outcome.partial and not result.completed
    assert result.steps == ("a",) and result.score == pytest.approx(.5)
    assert result.trajectories == () and result.counters.expansions == 2


def test_goal_test_is_free_once_the_expansion_budget_is_spent():
    config = AStarConfig(k=3, n_complete=2, budget=Budget(max_expansions=3))
    [result], _, _ = search({0: QSTAR_TREE}, config)
    assert result.tree["expansion_order"] == [0, 2, 1]
    assert result.outcome is Outcome.complete and result.steps == ("a", "a1")


def test_budget_falls_back_to_a_terminal_the_search_did_not_reach():
    low_terminal = tree({"": [child("a", .9), child("t", .1, end=True)]})
    config = AStarConfig(k=2, budget=Budget(max_expansions=1))
    [result], _, _ = search({0: low_terminal}, config)
    # The answer ends in a terminal step, so it is complete and evaluate grades it.
    assert result.outcome is Outcome.terminal_over_budget and result.completed
    assert result.steps == ("t",) and result.score == pytest.approx(.1)


def test_over_budget_the_fallback_is_the_unreached_terminal_of_highest_f():
    # After the root's one expansion the frontier holds a (.9) above three terminals
    # listed .2, .3, .1: the answer is the .3 one, neither the first nor the last.
    terminals = tree({"": [child("a", .9), child("t1", .2, end=True),
                           child("t2", .3, end=True), child("t3", .1, end=True)]})
    config = AStarConfig(k=4, budget=Budget(max_expansions=1))
    [result], _, _ = search({0: terminals}, config)
    assert result.outcome is Outcome.terminal_over_budget
    assert result.steps == ("t2",) and result.score == pytest.approx(.3)


@pytest.mark.parametrize("max_tokens, expansions", [(6, 1), (9, 1), (10, 2), (20, 2), (21, 3)])
def test_token_budget_is_checked_before_each_round(max_tokens, expansions):
    # The root's children cost 2 + 3 + 4 = 9 tokens, b's 5 + 6: 20 in all after two.
    config = AStarConfig(k=3, n_complete=2,
                         budget=Budget(max_generated_tokens=max_tokens))
    [result], _, _ = search({0: QSTAR_TREE}, config)
    assert result.counters.expansions == expansions


# Six root children of seven tokens sampled as a trie: the five b's share a's first six
# tokens, so the expander charges 7 + 5 · 1 = 12 of the 42 the steps hold; a1 costs 3.
TRIE_TREE = tree({
    "": [child("a", .9, tokens=7)] + [child(f"b{i}", .1, tokens=7, charged=1)
                                      for i in range(5)],
    "a": [child("a1", .8, tokens=3, end=True)],
})


@pytest.mark.parametrize("max_tokens, expansions", [(12, 1), (13, 2), (30, 2)])
def test_token_budget_counts_the_tokens_the_expander_charged(max_tokens, expansions):
    config = AStarConfig(k=6, n_complete=1, budget=Budget(max_generated_tokens=max_tokens))
    [result], _, _ = search({0: TRIE_TREE}, config)
    assert result.counters.expansions == expansions
    assert result.counters.generated_tokens == 12 + 3 * (expansions - 1)


# a (.9) leads to the best answer x (.95), three steps deep; b's b1 (.4) ends at two.
DEEP_TREE = tree({
    "": [child("a", .9), child("b", .5)],
    "a": [child("a1", .8), child("a2", .1, end=True)],
    "a a1": [child("x", .95, end=True)],
    "b": [child("b1", .4, end=True)],
})


def test_max_steps_cuts_a_path_as_the_baselines_chains_are_cut():
    """At max_steps 2, a1 (depth 2, open) is not expanded, as a greedy or best-of-N chain
    is cut there: the search goes on to b and answers b b1, not a a1 x three steps deep;
    a1's handle is freed when it is cut. Without the limit the search takes a a1 x."""
    [cut], expander, _ = search({0: DEEP_TREE}, AStarConfig(k=2, n_complete=1, max_steps=2))
    assert cut.tree["expansion_order"] == [0, 1, 2]
    assert cut.outcome is Outcome.complete and cut.steps == ("b", "b1")
    a1_handle = 3  # issued third: a, b, then a1
    assert expander.released_after[a1_handle] == expander.issued_in[a1_handle] == 2
    expander.assert_released_promptly()
    [deep], _, _ = search({0: DEEP_TREE}, AStarConfig(k=2, n_complete=1))
    assert deep.steps == ("a", "a1", "x") and deep.tree["expansion_order"] == [0, 1, 3]


def test_a_search_cut_everywhere_answers_the_best_cut_node_as_partial():
    """At max_steps 1 the root's children a (.9) and b (.5) are both cut: the search ends
    after one expansion with the partial a, as a chain cut unfinished answers its tip."""
    [result], _, _ = search({0: DEEP_TREE}, AStarConfig(k=2, max_steps=1))
    assert result.tree["expansion_order"] == [0]
    assert result.outcome is Outcome.partial and result.steps == ("a",)
    assert result.score == pytest.approx(.9)


def test_a_root_without_children_gives_the_empty_partial_answer():
    [result], _, _ = search({0: tree({"": []})}, AStarConfig())
    assert result.outcome is Outcome.partial and result.steps == () and result.node_id == 0


def test_results_do_not_depend_on_batch_packing():
    trees = {0: QSTAR_TREE, 1: LAMBDA_TREE, 2: AGG_TREE}
    config = AStarConfig(k=3, n_complete=2)

    def comparable(result):
        counters = {k: v for k, v in vars(result.counters).items() if k != "wall_s"}
        return (result.problem_index, result.steps, result.outcome, result.score,
                result.trajectories, result.tree, counters)

    together, expander, q_fn = search(trees, config)
    alone = [search({i: trees[i]}, config)[0][0] for i in trees]
    reordered, _, _ = search(trees, config, problems=[2, 0, 1])
    assert [comparable(r) for r in together] == [comparable(r) for r in alone]
    assert (sorted(map(comparable, reordered), key=lambda c: c[0])
            == [comparable(r) for r in together])
    # One expander call and one Q̂ call per round, across problems.
    rounds = max(len(r.tree["expansion_order"]) for r in together)
    assert len(expander.expand_calls) == rounds and len(q_fn.batches) == rounds
    assert sum(q_fn.batches) == sum(r.counters.q_calls for r in together)


@pytest.mark.parametrize("make, message", [
    (lambda: AStarConfig(k=0), "k must be an integer >= 1"),
    (lambda: AStarConfig(k=True), "k must be an integer >= 1, got True"),
    (lambda: AStarConfig(n_complete=2.0), "n_complete must be an integer >= 1, got 2.0"),
    (lambda: AStarConfig(agg="mean"), "unknown aggregation 'mean'"),
    (lambda: AStarConfig(temperature=-1.0), "temperature must be >= 0"),
    (lambda: Budget(max_expansions=-1), "max_expansions must be an integer >= 0"),
    (lambda: Budget(max_generated_tokens=-1), "max_generated_tokens must be an integer >= 0 or "
                                              "None, got -1"),
    (lambda: Budget(max_expansions=2.5), "max_expansions must be an integer >= 0 or None, "
                                         "got 2.5"),
    (lambda: AStarConfig(budget={"max_expansions": 3}), "budget must be a Budget, got dict"),
    (lambda: AStarConfig(lam="1"), "lam must be a finite number, got '1'"),
    (lambda: AStarConfig(lam=float("nan")), "lam must be a finite number, got nan"),
    (lambda: AStarConfig(temperature=float("inf")), "temperature must be a finite number"),
    (lambda: AStarConfig(expansions_per_round=0), "expansions_per_round must be an integer >= 1"),
    (lambda: AStarConfig(expansions_per_node=0), "expansions_per_node must be an integer >= 1"),
    (lambda: AStarConfig(max_steps=0), "max_steps must be an integer >= 1 or None, got 0"),
])
def test_bad_config_is_a_clear_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_equal_scores_go_to_the_deeper_node_first():
    """A saturated Q̂: every child scores 1. Ties to depth follow one path down (root, a,
    a1) to its end instead of expanding a's siblings b and c first, as ties to age would."""
    saturated = tree({
        "": [child("a", 1.), child("b", 1.), child("c", 1.)],
        "a": [child("a1", 1.), child("a2", 1.)],
        "a a1": [child("z", 1., end=True)],
    })
    [result], _, _ = search({0: saturated}, AStarConfig(k=3, n_complete=1))
    assert result.tree["expansion_order"] == [0, 1, 4]
    assert result.steps == ("a", "a1", "z") and result.completed


# Expanding "a" once gives a1 and a2; a second expansion asks for children 2 and 3: a2
# again (merged into the first) and a3, the solution the first two samples missed.
REEXPAND_TREE = tree({
    "": [child("a", .9), child("b", .1)],
    "a": [child("a1", .2), child("a2", .3), child("a2", .3), child("a3", .95, end=True)],
    "a a2": [child("z", .25, end=True)],
    "a a1": [], "b": [],
})


def test_a_node_expanded_again_samples_new_steps_while_it_outscores_its_children():
    config = AStarConfig(k=2, n_complete=1)
    [once], _, _ = search({0: REEXPAND_TREE}, config)
    assert once.tree["expansion_order"] == [0, 1, 4] and once.steps == ("a", "a2", "z")

    again = dataclasses.replace(config, expansions_per_node=2)
    [result], expander, _ = search({0: REEXPAND_TREE}, again)
    # a (.9) goes back on the frontier above its children (.2, .3) and is expanded again.
    assert result.tree["expansion_order"] == [0, 1, 1]
    assert [r.first_child for call in expander.expand_calls for r in call] == [0, 0, 2]
    assert result.steps == ("a", "a3") and result.node_id == 5
    assert [n["steps"] for n in result.tree["nodes"]].count(["a", "a2"]) == 1
    # a's slot is kept for its second expansion and freed right after it.
    a_handle = expander.expand_calls[1][0].node.handle
    assert expander.expand_calls[2][0].node.handle == a_handle
    assert expander.released_after[a_handle] == 3
    assert result.counters.generated_tokens == 6  # the merged duplicate still cost its token


def test_the_root_goes_back_on_the_frontier_at_its_best_childs_f():
    spec = tree({"": [child("a", .3), child("b", .8, end=True)],
                 "a": [child("a1", .1), child("a2", .05)], "a a1": [], "a a2": []})
    config = AStarConfig(k=1, n_complete=1, expansions_per_node=2)
    [result], _, _ = search({0: spec}, config)
    # The root re-enters at .3 (its child a): behind a (a tie, a is deeper) but ahead of
    # a's children, so once a has had both its expansions the root samples b.
    assert result.tree["expansion_order"] == [0, 1, 1, 0]
    assert result.steps == ("b",)
    # A node expanded twice is dumped with its last expansion's index.
    assert [n["expansion_index"] for n in result.tree["nodes"][:2]] == [3, 2]


def test_the_root_re_enters_at_the_highest_f_of_its_children_not_the_last():
    """k = 2: the root's first expansion gives a (.6) then b (.2); it re-enters at .6,
    so after a's two expansions (a deeper tie, then nothing new) it is expanded again
    before a1 (.4), a2 (.3) and b, and samples the answer c. At b's .2 it would come
    after every other node had had both its expansions."""
    spec = tree({"": [child("a", .6), child("b", .2), child("c", .9, end=True),
                      child("d", .1)],
                 "a": [child("a1", .4), child("a2", .3)], "a a1": [], "a a2": [], "b": []})
    config = AStarConfig(k=2, n_complete=1, expansions_per_node=2)
    [result], _, _ = search({0: spec}, config)
    assert result.tree["expansion_order"] == [0, 1, 1, 0]
    assert result.steps == ("c",) and result.node_id == 5


def test_the_root_re_enters_at_the_best_f_of_all_its_expansions_children():
    """k = 1, three expansions a node: the root's first child a (.6) has no children, so
    a spends its three expansions; the root's second child b scores .2, yet the root
    re-enters at a's .6, still its best child, and samples the answer c next. At b's .2 it
    would tie b and come after b's three expansions."""
    spec = tree({"": [child("a", .6), child("b", .2), child("c", .9, end=True)],
                 "a": [], "b": []})
    config = AStarConfig(k=1, n_complete=1, expansions_per_node=3)
    [result], _, _ = search({0: spec}, config)
    assert result.tree["expansion_order"] == [0, 1, 1, 1, 0, 0]
    assert result.steps == ("c",) and result.node_id == 3


def test_the_root_re_enters_at_its_best_childs_f_when_every_child_is_below_zero():
    """Children a (-.2) and b (-.5): the root re-enters at -.2, where a, deeper, goes
    first and reaches a1; at a floor of 0 the root would be sampled again before a."""
    spec = tree({"": [child("a", -.2), child("b", -.5)], "a": [child("a1", .5, end=True)]})
    config = AStarConfig(k=2, n_complete=1, expansions_per_node=2)
    [result], _, _ = search({0: spec}, config)
    assert result.tree["expansion_order"] == [0, 1]
    assert result.steps == ("a", "a1") and result.node_id == 3


def test_a_terminal_on_top_between_a_rounds_pops_is_goal_tested_not_expanded():
    """Two expansions a round: once a (.9) is popped, the terminal t (.8) is on top; it is
    counted complete and the round's second node is b (.7), not t."""
    spec = tree({"": [child("a", .9), child("t", .8, end=True), child("b", .7)],
                 "a": [child("a1", .6, end=True)], "b": [child("b1", .5, end=True)]})
    config = AStarConfig(k=3, n_complete=2, expansions_per_round=2)
    [result], expander, _ = search({0: spec}, config)
    assert [[r.node.id for r in call] for call in expander.expand_calls] == [[0], [1, 3]]
    assert [t.node_id for t in result.trajectories] == [2, 4]
    assert result.steps == ("t",) and result.score == pytest.approx(.8)


def test_the_answer_is_the_best_complete_trajectory_not_the_first_reached():
    # t (.6) is popped first; a's child a1 (.9) is generated and reached after it.
    spec = tree({"": [child("t", .6, end=True), child("a", .5)],
                 "a": [child("a1", .9, end=True)]})
    [result], _, _ = search({0: spec}, AStarConfig(k=2, n_complete=2))
    assert result.tree["expansion_order"] == [0, 2]
    assert [(t.node_id, t.score) for t in result.trajectories] == [(1, .6), (3, .9)]
    assert result.steps == ("a", "a1") and result.node_id == 3 and result.score == .9


def test_a_complete_trajectory_beats_a_better_terminal_the_budget_left_unreached():
    """Two expansions: t (.5) is reached, then a gives a1 (.95) and the terminal a2 (.9).
    The budget is spent with a1 on top, so a2 is never popped: the answer is t, complete,
    the one trajectory."""
    spec = tree({"": [child("t", .5, end=True), child("a", .4)],
                 "a": [child("a1", .95), child("a2", .9, end=True)]})
    config = AStarConfig(k=2, n_complete=2, budget=Budget(max_expansions=2))
    [result], _, _ = search({0: spec}, config)
    assert result.tree["expansion_order"] == [0, 2]
    assert result.outcome is Outcome.complete
    assert (result.steps, result.node_id, result.score) == (("t",), 1, .5)
    assert [(t.node_id, t.score) for t in result.trajectories] == [(1, .5)]


def test_complete_trajectories_tied_on_f_go_to_the_lower_node_id():
    # a1 (3) and s (2) tie at .4: a1, deeper, is popped first, but s is the answer.
    spec = tree({"": [child("a", .9), child("s", .4, end=True)],
                 "a": [child("a1", .4, end=True)]})
    [result], _, _ = search({0: spec}, AStarConfig(k=2, n_complete=2))
    assert [t.node_id for t in result.trajectories] == [3, 2]
    assert result.steps == ("s",) and result.node_id == 2


def test_a_partial_answer_is_the_best_f_frontier_node_not_the_re_entered_root():
    """Two expansions a node, a budget of 3: the root, then a twice (its second asks for
    children 2 and 3, which do not exist). The root is back on the frontier at its best
    child's .6, above b (.3), but its own f is 0 and it has no steps: the answer is b."""
    spec = tree({"": [child("a", .6), child("b", .3)],
                 "a": [child("a1", .1), child("a2", .05)]})
    config = AStarConfig(k=2, expansions_per_node=2, budget=Budget(max_expansions=3))
    [result], _, _ = search({0: spec}, config)
    assert result.tree["expansion_order"] == [0, 1, 1]
    assert result.outcome is Outcome.partial
    assert (result.steps, result.node_id, result.score) == (("b",), 2, .3)


def test_a_partial_answer_has_steps_when_every_frontier_node_is_below_the_roots_zero():
    """As above with every f below zero (the MBPP rule's rewards are -0.5): the root is
    back at a's -.2, a is expanded twice, and the frontier holds the root (its own f 0),
    b (-.5), a1 (-.6) and a2 (-.7). The answer is b, not the root with no steps."""
    spec = tree({"": [child("a", -.2), child("b", -.5)],
                 "a": [child("a1", -.6), child("a2", -.7)]})
    config = AStarConfig(k=2, expansions_per_node=2, budget=Budget(max_expansions=3))
    [result], _, _ = search({0: spec}, config)
    assert result.tree["expansion_order"] == [0, 1, 1]
    assert result.outcome is Outcome.partial
    assert (result.steps, result.node_id, result.score) == (("b",), 2, -.5)


@pytest.mark.parametrize("limit", ["max_expansions", "max_generated_tokens"])
def test_a_budget_of_nothing_answers_the_empty_root_without_a_call(limit):
    config = AStarConfig(k=3, budget=Budget(**{limit: 0}))
    [result], expander, q_fn = search({0: QSTAR_TREE}, config)
    assert expander.expand_calls == [] and q_fn.batches == []
    assert result.outcome is Outcome.partial and result.steps == () and result.node_id == 0
    c = result.counters
    assert (c.expansions, c.generated_tokens, c.prefilled_tokens, c.q_calls) == (0, 0, 0, 0)


def test_the_last_round_expands_only_what_the_expansion_budget_has_left():
    # Two a round under a budget of 4: root, then b and a, then a2 alone (b2 would be
    # the round's second); a1 was reached on the way.
    config = AStarConfig(k=3, n_complete=2, expansions_per_round=2,
                         budget=Budget(max_expansions=4))
    [result], expander, _ = search({0: QSTAR_TREE}, config)
    assert [[r.node.id for r in call] for call in expander.expand_calls] == [[0], [2, 1], [7]]
    assert result.counters.expansions == 4
    assert [t.node_id for t in result.trajectories] == [6] and result.steps == ("a", "a1")


def test_expansions_ask_for_k_children_at_the_configs_temperature():
    [_], expander, _ = search({0: QSTAR_TREE}, AStarConfig(k=3, n_complete=1, temperature=.5))
    assert [(r.node.steps, r.num_children, r.temperature, r.first_child)
            for call in expander.expand_calls for r in call] == [
        ((), 3, .5, 0), (("b",), 3, .5, 0), (("a",), 3, .5, 0)]


def test_the_n_th_complete_trajectory_reached_mid_round_ends_the_search_unexpanded():
    """Two expansions a round, N = 1: a (.9) is popped, then t (.8) is reached, the one
    complete trajectory asked for; a is not expanded."""
    spec = tree({"": [child("a", .9), child("t", .8, end=True), child("b", .7)],
                 "a": [child("a1", .6, end=True)]})
    config = AStarConfig(k=3, n_complete=1, expansions_per_round=2)
    [result], expander, _ = search({0: spec}, config)
    assert [[r.node.id for r in call] for call in expander.expand_calls] == [[0]]
    assert result.counters.expansions == 1 and result.counters.generated_tokens == 3
    assert result.steps == ("t",) and [t.node_id for t in result.trajectories] == [2]


def test_the_token_budget_counts_the_merged_duplicates_tokens():
    # The root's children cost 4 + 4 + 1 = 9 tokens, the duplicate a included: a budget
    # of 6 is spent after them (5 tokens without the duplicate would leave room).
    spec = tree({"": [child("a", .9, tokens=4), child("a", .9, tokens=4),
                      child("b", .1, tokens=1)],
                 "a": [child("a1", .5, end=True)]})
    config = AStarConfig(k=3, budget=Budget(max_generated_tokens=6))
    [result], _, _ = search({0: spec}, config)
    assert result.tree["expansion_order"] == [0]
    assert result.outcome is Outcome.partial and result.steps == ("a",)
    assert result.counters.generated_tokens == 9


def test_the_same_step_under_two_parents_is_two_nodes():
    # "=5" after a (.3) and after b (.7): cousins, not siblings, so neither is merged.
    spec = tree({"": [child("a", .9), child("b", .8)],
                 "a": [child("=5", .3, end=True)], "b": [child("=5", .7, end=True)]})
    [result], _, _ = search({0: spec}, AStarConfig(k=2, n_complete=2))
    assert result.tree["expansion_order"] == [0, 1, 2]
    assert [(t.node_id, t.steps) for t in result.trajectories] == [(4, ("b", "=5")),
                                                                 (3, ("a", "=5"))]
    assert result.steps == ("b", "=5") and result.score == .7
