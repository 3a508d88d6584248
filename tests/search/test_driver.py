import ast
import pathlib

import numpy as np
import pytest

from qstar_jax.search import driver
from qstar_jax.search.aggregate import Agg, aggregate
from qstar_jax.search.astar import AStarConfig, AStarPlanner, Budget
from qstar_jax.search.beam import BeamConfig, BeamPlanner
from qstar_jax.search.chains import greedy_planner
from qstar_jax.search.driver import run_search
from qstar_jax.search.interface import QItem
from qstar_jax.search.process_utility import PRMUtility, RuleUtility
from qstar_jax.search.tot import ToTConfig, ToTDFSPlanner, q_value
from tests.search.fakes import (CacheFull, FakeExpander, HiddenQ, HiddenRewardPRM,
                                RoomLimitedExpander, child, tree, without_wall)

# Problem 0: A* expands root (3 children, 6 tokens) and a (2 children, 9 tokens).
# Problem 1: greedy takes 3 steps of 4 tokens, Q̂ scoring only its last (h_agg=last: the
# final step's Q̂ is the only one its f reads). Problem 2: beam, 2 rounds of 2 children.
TREES = {
    0: tree({"": [child("a", .9, reward=.5, tokens=1), child("b", .1, reward=.2, tokens=2),
                  child("c", .2, reward=.3, tokens=3)],
             "a": [child("a1", .8, reward=.7, tokens=4, end=True),
                   child("a2", .1, reward=.1, tokens=5)]}),
    1: tree({"": [child("s", .1, tokens=4)], "s": [child("t", .2, tokens=4)],
             "s t": [child("=1", .3, tokens=4, end=True)]}),
    2: tree({"": [child("u", .4, tokens=2), child("v", .3, tokens=2)],
             "u": [child("=2", .6, tokens=2, end=True), child("w", .1, tokens=2)]}),
}


def make_planner(i):
    if i == 0:
        return AStarPlanner(0, AStarConfig(k=3, n_complete=1, agg=Agg.sum))
    if i == 1:
        return greedy_planner(1)
    return BeamPlanner(2, BeamConfig(beam_width=1, k=2))


def test_mixed_planners_share_rounds_and_counters_add_up():
    expander, q_fn = FakeExpander(TREES, prompt_tokens=7), HiddenQ()
    results = run_search(3, make_planner, expander, q_fn, PRMUtility(prm=HiddenRewardPRM()),
                         progress=False)
    assert not expander.live
    counters = [(r.counters.generated_tokens, r.counters.prefilled_tokens, r.counters.q_calls,
                 r.counters.prm_calls, r.counters.expansions) for r in results]
    assert counters == [(15, 7, 5, 5, 2), (12, 7, 1, 3, 3), (8, 7, 4, 4, 2)]
    # Round 1: three roots; round 2: a, s, u; round 3: s t only. Greedy's s and t are
    # sampled and rewarded but not scored by Q̂.
    assert [len(call) for call in expander.expand_calls] == [3, 3, 1]
    assert q_fn.batches == [5, 4, 1]
    # One release call after each round's expansions, and one before the call of a round
    # in which a planner has just finished (A* ends in round 4, proposing nothing).
    assert expander.release_calls == [[6], [7, 1, 4, 5, 11, 10], [2, 3, 8], [9, 12]]
    assert [r.steps for r in results] == [("a", "a1"), ("s", "t", "=1"), ("u", "=2")]
    # g sums PRM rewards along the path: .5 + .7, and f adds Q̂ .8.
    assert results[0].score == pytest.approx(.5 + .7 + .8)
    assert all(r.counters.wall_s >= 0 for r in results)
    assert [r.tree for r in results] == [None, None, None]  # include_trees not asked for


def test_the_progress_bar_shows_each_rounds_tokens_before_problems_finish(capsys):
    """Batched problems finish together, so the bar also shows the rounds run and the
    tokens generated so far: 6 + 4 + 4 in round 1, then 9 + 4 + 4, then 4."""
    run_search(3, make_planner, FakeExpander(TREES, prompt_tokens=7), HiddenQ(),
               PRMUtility(prm=HiddenRewardPRM()), description="mixed")
    err = capsys.readouterr().err
    for shown in ("round 1, 14 tokens generated", "round 2, 31 tokens generated",
                  "round 3, 35 tokens generated"):
        assert shown in err
    assert "mixed: 100%" in err and "3/3" in err


