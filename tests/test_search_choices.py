"""experiments/search_choices.py sorts a dumped tree's expansions by the exact value."""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from qstar_jax.search.astar import AStarConfig, AStarPlanner
from qstar_jax.search.driver import run_search
from tests.search.fakes import FakeExpander, HiddenQ, child, tree

SCRIPT = Path(__file__).parents[1] / "experiments/search_choices.py"
spec = importlib.util.spec_from_file_location("search_choices", SCRIPT)
search_choices = importlib.util.module_from_spec(spec)
spec.loader.exec_module(search_choices)


def node(id, parent, steps, h=0.0):
    return {"id": id, "parent": parent, "steps": steps, "h": h}


def test_expansions_are_sorted_by_the_exact_value_and_the_best_h_child_read():
    # live states: every step "ok"; root expanded into a mixed pair where Q̂ prefers the
    # dead child, which is expanded (a dead expansion); the live child into two live ones.
    tree = {"expansion_order": [0, 2, 1, 4],
            "nodes": [node(0, None, []), node(1, 0, ["ok"], h=0.3), node(2, 0, ["bad"], h=0.9),
                      node(3, 2, ["bad", "ok"]), node(4, 1, ["ok", "ok"]),
                      node(5, 1, ["ok", "ok2"]), node(6, 4, ["ok", "ok", "bad"], h=0.1),
                      node(7, 4, ["ok", "ok", "ok"], h=0.2)]}
    counts = search_choices.expansion_kinds(
        tree, lambda steps: all(step.startswith("ok") for step in steps))
    assert counts == {"expansions": 4, "dead_expansions": 1, "live_all_live": 1,
                      "live_mixed": 2, "mixed_best_child_live": 1}


def test_children_whose_q_a_chain_search_never_read_make_no_choice():
    """Best-of-N reads Q̂ of a chain's last step only: the root's children, h None in the
    dump, are a mixed expansion with no best child."""
    tree = {"expansion_order": [0],
            "nodes": [node(0, None, []), node(1, 0, ["bad"], h=None), node(2, 0, ["ok"], h=None)]}
    counts = search_choices.expansion_kinds(tree, lambda steps: "bad" not in steps)
    assert counts == {"expansions": 1, "live_mixed": 1, "mixed_unscored": 1}


def test_at_a_tie_in_h_the_lower_id_child_is_the_best():
    # The root's children 1 (dead) and 2 (live) share h = .5: the search takes 1 first.
    tree = {"expansion_order": [0],
            "nodes": [node(0, None, []), node(1, 0, ["bad"], h=0.5), node(2, 0, ["ok"], h=0.5)]}
    counts = search_choices.expansion_kinds(tree, lambda steps: "bad" not in steps)
    assert counts == {"expansions": 1, "live_mixed": 1, "mixed_best_child_live": 0}
    # The same pair with the live child first: it is the one read.
    tree["nodes"][1:] = [node(1, 0, ["ok"], h=0.5), node(2, 0, ["bad"], h=0.5)]
    counts = search_choices.expansion_kinds(tree, lambda steps: "bad" not in steps)
    assert counts == {"expansions": 1, "live_mixed": 1, "mixed_best_child_live": 1}


def test_a_node_expanded_twice_is_judged_by_each_expansions_own_children():
    """A* with two expansions a node dumps the order 0 1 1 0: the root makes a (h .6) and
    b (.2), a makes a1 and a2, a's second expansion nothing, the root's second c (.9) and
    d. With every state through a dead: the root's first expansion is mixed with its
    best-h child a dead, a's is a dead expansion, the root's second all live. Read over
    all its children, the root would be mixed twice with c (.9) the best, both times."""
    spec = tree({"": [child("a", .6), child("b", .2), child("c", .9, end=True),
                      child("d", .1)],
                 "a": [child("a1", .4), child("a2", .3)], "a a1": [], "a a2": [], "b": []})
    config = AStarConfig(k=2, n_complete=1, expansions_per_node=2)
    [result] = run_search(1, lambda i: AStarPlanner(i, config), FakeExpander({0: spec}),
                          HiddenQ(), include_trees=True, progress=False)
    assert result.tree["expansion_order"] == [0, 1, 1, 0]
    counts = search_choices.expansion_kinds(result.tree, lambda steps: "a" not in steps)
    assert counts == {"expansions": 3, "dead_expansions": 1, "live_mixed": 1,
                      "mixed_best_child_live": 0, "live_all_live": 1}


def test_the_report_sums_each_methods_trees_over_their_own_problems(tmp_path, monkeypatch,
                                                                    capsys):
    """Every tree a root with children a (h .9) and b (h .1); a state is live when its
    steps are all in its own problem's set. qstar's trees of problems 0-3: all dead, then
    mixed with the best child (a) dead, live, dead: a share of 1 / 3. beam's one tree, of
    problem 0, has no mixed expansion: no share."""
    problems = [set(), {"b"}, {"a"}, {"b", "x"}]
    task = SimpleNamespace(can_still_succeed=lambda problem, steps: set(steps) <= problem)
    ctx = SimpleNamespace(config=SimpleNamespace(task=SimpleNamespace(
        name="countdown", eval_split="test", eval_problems=4)), task=task,
        problems=lambda split, count: problems[:count])
    monkeypatch.setattr(search_choices.RunContext, "of_run", lambda run: ctx)
    for method, indices in (("qstar", (3, 2, 1, 0)), ("beam", (0,)),
                            ("best_of_n_matched/n2", (0,))):
        (tmp_path / "trees" / method).mkdir(parents=True)
        for index in indices:
            (tmp_path / "trees" / method / f"{index}.json").write_text(json.dumps({
                "problem_index": index, "expansion_order": [0],
                "nodes": [node(0, None, []), node(1, 0, ["a"], h=0.9),
                          node(2, 0, ["b"], h=0.1)]}))
    report = search_choices.main([str(tmp_path)])
    assert report == {
        "beam": {"expansions": 1, "live_all_dead": 1, "mixed_best_child_live_share": None},
        "best_of_n_matched/n2": {"expansions": 1, "live_all_dead": 1,
                                 "mixed_best_child_live_share": None},
        "qstar": {"expansions": 4, "live_all_dead": 1, "live_mixed": 3,
                  "mixed_best_child_live": 1, "mixed_best_child_live_share": 0.333}}
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == report
    assert list(search_choices.main([str(tmp_path), "--method", "qstar"])) == ["qstar"]
    with pytest.raises(SystemExit, match=r"trees has no trees of \['bogus'\]; it has "
                                         r"\['beam', 'best_of_n_matched/n2', 'qstar'\]"):  # not a report of nothing
        search_choices.main([str(tmp_path), "--method", "bogus"])
    ctx.config.task.name = "gsm8k"
    with pytest.raises(SystemExit, match="the exact value exists for"):
        search_choices.main([str(tmp_path)])
