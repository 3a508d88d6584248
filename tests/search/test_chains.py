import dataclasses

import numpy as np
import pytest

from qstar_jax.search.aggregate import Agg
from qstar_jax.search.chains import (ChainConfig, ChainPlanner, greedy_planner,
                                     self_consistency_of, self_consistency_planner)
from qstar_jax.search.driver import run_search
from qstar_jax.search.planner import Outcome
from qstar_jax.search.process_utility import RuleUtility, ZeroUtility
from tests.search.fakes import (FakeExpander, HiddenQ, RoomLimitedExpander, child, tree,
                                without_wall)


def search(trees, make_planner, *, utility=ZeroUtility(), q_fn=None):
    expander = FakeExpander(trees)
    results = run_search(len(trees), make_planner, expander, q_fn, utility, progress=False)
    assert not expander.live, "every handle is released"
    return results, expander


def answer_key(steps):
    return steps[-1] if steps and steps[-1].startswith("=") else None


def by_final_q(finals):
    """Best-of-N's ranking by Q̂: h of each final node."""
    return np.array([node.h for node in finals])


def by_g(finals):
    """Best-of-N's ranking by the PRM: g, the process rewards aggregated along the chain."""
    return np.array([node.g for node in finals])


def test_greedy_follows_the_temperature_zero_children():
    greedy = tree({"": [child("a", .1), child("b", .9)],
                   "a": [child("a1", .2), child("a2", .8, end=True)],
                   "a a1": [child("=5", .4, end=True)]})
    [result], expander = search({0: greedy}, lambda i: greedy_planner(i), q_fn=HiddenQ())
    assert result.steps == ("a", "a1", "=5") and result.outcome is Outcome.complete
    assert result.score == pytest.approx(.4)  # f = g + Q̂ of the final step, g = 0
    requests = [r for call in expander.expand_calls for r in call]
    assert [(r.node.steps, r.num_children, r.temperature) for r in requests] == [
        ((), 1, 0.0), (("a",), 1, 0.0), (("a", "a1"), 1, 0.0)]
    assert result.counters.expansions == 3 and result.counters.generated_tokens == 3


def test_greedy_takes_its_agg_and_max_steps():
    rewarded = tree({"": [child("a", .1, reward=.2)], "a": [child("a1", .2, reward=.3)],
                     "a a1": [child("=5", .4, reward=.5, end=True)]})
    utility = RuleUtility(rule=FakeExpander({0: rewarded}).reward_rule)
    [summed], _ = search({0: rewarded}, lambda i: greedy_planner(i, agg=Agg.sum),
                         utility=utility, q_fn=HiddenQ())
    assert summed.steps == ("a", "a1", "=5")
    assert summed.score == pytest.approx(.2 + .3 + .5 + .4)  # g sums the rewards, + Q̂
    [cut], expander = search({0: rewarded}, lambda i: greedy_planner(i, max_steps=2),
                             utility=utility, q_fn=HiddenQ())
    assert cut.outcome is Outcome.partial and cut.steps == ("a", "a1")
    assert cut.score == pytest.approx(.2 + .2)  # f of the partial chain: min g, + Q̂
    assert len(expander.expand_calls) == 2


# Six chains; answers =3 (chains 0, 3, 4), =4 (chains 1, 2), and no answer (chain 5).
VOTES = tree({"": [child(f"p{i}", 0.) for i in range(6)],
              **{f"p{i}": [child(answer, 0., end=True)]
                 for i, answer in enumerate(["=3", "=4", "=4", "=3", "=3", "none"])}})


def test_self_consistency_returns_the_majority_answer():
    config = ChainConfig(num_chains=6, temperature=0.7)
    [result], expander = search({0: VOTES},
                                lambda i: self_consistency_planner(i, config, answer_key))
    assert result.steps == ("p0", "=3") and result.score == 3.0 and result.completed
    assert [t.score for t in result.trajectories] == [3, 2, 2, 3, 3, 0]
    assert [[(r.num_children, r.temperature) for r in call] for call in expander.expand_calls] == [
        [(6, 0.7)], [(1, 0.7)] * 6]
    assert result.counters.q_calls == 0  # no Q̂ function: none spent
    # One request of 6 children, then one of 1 per chain: 7 requests, 12 one-token steps.
    assert (result.counters.expansions, result.counters.generated_tokens,
            result.counters.prefilled_tokens, result.counters.prm_calls) == (7, 12, 10, 0)