def test_a_second_search_on_the_same_expander_counts_only_its_own_compute(monkeypatch):
    """Methods sharing problem indices run one after another on one expander: each run's
    counters start from what the expander had counted before it. The clock here is the
    number of expand calls, so wall_s is the round each problem finished in."""
    expander = FakeExpander(TREES, prompt_tokens=7)
    monkeypatch.setattr(driver.time, "perf_counter", lambda: len(expander.expand_calls))
    for run in range(2):
        results = run_search(3, make_planner, expander, HiddenQ(),
                             PRMUtility(prm=HiddenRewardPRM()), progress=False)
        assert [(r.counters.generated_tokens, r.counters.prefilled_tokens,
                 r.counters.q_calls, r.counters.expansions) for r in results] == [
            (15, 7, 5, 2), (12, 7, 1, 3), (8, 7, 4, 2)], run
        # Beam (2) finishes absorbing round 2; A* (0) pops its goal a1 in round 3's
        # propose, greedy (1) absorbing round 3.
        assert [r.counters.wall_s for r in results] == [3, 3, 2], run
    assert expander.generated_tokens(0) == 2 * 15


def test_expansions_count_requests_not_rounds():
    # Beam of width 2: round 1 expands the root, round 2 both kept beams, a and b, in
    # one round; every request counts.
    trees = {0: tree({"": [child("a", .9), child("b", .8)],
                      "a": [child("=1", .1, end=True)], "b": [child("=2", .2, end=True)]})}
    [result] = run_search(1, lambda i: BeamPlanner(i, BeamConfig(beam_width=2, k=2)),
                          FakeExpander(trees), HiddenQ(), progress=False)
    assert result.counters.expansions == 1 + 2 and result.counters.q_calls == 2 + 2


def test_planners_must_have_distinct_problem_indices():
    with pytest.raises(ValueError, match="share problem indices"):
        run_search(2, lambda i: greedy_planner(0), FakeExpander(TREES), None, progress=False)


def test_planners_wait_for_room_in_the_cache_and_search_as_they_would_with_room(capsys):
    """Room for 6 handles. Round 1's three roots and their children (9) do not fit, the
    first two problems' (6) do: the beam (problem 2) waits with its root. Round 2: all
    three do not fit, nor A* and greedy; A* alone does (its first two of the halving),
    and greedy waits with s. Round 3: A* has found a1 and is done, and what it held is
    freed before the call, in which greedy and the beam fit together. Every search is
    what it is with room for all, and a line after the progress bar says that searches
    waited."""
    roomy = run_search(3, make_planner, FakeExpander(TREES, prompt_tokens=7), HiddenQ(),
                       PRMUtility(prm=HiddenRewardPRM()), progress=False)
    tight = RoomLimitedExpander(TREES, room=6)
    results = run_search(3, make_planner, tight, HiddenQ(), PRMUtility(prm=HiddenRewardPRM()),
                         description="mixed")
    assert capsys.readouterr().out == (
        "[qstar] mixed: the KV cache was short of room: 2 rounds left searches waiting, 0 "
        "searches were begun again (the same results, each counted for the attempt that "
        "finished; more decode.pages or decode.slots would run them side by side, and "
        "eval.problems_per_batch at python -m qstar_jax.memory_plan's searches_in_flight "
        "would spare the wait)\n")
    assert tight.refused > 0 and tight.peak_held <= 6 and not tight.live
    tight.assert_released_promptly()
    assert [[(r.problem_index, r.node.steps) for r in call] for call in tight.expand_calls] == [
        [(0, ()), (1, ())], [(0, ("a",))], [(1, ("s",)), (2, ())],
        [(1, ("s", "t")), (2, ("u",))]]
    assert tight.refused == 1 + 2
    assert without_wall(results) == without_wall(roomy)


def three_deep_tree(p: str) -> dict:
    """A search tree for A* with K = 3: each expansion's first child is expanded next."""
    return tree({"": [child(p + "a", .9), child(p + "b", .5), child(p + "c", .1)],
                 p + "a": [child(p + "a1", .8), child(p + "a2", .4), child(p + "a3", .2)],
                 f"{p}a {p}a1": [child(p + "d1", .7, end=True), child(p + "d2", .3),
                                 child(p + "d3", .1)]})


