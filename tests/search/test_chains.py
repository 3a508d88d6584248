import dataclasses

import numpy as np
import pytest

from qstar_jax.search.aggregate import Agg
from qstar_jax.search.chains import (ChainConfig, ChainPlanner, greedy_planner,
                                     self_consistency_of, self_consistency_planner)
from qstar_jax.search.driver import run_search
from qstar_jax.search.planner import Outcome
from qstar_jax.search.process_utility import RuleUtility, ZeroUtility
from tests.search.fakes import FakeExpander, HiddenQ, child, tree


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
    # loop and dead, then again (dead has no next step): 3 steps scored.
    assert best_of.score == pytest.approx(.3) and best_of.counters.q_calls == 2 + 1
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