def test_votes_on_best_of_ns_chains_give_self_consistencys_result():
    # VOTES with Q̂ preferring chain 1's "=4": best-of-N and the vote disagree.
    chains = tree({"": [child(f"p{i}", 0.) for i in range(6)],
                   **{f"p{i}": [child(answer, 0.9 if i == 1 else 0.1, end=True)]
                      for i, answer in enumerate(["=3", "=4", "=4", "=3", "=3", "none"])}})
    config = ChainConfig(num_chains=6, temperature=0.7)
    [searched], _ = search({0: chains},
                           lambda i: self_consistency_planner(i, config, answer_key))
    [best_of], _ = search({0: chains}, lambda i: ChainPlanner(i, config, by_final_q),
                          q_fn=HiddenQ())
    assert best_of.counters.q_calls > 0 and best_of.steps != searched.steps
    voted = self_consistency_of(best_of, answer_key)
    assert (voted.steps, voted.node_id, voted.score) == (searched.steps, searched.node_id, 3.0)
    assert voted.trajectories == searched.trajectories
    assert voted.counters.q_calls == 0
    assert voted.counters.generated_tokens == searched.counters.generated_tokens
    # Best-of-N's PRM calls are not charged to the vote either.
    charged = dataclasses.replace(best_of, counters=dataclasses.replace(best_of.counters,
                                                                        prm_calls=6))
    assert self_consistency_of(charged, answer_key).counters.prm_calls == 0


def test_a_chain_holds_the_slot_of_its_last_step_only():
    """Chain a is three steps long: its first step is freed once the second is sampled
    (after round 2), not when the search ends; chain b's answer in round 2, its last."""
    chains = tree({"": [child("a", 0.), child("b", 0.)], "a": [child("a1", 0.)],
                   "b": [child("=1", 0., end=True)], "a a1": [child("=2", 0., end=True)]})
    config = ChainConfig(num_chains=2, temperature=1.0)
    [result], expander = search({0: chains},
                                lambda i: self_consistency_planner(i, config, answer_key))
    assert len(expander.expand_calls) == 3 and len(result.trajectories) == 2
    expander.assert_released_promptly()


def test_self_consistency_breaks_vote_ties_toward_the_earlier_chain():
    tie = tree({"": [child(f"p{i}", 0.) for i in range(4)],
                **{f"p{i}": [child(answer, 0., end=True)]
                   for i, answer in enumerate(["=4", "=3", "=3", "=4"])}})
    config = ChainConfig(num_chains=4, temperature=1.0)
    [result], _ = search({0: tie}, lambda i: self_consistency_planner(i, config, answer_key))
    assert result.steps == ("p0", "=4") and result.score == 2.0


def test_chains_that_do_not_finish_are_not_candidates():
    unfinished = tree({"": [child("loop", 0.), child("dead", 0.), child("p", 0.)],
                       "loop": [child("again", .3)], "loop again": [child("and again", 0.)],
                       "dead": [], "p": [child("=7", 0., end=True)]})
    config = ChainConfig(num_chains=3, temperature=1.0, max_steps=2)
    [result], _ = search({0: unfinished}, lambda i: self_consistency_planner(i, config, answer_key))
    assert result.steps == ("p", "=7") and [t.steps for t in result.trajectories] == [("p", "=7")]
    # With no complete chain the answer is chain 0's partial trajectory.
    [partial], _ = search({0: unfinished},
                          lambda i: self_consistency_planner(
                              i, ChainConfig(num_chains=2, temperature=1.0, max_steps=2),
                              answer_key))
    assert partial.outcome is Outcome.partial and partial.steps == ("loop", "again")
    assert partial.trajectories == ()
    # Best-of-N over the same chains, Q̂ spent: chain 0 again, scored by its f (Q̂ .3 of
    # "again"); self-consistency read from it stands as it is, no Q̂ call charged.
    config = ChainConfig(num_chains=2, temperature=1.0, max_steps=2)
    [best_of], _ = search({0: unfinished},
                          lambda i: ChainPlanner(i, config, by_final_q), q_fn=HiddenQ())
    assert best_of.outcome is Outcome.partial and best_of.steps == ("loop", "again")
    # loop and dead, then again (dead has no next step): 3 steps sampled, but only
    # again, which ends chain 0 at max_steps, scored by Q̂ (h_agg=last): loop's Q̂ is
    # never read, and dead's neither, chain 0 being the partial answer.
    assert best_of.score == pytest.approx(.3) and best_of.counters.q_calls == 1
    voted = self_consistency_of(best_of, answer_key)
    assert (voted.steps, voted.outcome, voted.score) == (partial.steps, Outcome.partial, .3)
    assert voted.counters.q_calls == 0
    assert voted.counters.generated_tokens == partial.counters.generated_tokens == 2 + 1