def three_expansion_astar(i: int) -> AStarPlanner:
    """A* with K = 3 and 3 expansions, not ending early."""
    return AStarPlanner(i, AStarConfig(k=3, n_complete=9, agg=Agg.sum,
                                       budget=Budget(max_expansions=3)))


def calls_in_room(trees: dict, room: int, description: str) -> list[list[tuple]]:
    """``three_expansion_astar`` on each of ``trees`` in room for ``room`` handles: the
    (problem, node steps) of each expander call's requests, once the searches are checked
    to grow what they grow with room for all, in that room, every handle freed."""
    roomy = run_search(len(trees), three_expansion_astar,
                       FakeExpander(trees, prompt_tokens=7), HiddenQ(), include_trees=True,
                       progress=False)
    tight = RoomLimitedExpander(trees, room=room)
    results = run_search(len(trees), three_expansion_astar, tight, HiddenQ(),
                         include_trees=True, description=description)
    assert without_wall(results) == without_wall(roomy)
    assert tight.peak_held <= room and not tight.live
    return [[(r.problem_index, r.node.steps) for r in call] for call in tight.expand_calls]


def test_a_search_that_holds_the_room_another_needs_begins_again_with_the_same_results(
        capsys):
    """Two A* searches (K = 3, 3 expansions, no early end) in room for 9 handles. Round 1
    starts both (8). Round 2 fits the first's expansion alone: the second waits, holding
    its three children. Round 3: the first's next expansion does not fit, nor does the
    second's, alone or together: the second, holding handles, is begun again, its handles
    freed, and the first goes on. The second's search then runs alone from its root, and
    both grow the trees, answers and counts they grow with room for both."""
    calls = calls_in_room({0: three_deep_tree("p"), 1: three_deep_tree("q")}, 9, "two")
    assert calls == [[(0, ()), (1, ())], [(0, ("pa",))], [(0, ("pa", "pa1"))], [(1, ())],
                     [(1, ("qa",))], [(1, ("qa", "qa1"))]]
    assert capsys.readouterr().out.startswith(
        "[qstar] two: the KV cache was short of room: 1 rounds left searches waiting, 1 "
        "searches were begun again")


def test_searches_begun_again_and_not_yet_begun_wait_for_one_to_finish_before_each_begins(
        capsys):
    """Four such searches in room for 9 handles. As above, the second is begun again in
    round 3; the third and fourth, waiting with their roots, hold nothing, and all three
    are held back: each begins when the one before it has finished, and none is begun
    again. (Let in as soon as their roots fit, the third and fourth began beside the
    first's last expansion, the second then took their room back from them, and three
    searches were begun again.)"""
    calls = calls_in_room({i: three_deep_tree(p) for i, p in enumerate("pqrs")}, 9, "four")
    alone = [[[(i, ())], [(i, (p + "a",))], [(i, (p + "a", p + "a1"))]]
             for i, p in enumerate("qrs", start=1)]
    assert calls == [[(0, ()), (1, ())], [(0, ("pa",))], [(0, ("pa", "pa1"))], *alone[0],
                     *alone[1], *alone[2]]
    assert capsys.readouterr().out.startswith(
        "[qstar] four: the KV cache was short of room: 2 rounds left searches waiting, 1 "
        "searches were begun again")


def test_a_search_no_room_holds_even_alone_raises_the_decoders_error():
    """A* alone (problem 0) needs its root and three children, 4 handles, of room for 2:
    nothing can free room for it, so the round raises what the decoder raised."""
    with pytest.raises(CacheFull, match="0 held and 4 new: over 2"):
        run_search(1, make_planner, RoomLimitedExpander(TREES, room=2), HiddenQ(),
                   progress=False)


def test_an_expander_that_drops_requests_is_an_error():
    class Dropping(FakeExpander):
        def expand(self, requests):
            return super().expand(requests)[:-1]

    with pytest.raises(ValueError, match="2 child lists for 3 requests"):
        run_search(3, make_planner, Dropping(TREES), HiddenQ(), progress=False)


def test_an_expander_that_returns_extra_steps_is_an_error():
    class Doubling(FakeExpander):
        def expand(self, requests):
            return [steps + steps for steps in super().expand(requests)]

    with pytest.raises(ValueError, match=r"6 steps for a request of 3 \(problem 0\)"):
        run_search(3, make_planner, Doubling(TREES), HiddenQ(), progress=False)


