"""The ranker best-of-N uses in evaluate: planner_factory's chains ranked by the scorer
eval.best_of_n_scorer names (f = g + λ·h, h, or g), h the Q̂ that search.h_agg folds."""

from pathlib import Path

import pytest

from qstar_jax.config_loading import load_config
from qstar_jax.search.astar import AStarConfig, Budget
from qstar_jax.search.beam import BeamConfig
from qstar_jax.search.chains import ChainConfig
from qstar_jax.search.driver import run_search
from qstar_jax.search.process_utility import RuleUtility, ZeroUtility
from qstar_jax.stages import evaluate
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.evaluate import planner_factory
from tests.search.fakes import FakeExpander, HiddenQ, child, tree

# g summed over a chain's rewards, which the tests' RuleUtility gives (the PRM named is not
# loaded): search.utility=zero would fix g at 0, which a PRM-scored best-of-N cannot rank by.
REWARDS = ["search.utility=prm", "search.prm_model=unused", "search.agg=sum"]

# Three one-step chains; with λ = 0.5: f(a) = 0.9, f(b) = 0.5, f(c) = 0.6 + 0.4 = 1.0.
CHAINS = tree({"": [child("a", q=0.0, reward=0.9, end=True),
                    child("b", q=1.0, reward=0.0, end=True),
                    child("c", q=0.8, reward=0.6, end=True)]})


@pytest.mark.parametrize("scorer, best, score", [("f", "c", 1.0), ("q", "b", 1.0),
                                                 ("prm", "a", 0.9)])
def test_best_of_n_picks_the_chain_its_scorer_ranks_highest(scorer, best, score):
    config = load_config(None, [*REWARDS, "search.lam=0.5", "eval.samples=3",
                                f"eval.best_of_n_scorer={scorer}"])
    make = planner_factory(RunContext(config=config, out=Path("unused")), "best_of_n")
    expander = FakeExpander({0: CHAINS})
    [result] = run_search(1, make, expander, HiddenQ(),
                          RuleUtility(rule=expander.reward_rule), progress=False)
    assert [t.steps for t in result.trajectories] == [("a",), ("b",), ("c",)]
    assert result.steps == (best,)
    assert result.score == pytest.approx(score)


# Two two-step chains: Q̂ of the last step ranks b's first (.8 against .7), the product
# of the path's Q̂ ranks a's (.9 x .7 = .63 against .6 x .8 = .48).
TWO_STEP_CHAINS = tree({"": [child("a", q=0.9), child("b", q=0.6)],
                        "a": [child("a1", q=0.7, end=True)],
                        "b": [child("b1", q=0.8, end=True)]})


@pytest.mark.parametrize("h_agg, best, score", [("last", ("b", "b1"), 0.8),
                                                ("product", ("a", "a1"), 0.63)])
def test_best_of_n_ranks_by_the_h_that_search_h_agg_folds(h_agg, best, score):
    config = load_config(None, ["search.utility=zero", f"search.h_agg={h_agg}",
                                "eval.samples=2", "eval.best_of_n_scorer=q"])
    make = planner_factory(RunContext(config=config, out=Path("unused")), "best_of_n")
    [result] = run_search(1, make, FakeExpander({0: TWO_STEP_CHAINS}), HiddenQ(),
                          RuleUtility(rule=lambda *_: 0.0), progress=False)
    assert result.steps == best
    assert result.score == pytest.approx(score)


# Chain a needs 3 steps to end; b ends at its second step; c is the root's third child.
# By g = the sum of the rewards, c (5.0) beats a (1.2), which beats b (.7 + .3 = 1.0);
# by the minimum (the default agg), b's .3 loses to a's .4.
CUT_CHAINS = tree({"": [child("a", q=0.0, reward=0.4), child("b", q=0.0, reward=0.7),
                        child("c", q=0.0, reward=5.0, end=True)],
                   "a": [child("a1", q=0.0, reward=0.4)],
                   "a a1": [child("a2", q=0.0, reward=0.4, end=True)],
                   "b": [child("b1", q=0.0, reward=0.3, end=True)]})