def test_with_no_complete_chain_the_answer_is_chain_0_whatever_the_others_score():
    # Both chains stop at max_steps 2 unfinished; chain 1's tip y (.8) outscores chain 0's
    # x (.2), but the partial answer is chain 0, scored by its f.
    unfinished = tree({"": [child("p0", .1), child("p1", .9)],
                       "p0": [child("x", .2)], "p1": [child("y", .8)]})
    config = ChainConfig(num_chains=2, temperature=1.0, max_steps=2)
    [result], _ = search({0: unfinished},
                         lambda i: ChainPlanner(i, config, by_final_q), q_fn=HiddenQ())
    assert result.outcome is Outcome.partial and result.trajectories == ()
    assert (result.steps, result.node_id) == (("p0", "x"), 3)
    assert result.score == pytest.approx(.2)


# Final steps: Q̂ ranks chain 1 first; g ranks chain 0 first under last, chain 2 under min.
BEST_OF = tree({"": [child("p0", 0., reward=.1), child("p1", 0., reward=.9),
                     child("p2", 0., reward=.6)],
                "p0": [child("=0", .2, reward=.9, end=True)],
                "p1": [child("=1", .8, reward=.1, end=True)],
                "p2": [child("=2", .5, reward=.5, end=True)]})


def answer_orm(finals):
    """An outcome reward model that likes one answer."""
    return np.array([1.0 if node.steps[-1] == "=2" else 0.0 for node in finals])


@pytest.mark.parametrize("rank, agg, answer, score", [
    (by_final_q, Agg.last, "=1", .8),
    (by_g, Agg.last, "=0", .9),
    (by_g, Agg.min, "=2", .5),
    (answer_orm, Agg.last, "=2", 1.0),
])
def test_best_of_n_returns_the_top_scored_chain(rank, agg, answer, score):
    expander = FakeExpander({0: BEST_OF})
    config = ChainConfig(num_chains=3, temperature=1.0, agg=agg)
    [result], _ = search({0: BEST_OF}, lambda i: ChainPlanner(i, config, rank),
                         utility=RuleUtility(rule=expander.reward_rule), q_fn=HiddenQ())
    assert result.steps[-1] == answer and result.score == pytest.approx(score)
    assert len(result.trajectories) == 3


def test_identical_samples_stay_separate_chains():
    same = tree({"": [child("p", 0.), child("p", 0.)], "p": [child("=1", 0., end=True)]})
    config = ChainConfig(num_chains=2, temperature=1.0)
    [result], _ = search({0: same}, lambda i: self_consistency_planner(i, config, answer_key))
    assert [t.node_id for t in result.trajectories] == [3, 4] and result.score == 2.0


@pytest.mark.parametrize("fields, message", [
    ({"num_chains": 0}, "num_chains must be an integer >= 1"),
    ({"max_steps": 0}, "ChainConfig.max_steps must be an integer >= 1, got 0"),
    ({"temperature": -.5}, "temperature must be >= 0"),
    ({"agg": "mean"}, "unknown aggregation 'mean'"),
    ({"h_agg": "mean"}, "unknown aggregation 'mean'"),
])
def test_bad_chain_config_is_a_clear_error(fields, message):
    with pytest.raises(ValueError, match=message):
        ChainConfig(**{"num_chains": 2, "temperature": 1.0, **fields})


# Q̂ along each chain: p0 .9 then .3, p1 .2 then .8, p2 .6 then .5.
PATH_Q = tree({"": [child("p0", .9), child("p1", .2), child("p2", .6)],
               "p0": [child("=0", .3, end=True)], "p1": [child("=1", .8, end=True)],
               "p2": [child("=2", .5, end=True)]})