def test_a_planner_that_proposes_nothing_before_it_is_done_is_an_error():
    class Idle(BeamPlanner):  # idles one round (an idle planner forever would hang)
        idled = False

        def propose(self):
            if self.idled:
                return super().propose()
            self.idled = True
            return []

    with pytest.raises(RuntimeError, match="problem 0 proposed nothing but is not done"):
        run_search(1, lambda i: Idle(i, BeamConfig(beam_width=1, k=1)), FakeExpander(TREES),
                   HiddenQ(), progress=False)


def test_planners_alternate_propose_and_absorb_and_propose_nothing_once_done():
    for make in (lambda: AStarPlanner(0, AStarConfig(k=1)), lambda: greedy_planner(0),
                 lambda: BeamPlanner(0, BeamConfig(beam_width=1, k=1)),
                 lambda: ToTDFSPlanner(0, ToTConfig(k=1), q_value)):
        planner = make()
        [_] = planner.propose()
        with pytest.raises(RuntimeError, match="before absorb"):
            planner.propose()
        with pytest.raises(ValueError, match=r"absorb\(\) got 2 child lists for 1 requests"):
            planner.absorb([[], []])
    planners = []
    run_search(3, lambda i: planners.append(make_planner(i)) or planners[-1],
               FakeExpander(TREES), HiddenQ(), progress=False)
    for planner in planners:
        with pytest.raises(RuntimeError, match="called on a finished planner"):
            planner.propose()


def test_a_q_function_of_the_wrong_shape_is_an_error():
    class Scalar:
        def score(self, items):
            return np.zeros(())

    with pytest.raises(ValueError, match=r"QValueFunction.score returned shape \(\) for 5 items"):
        run_search(3, make_planner, FakeExpander(TREES), Scalar(), progress=False)


def test_a_non_finite_q_value_or_reward_is_an_error_naming_the_scorer_and_the_count():
    """A NaN Q̂ would win every argmax and sit anywhere in a heap; an infinite reward would
    outrank every finite path. Both are refused where the scores enter the search."""
    class NaNForB:
        def score(self, items):
            return np.array([np.nan if item.step_text.startswith("b") else 0.5
                             for item in items])

    class InfiniteFirst:
        calls_reward_model = False

        def step_rewards(self, items):
            return np.array([np.inf] + [0.0] * (len(items) - 1))

    with pytest.raises(ValueError, match=r"QValueFunction.score returned 1 non-finite scores "
                                         r"\(NaN or infinite\) for 5 items"):
        run_search(3, make_planner, FakeExpander(TREES), NaNForB(), progress=False)
    with pytest.raises(ValueError, match=r"ProcessUtility.step_rewards returned 1 non-finite "
                                         r"scores \(NaN or infinite\) for 6 items"):
        run_search(3, make_planner, FakeExpander(TREES), HiddenQ(), InfiniteFirst(),
                   progress=False)


@pytest.mark.parametrize("agg, expected", [(Agg.min, .2), (Agg.max, .8), (Agg.sum, 1.5),
                                           (Agg.last, .5), (Agg.product, .08)])
def test_aggregate_folds_rewards(agg, expected):
    g = None
    for reward in (.2, .8, .5):
        g = aggregate(agg, g, reward)
    assert g == pytest.approx(expected)


@pytest.mark.parametrize("agg, reward, expected", [
    (Agg.min, .5, 0.0), (Agg.max, -.5, 0.0), (Agg.product, .5, 0.0), (Agg.sum, .5, .5),
    (Agg.last, .5, .5)])
def test_a_parents_g_of_zero_folds_like_any_other(agg, reward, expected):
    """g = 0 (a rule's or a zero reward) is a path's value, not the root's missing one."""
    assert aggregate(agg, 0.0, reward) == expected
    assert aggregate(agg, None, reward) == reward


def test_a_rule_utility_reads_each_items_problem_and_path_through_its_new_step():
    seen = []
    utility = RuleUtility(rule=lambda i, steps: seen.append((i, steps)) or 10 * i + len(steps))
    items = [QItem(problem_index=2, prefix_steps=("a",), step_text="b", hidden=None),
             QItem(problem_index=0, prefix_steps=(), step_text="c", hidden=None)]
    np.testing.assert_array_equal(utility.step_rewards(items), [22.0, 1.0])
    assert seen == [(2, ("a", "b")), (0, ("c",))]