def test_best_of_n_samples_its_given_n_at_eval_settings_and_cuts_chains_at_max_steps():
    config = load_config(None, [*REWARDS, "eval.samples=3", "eval.temperature=0.7",
                                "search.temperature=1.0", "decode.max_steps=2",
                                "eval.best_of_n_scorer=prm"])
    # best_of_n_matched searches at the N it is given, not eval.samples.
    make = planner_factory(RunContext(config=config, out=Path("unused")), "best_of_n_matched",
                           samples=2)
    expander = FakeExpander({0: CUT_CHAINS})
    [result] = run_search(1, make, expander, HiddenQ(),
                          RuleUtility(rule=expander.reward_rule), progress=False)
    requests = [r for call in expander.expand_calls for r in call]
    assert [(r.node.steps, r.num_children, r.temperature) for r in requests] == [
        ((), 2, 0.7), (("a",), 1, 0.7), (("b",), 1, 0.7)]
    # a is cut at decode.max_steps=2 steps, unfinished: b is the one complete chain.
    assert [t.steps for t in result.trajectories] == [("b", "b1")]
    assert result.steps == ("b", "b1")
    assert result.score == pytest.approx(1.0)  # g summed, as search.agg says


@pytest.mark.parametrize("method, best", [("qstar", ("c",)), ("qstar_no_q", ("a",))])
def test_qstar_no_q_is_the_same_search_with_lambda_zero(method, best):
    """Over CHAINS at λ = 0.5 Q* takes c (f = 1.0); without Q̂ it takes a, the best g (.9)."""
    config = load_config(None, ["search.utility=zero", "search.agg=sum", "search.lam=0.5",
                                "search.k=3", "search.n_complete=1"])
    make = planner_factory(RunContext(config=config, out=Path("unused")), method)
    expander = FakeExpander({0: CHAINS})
    [result] = run_search(1, make, expander, HiddenQ(), RuleUtility(rule=expander.reward_rule),
                          progress=False)
    assert result.steps == best


def test_evaluate_hands_q_hat_only_to_the_searches_that_rank_by_it(monkeypatch):
    given, sharing = {}, []
    monkeypatch.setattr(evaluate, "DecoderExpander",
                        lambda runtime, prefix_sharing: sharing.append(prefix_sharing))
    monkeypatch.setattr(evaluate, "run_search",
                        lambda count, make, expander, q_fn, utility, **_: q_fn)
    ctx, q_hat = RunContext(config=load_config(None), out=Path("unused")), HiddenQ()
    for method in ("greedy", "self_consistency", "best_of_n", "best_of_n_matched", "beam",
                   "qstar", "qstar_no_q"):
        search = evaluate._step_search(ctx, method, 2, None, q_hat, ZeroUtility())
        given[method] = search([0], method) is q_hat
    assert given == {"greedy": False, "self_consistency": False, "best_of_n": True,
                     "best_of_n_matched": True, "beam": True, "qstar": True,
                     "qstar_no_q": False}
    assert sharing == [True] * 7  # eval.prefix_sharing's default, one expander a method


def test_greedy_beam_and_a_star_planners_take_every_setting_the_config_gives_them():
    config = load_config(None, [
        "search.k=4", "search.lam=0.25", "search.n_complete=2", "search.agg=sum",
        "search.h_agg=product", "search.temperature=0.6", "search.expansions_per_node=3",
        "search.max_expansions=9", "search.max_generated_tokens=700", "eval.beam_width=5",
        "eval.beam_k=2", "eval.temperature=0.3", "decode.max_steps=7"])
    ctx = RunContext(config=config, out=Path("unused"))
    # Greedy's g (its dumped trees, its score) folds the rewards by search.agg.
    assert planner_factory(ctx, "greedy")(3)._config == ChainConfig(
        num_chains=1, temperature=0.0, max_steps=7, agg="sum")
    assert planner_factory(ctx, "beam")(3)._config == BeamConfig(
        beam_width=5, k=2, lam=0.25, agg="sum", h_agg="product", temperature=0.3, max_steps=7)
    assert planner_factory(ctx, "qstar")(3)._config == AStarConfig(
        k=4, n_complete=2, lam=0.25, agg="sum", h_agg="product", temperature=0.6,
        expansions_per_node=3, max_steps=7,
        budget=Budget(max_expansions=9, max_generated_tokens=700))