@pytest.mark.parametrize("h_agg, answer, scores", [(Agg.last, "=1", [.3, .8, .5]),
                                                   (Agg.min, "=2", [.3, .2, .5]),
                                                   (Agg.max, "=0", [.9, .8, .6])])
def test_best_of_n_by_final_q_folds_the_paths_q_by_h_agg(h_agg, answer, scores):
    config = ChainConfig(num_chains=3, temperature=1.0, h_agg=h_agg)
    [result], _ = search({0: PATH_Q}, lambda i: ChainPlanner(i, config, by_final_q),
                         q_fn=HiddenQ())
    assert result.steps[-1] == answer
    assert [t.score for t in result.trajectories] == pytest.approx(scores)


def test_a_ranking_of_the_wrong_shape_is_an_error():
    config = ChainConfig(num_chains=3, temperature=1.0)
    with pytest.raises(ValueError, match=r"returned shape \(2,\) for 3 complete chains"):
        search({0: PATH_Q}, lambda i: ChainPlanner(i, config, lambda finals: np.zeros(
            len(finals) - 1)), q_fn=HiddenQ())


def test_a_nan_score_never_wins_best_of_n():
    """Chains scored .9, NaN and .1: np.argmax would pick the NaN chain. A NaN Q̂ is
    refused as it enters the search, and a ranking that makes a NaN of finite scores is
    refused before any chain is picked."""
    nan_chain = tree({"": [child("p0", .9), child("p1", np.nan), child("p2", .1)],
                      "p0": [child("=0", .9, end=True)], "p1": [child("=1", np.nan, end=True)],
                      "p2": [child("=2", .1, end=True)]})
    config = ChainConfig(num_chains=3, temperature=1.0)
    with pytest.raises(ValueError, match="QValueFunction.score returned 1 non-finite scores"):
        search({0: nan_chain}, lambda i: ChainPlanner(i, config, by_final_q), q_fn=HiddenQ())

    def nan_for_the_second(finals):
        return np.array([.9, np.nan, .1])[:len(finals)]

    with pytest.raises(ValueError, match=r"chain ranking returned 1 non-finite scores "
                                         r"\(NaN or infinite\) for 3 complete chains"):
        search({0: PATH_Q}, lambda i: ChainPlanner(i, config, nan_for_the_second),
               q_fn=HiddenQ())


# Q̂ of the steps a chain search reads. Four problems searched side by side, best-of-N
# ranked by f = g + Q̂ of the final step (h_agg=last), g the min of the rewards:
# 0: chains 0 and 1 sample the same steps (the second charged nothing, as a trie samples
#    them), both cut at max_steps 3 unfinished; chain 2 ends with no step after d; chain
#    3 ends at =3, the one complete chain.
# 1: chain 0 ends with no step after x, chain 1 is cut at max_steps 2: no chain completes,
#    so the answer is chain 0's x, scored by its f.
# 2: chain 0 ends with no step after a a1; chain 1 completes at its third step.
# 3: chain 0 ends at its first step; chain 1 at its second.
ENDS = {
    0: tree({"": [child("s", .11, reward=.5, tokens=3),
                  child("s", .12, reward=.5, tokens=3, charged=0),
                  child("d", .13, reward=.4), child("e", .14, reward=.9)],
             "s": [child("t", .21, reward=.6)], "s t": [child("u", .31, reward=.7)],
             "d": [], "e": [child("=3", .22, reward=.8, end=True)]}),
    1: tree({"": [child("x", .41, reward=.3), child("y", .42, reward=.2)],
             "x": [], "y": [child("y1", .51, reward=.1)]}),
    2: tree({"": [child("a", .61, reward=.3), child("b", .62, reward=.2)],
             "a": [child("a1", .71)], "a a1": [], "b": [child("b1", .72)],
             "b b1": [child("=b", .81, reward=.9, end=True)]}),
    3: tree({"": [child("=z", .91, reward=.1, end=True), child("w", .92)],
             "w": [child("=w", .93, reward=.2, end=True)]}),
}
ENDS_CHAINS, ENDS_MAX_STEPS = {0: 4, 1: 2, 2: 2, 3: 2}, {0: 3, 1: 2, 2: 4, 3: 4}