def test_a_rule_utility_folds_into_g_like_a_prm_and_spends_no_prm_call():
    expander = FakeExpander(TREES, prompt_tokens=7)
    results = run_search(3, make_planner, expander, HiddenQ(),
                         RuleUtility(rule=expander.reward_rule), progress=False)
    assert [(r.counters.q_calls, r.counters.prm_calls) for r in results] == [
        (5, 0), (1, 0), (4, 0)]
    assert results[0].steps == ("a", "a1")
    assert results[0].score == pytest.approx(.5 + .7 + .8)  # the rule's rewards, as the PRM's


def test_a_prm_utility_asks_its_prm_nothing_for_no_items():
    class NoCallPRM:
        def score_steps(self, items):
            raise AssertionError(f"asked to score {items}")

    rewards = PRMUtility(prm=NoCallPRM()).step_rewards([])
    assert rewards.dtype == np.float64 and rewards.shape == (0,)


def test_q_and_the_utility_see_each_new_step_with_its_problem_path_hidden_state_and_logprob():
    batches = {"q": [], "prm": []}

    class RecordingQ(HiddenQ):
        def score(self, items):
            batches["q"].append(items)
            return super().score(items)

    class RecordingPRM(HiddenRewardPRM):
        def score_steps(self, items):
            batches["prm"].append(items)
            return super().score_steps(items)

    run_search(3, make_planner, FakeExpander(TREES), RecordingQ(),
               PRMUtility(prm=RecordingPRM()), progress=False)
    seen = {scorer: [[(i.problem_index, i.prefix_steps, i.step_text, list(i.hidden),
                       i.logprob) for i in items] for items in calls]
            for scorer, calls in batches.items()}
    assert seen["prm"] == [
        [(0, (), "a", [.9, .5], -1.0), (0, (), "b", [.1, .2], -1.0),
         (0, (), "c", [.2, .3], -1.0), (1, (), "s", [.1, 0.], -1.0),
         (2, (), "u", [.4, 0.], -1.0), (2, (), "v", [.3, 0.], -1.0)],
        [(0, ("a",), "a1", [.8, .7], -1.0), (0, ("a",), "a2", [.1, .1], -1.0),
         (1, ("s",), "t", [.2, 0.], -1.0), (2, ("u",), "=2", [.6, 0.], -1.0),
         (2, ("u",), "w", [.1, 0.], -1.0)],
        [(1, ("s", "t"), "=1", [.3, 0.], -1.0)]]
    # Q̂ the same, but greedy's (problem 1) steps before its last, whose Q̂ it never reads.
    assert seen["q"] == [[item for item in call if item[:3] not in ((1, (), "s"),
                                                                   (1, ("s",), "t"))]
                         for call in seen["prm"]]


def test_an_expander_with_one_step_too_many_or_a_utility_of_the_wrong_shape_is_an_error():
    class OneMore(FakeExpander):
        def expand(self, requests):
            return [steps + steps[:1] for steps in super().expand(requests)]

    class Short:
        calls_reward_model = False

        def step_rewards(self, items):
            return np.zeros(len(items) - 1)

    with pytest.raises(ValueError, match=r"4 steps for a request of 3 \(problem 0\)"):
        run_search(3, make_planner, OneMore(TREES), HiddenQ(), progress=False)
    with pytest.raises(ValueError, match=r"ProcessUtility.step_rewards returned shape \(5,\) "
                                         r"for 6 items"):
        run_search(3, make_planner, FakeExpander(TREES), HiddenQ(), Short(), progress=False)


def test_search_imports_nothing_of_the_project_outside_search():
    """Search sees the tasks only through its protocols: no module of it may import a
    grader, a task or a model, so no planner can consult the answer."""
    outside = []
    for path in sorted(pathlib.Path(driver.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                names = []
            outside += [(path.name, name) for name in names
                        if name.split(".")[0] == "qstar_jax" and name != "qstar_jax"
                        and not name.startswith("qstar_jax.search")]
            assert not (isinstance(node, ast.ImportFrom) and node.level), path.name
    assert outside == []