class ReadsEveryQ(ChainPlanner):
    """A chain planner that has every step scored by Q̂, as all chains were before they
    said which Q̂ they read: what every result must stay."""

    def q_reads(self, children):
        return [[True] * len(steps) for steps in children]


class RecordingQ(HiddenQ):
    """HiddenQ that keeps, per call, the (problem, path through the step) it scored."""

    def __init__(self):
        super().__init__()
        self.scored = []

    def score(self, items):
        self.scored.append([(i.problem_index, i.prefix_steps + (i.step_text,)) for i in items])
        return super().score(items)


def by_f(finals):
    return np.array([node.f for node in finals])


def search_ends(planner=ChainPlanner, *, h_agg=Agg.last, rank=by_f, agg=Agg.min, q_fn=None,
                include_trees=True, expander=None):
    expander = expander or FakeExpander(ENDS)
    q_fn = q_fn or RecordingQ()

    def make(i):
        return planner(i, ChainConfig(num_chains=ENDS_CHAINS[i], temperature=1.0,
                                      max_steps=ENDS_MAX_STEPS[i], agg=agg, h_agg=h_agg), rank)

    results = run_search(len(ENDS), make, expander, q_fn, RuleUtility(
        rule=FakeExpander(ENDS).reward_rule), include_trees=include_trees, progress=False)
    assert not expander.live
    return results, q_fn


def same_search(results, expected):
    """Equal results but for Q̂ calls and the h and f of the nodes whose Q̂ was not scored."""
    for result, other in zip(results, expected, strict=True):
        assert dataclasses.replace(result, counters=None, tree=None) == dataclasses.replace(
            other, counters=None, tree=None)
        assert (dataclasses.replace(result.counters, q_calls=0, wall_s=0)
                == dataclasses.replace(other.counters, q_calls=0, wall_s=0))
        if result.tree is not None:
            assert result.tree["expansion_order"] == other.tree["expansion_order"]
            for node, full in zip(result.tree["nodes"], other.tree["nodes"], strict=True):
                assert node == (full if node["h"] is not None else {**full, "h": None, "f": None})


@pytest.mark.parametrize("rank", [by_f, by_final_q])
@pytest.mark.parametrize("agg", [Agg.min, Agg.last])
def test_best_of_n_under_h_agg_last_scores_q_of_the_steps_that_end_chains_only(rank, agg):
    results, q_fn = search_ends(rank=rank, agg=agg)
    scored = [path for call in q_fn.scored for path in call]
    # One item a chain end that a result can read: each complete chain's final step, a
    # step at max_steps, and the partial answer of problem 1 (chain 0's x, which ended
    # with no step), scored in a call of its own as that search finished. Not d (chain 2
    # of problem 0) nor a a1 (chain 0 of problem 2): complete chains are the answers there.
    assert sorted(scored) == sorted([
        (0, ("s", "t", "u")), (0, ("s", "t", "u")), (0, ("e", "=3")),
        (1, ("y", "y1")), (1, ("x",)), (2, ("b", "b1", "=b")), (3, ("=z",)), (3, ("w", "=w"))])
    assert q_fn.scored == [[(3, ("=z",))], [(0, ("e", "=3")), (1, ("y", "y1")), (3, ("w", "=w"))],
                           [(1, ("x",))], [(0, ("s", "t", "u")), (0, ("s", "t", "u")),
                                           (2, ("b", "b1", "=b"))]]
    assert [r.counters.q_calls for r in results] == [3, 2, 1, 2]
    # Scoring every step, as before: the same search, its Q̂ calls every step sampled.
    full, _ = search_ends(ReadsEveryQ, rank=rank, agg=agg)
    assert [r.counters.q_calls for r in full] == [9, 3, 5, 3]
    same_search(results, full)
    # What scoring every step gave (ranked by f, g the min of the rewards).
    if rank is by_f and agg is Agg.min:
        assert [(r.steps, r.outcome, r.score) for r in results] == [
            (("e", "=3"), Outcome.complete, pytest.approx(.8 + .22)),
            (("x",), Outcome.partial, pytest.approx(.3 + .41)),
            (("b", "b1", "=b"), Outcome.complete, pytest.approx(0. + .81)),
            (("=z",), Outcome.complete, pytest.approx(.1 + .91))]
        assert [[t.score for t in r.trajectories] for r in results] == [
            [pytest.approx(1.02)], [], [pytest.approx(.81)],
            [pytest.approx(1.01), pytest.approx(0. + .93)]]


def test_the_partial_answers_q_is_scored_only_when_no_chain_completes():
    """Problem 1 (alone): no chain completes, chain 0's x ended with no step; its Q̂ .41 is
    scored after the round in which the search finished, f = .3 + .41. Problem 2 (alone):
    chain 0's a a1 ended with no step too, but chain 1 completed: a a1's Q̂ is never read."""
    expander = FakeExpander({0: ENDS[1]})
    q_fn = RecordingQ()
    config = ChainConfig(num_chains=2, temperature=1.0, max_steps=2)
    [partial] = run_search(1, lambda i: ChainPlanner(i, config, by_f), expander, q_fn,
                           RuleUtility(rule=expander.reward_rule), include_trees=True,
                           progress=False)
    assert q_fn.scored == [[(0, ("y", "y1"))], [(0, ("x",))]]
    assert (partial.steps, partial.outcome) == (("x",), Outcome.partial)
    assert partial.score == pytest.approx(.3 + .41) and partial.counters.q_calls == 2
    assert [(n["steps"], n["h"]) for n in partial.tree["nodes"]] == [
        ([], 0.0), (["x"], .41), (["y"], None), (["y", "y1"], .51)]
    expander = FakeExpander({0: ENDS[2]})
    q_fn = RecordingQ()
    config = ChainConfig(num_chains=2, temperature=1.0, max_steps=4)
    [complete] = run_search(1, lambda i: ChainPlanner(i, config, by_f), expander, q_fn,
                            progress=False)
    assert q_fn.scored == [[(0, ("b", "b1", "=b"))]] and complete.counters.q_calls == 1
    assert complete.steps == ("b", "b1", "=b") and complete.score == pytest.approx(.81)


def test_greedy_scores_q_of_its_last_step_only():
    greedy = tree({"": [child("a", .1)], "a": [child("a1", .2)],
                   "a a1": [child("=5", .4, end=True)]})
    q_fn = RecordingQ()
    [result], _ = search({0: greedy}, lambda i: greedy_planner(i), q_fn=q_fn)
    assert q_fn.scored == [[(0, ("a", "a1", "=5"))]] and result.counters.q_calls == 1
    assert result.score == pytest.approx(.4)
    q_fn = RecordingQ()
    [cut], _ = search({0: greedy}, lambda i: greedy_planner(i, max_steps=2), q_fn=q_fn)
    assert q_fn.scored == [[(0, ("a", "a1"))]] and cut.counters.q_calls == 1
    assert cut.outcome is Outcome.partial and cut.score == pytest.approx(.2)


@pytest.mark.parametrize("h_agg", [agg for agg in Agg if agg is not Agg.last])
def test_chains_whose_h_folds_the_paths_q_score_every_step(h_agg):
    results, q_fn = search_ends(h_agg=h_agg)
    assert [r.counters.q_calls for r in results] == [9, 3, 5, 3]
    assert sum(map(len, q_fn.scored)) == 9 + 3 + 5 + 3
    full, _ = search_ends(ReadsEveryQ, h_agg=h_agg)
    assert results == [dataclasses.replace(r, counters=dataclasses.replace(
        r.counters, wall_s=o.counters.wall_s)) for r, o in zip(full, results)]
    assert all(node["h"] is not None for r in results for node in r.tree["nodes"])


def test_a_dumped_tree_has_no_h_or_f_where_q_was_not_scored():
    [result, *_], _ = search_ends()
    nodes = {tuple(n["steps"]): n for n in result.tree["nodes"]}
    unscored = {steps for steps, n in nodes.items() if n["h"] is None}
    assert unscored == {("s",), ("d",), ("e",), ("s", "t")}
    assert all(nodes[steps]["f"] is None for steps in unscored)
    assert all(isinstance(n["g"], float) for n in nodes.values())  # g is every step's
    assert nodes[("e", "=3")]["h"] == .22 and nodes[("e", "=3")]["f"] == pytest.approx(1.02)
    # Without a Q̂ function every Q̂ is 0, as it was: self-consistency's dumps.
    config = ChainConfig(num_chains=4, temperature=1.0, max_steps=3)
    [voted] = run_search(1, lambda i: self_consistency_planner(i, config, answer_key),
                         FakeExpander({0: ENDS[0]}), None, include_trees=True, progress=False)
    assert all(n["h"] == 0.0 and n["f"] == n["g"] for n in voted.tree["nodes"])
    assert voted.counters.q_calls == 0


# Two searches of three chains, each holding three slots: problem 0's chains complete at
# their third step; problem 1's chain 0 ends with no step after x x1 and the others are
# cut at max_steps 3, so its answer is x x1, its Q̂ scored as the search finishes.
HOLDING = {0: tree({"": [child(c, .1 * i) for i, c in enumerate("abc")],
                    **{c: [child(c + "1", .2)] for c in "abc"},
                    **{f"{c} {c}1": [child("=" + c, .3 + .1 * i, end=True)]
                       for i, c in enumerate("abc")}}),
           1: tree({"": [child(c, .1 * i) for i, c in enumerate("xyz")],
                    **{c: [child(c + "1", .2 + .1 * i)] for i, c in enumerate("xyz")},
                    "x x1": [], "y y1": [child("y2", .6)], "z z1": [child("z2", .7)]})}


def test_a_best_of_n_begun_again_for_room_counts_the_q_it_read_in_the_attempt_that_finished():
    """In a room of 8 slots problem 1's search is begun again (made twice); each search
    scores the same Q̂ items as with room for both, and counts them once."""
    made = []

    def make(i):
        made.append(i)
        return ChainPlanner(i, ChainConfig(num_chains=3, temperature=1.0, max_steps=3), by_f)

    roomy = run_search(2, make, FakeExpander(HOLDING, prompt_tokens=7), HiddenQ(),
                       include_trees=True, progress=False)
    made.clear()
    q_fn, tight = RecordingQ(), RoomLimitedExpander(HOLDING, room=8)
    results = run_search(2, make, tight, q_fn, include_trees=True, progress=False)
    assert made == [0, 1, 1] and not tight.live
    assert without_wall(results) == without_wall(roomy)
    assert q_fn.scored == [[(0, ("a", "a1", "=a")), (0, ("b", "b1", "=b")),
                            (0, ("c", "c1", "=c"))],
                           [(1, ("y", "y1", "y2")), (1, ("z", "z1", "z2"))], [(1, ("x", "x1"))]]
    assert [(r.steps, r.outcome) for r in results] == [(("c", "c1", "=c"), Outcome.complete),
                                                       (("x", "x1"), Outcome.partial)]
    assert [r.score for r in results] == [pytest.approx(.5), pytest.approx(.2)]
    assert [r.counters.q_calls for r in results] == [3, 3]


def test_a_step_with_no_q_scored_cannot_enter_an_h_that_folds_the_path():
    from qstar_jax.search.interface import Step
    from qstar_jax.search.planner import ScoredStep
    from qstar_jax.search.tree import SearchTree

    step = Step(text="a", token_ids=(0,), logprob=-1.0, hidden=None, ends_trace=False,
                handle=None)
    unscored = [ScoredStep(step=step, q_value=np.nan, reward=0.0)]
    last = SearchTree(0, agg=Agg.min, lam=1.0)
    [node] = last.add_children(last.root, unscored, merge_identical=False)
    assert np.isnan(node.h) and np.isnan(node.f)
    assert last.score_q(node, .25).f == .25
    with pytest.raises(ValueError, match="not an unscored node"):
        last.score_q(node, .5)  # replaced: no longer a node of the tree, and scored
    with pytest.raises(ValueError, match="no Q̂ scored under h_agg=min"):
        SearchTree(0, agg=Agg.min, lam=1.0, h_agg=Agg.min).add_children(
            last.root, unscored, merge_identical=False)


def test_a_planner_that_says_which_q_it_reads_for_the_wrong_children_is_an_error():
    class Short(ChainPlanner):
        def q_reads(self, children):
            return [flags[:-1] for flags in super().q_reads(children)]

    config = ChainConfig(num_chains=4, temperature=1.0, max_steps=3)
    with pytest.raises(ValueError, match=r"problem 0 said which Q̂ it reads for \[3\] children "
                                         r"of its requests, which have \[4\]"):
        run_search(1, lambda i: Short(i, config, by_f), FakeExpander({0: ENDS[0]}), HiddenQ(),
                   progress=False)
