"""Tree dumps (``eval.dump_trees``): the searches keep their trees only when asked, each is
written as trees/METHOD/PROBLEM.json, and in a multi-process run, where every process
searched alike, process 0 alone writes them."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from qstar_jax.config_loading import load_config
from qstar_jax.search.planner import Outcome, ScoredTrajectory, SearchCounters, SearchResult
from qstar_jax.search.process_utility import ZeroUtility
from qstar_jax.stages import evaluate
from qstar_jax.stages.context import RunContext
from tests.stages.scripted_reasoners import OneLineRuntime
from tests.stages.scripted_reasoners import run as run_reasoner

PROBLEMS = [SimpleNamespace(id="countdown/1")]
RESULTS = [SimpleNamespace(problem_index=0, tree={"nodes": [{"steps": [], "h": 0.5}]})]


@pytest.mark.parametrize("writer", [True, False])
def test_only_the_writer_process_dumps_trees(tmp_path, monkeypatch, writer):
    monkeypatch.setattr(evaluate, "is_writer", lambda: writer)
    evaluate._dump_trees(SimpleNamespace(out=tmp_path), "qstar", PROBLEMS, RESULTS)
    if writer:
        dump = tmp_path / "trees" / "qstar" / "countdown_1.json"
        assert json.loads(dump.read_text()) == RESULTS[0].tree
    else:
        assert list(tmp_path.iterdir()) == []


def test_each_tree_is_written_as_json_under_its_own_problems_id(tmp_path):
    problems = [SimpleNamespace(id="countdown/1"), SimpleNamespace(id="countdown/2")]
    second = {"nodes": [{"steps": ["a"], "h": 0.75}]}
    first = {"nodes": [{"steps": [], "h": np.float32(0.25)}]}  # no JSON number: its str
    results = [SimpleNamespace(problem_index=1, tree=second),
               SimpleNamespace(problem_index=0, tree=first)]
    evaluate._dump_trees(SimpleNamespace(out=tmp_path), "beam", problems, results)
    folder = tmp_path / "trees" / "beam"
    assert sorted(p.name for p in folder.iterdir()) == ["countdown_1.json", "countdown_2.json"]
    assert (folder / "countdown_2.json").read_text() == (
        '{"nodes": [{"steps": ["a"], "h": 0.75}]}\n')
    assert (folder / "countdown_1.json").read_text() == (
        '{"nodes": [{"steps": [], "h": "0.25"}]}\n')


@pytest.mark.parametrize("dump", [True, False])
def test_a_step_search_keeps_its_trees_only_under_eval_dump_trees(dump):
    ctx = SimpleNamespace(config=load_config(overrides=[f"eval.dump_trees={dump}",
                                                        "eval.prefix_sharing=false"]))
    search = evaluate._step_search(ctx, "greedy", 1, OneLineRuntime(), None, ZeroUtility())
    [result] = search([2], "greedy")
    if not dump:
        assert result.tree is None
        return
    assert result.tree["problem_index"] == 2 and result.tree["expansion_order"] == [0]
    assert [(n["id"], n["parent"], n["steps"], n["terminal"]) for n in result.tree["nodes"]] == [
        (0, None, [], False), (1, 0, ["Score: 50"], True)]


@pytest.mark.parametrize("method", ["tot_bfs", "tot_dfs", "mctsr"])
@pytest.mark.parametrize("dump", [True, False])
def test_a_reasoner_keeps_its_trees_only_under_eval_dump_trees(method, dump):
    results, _ = run_reasoner(method, f"eval.dump_trees={dump}")
    assert [r.tree is not None for r in results] == [dump, dump]
    if dump:
        assert [r.tree["problem_index"] for r in results] == [0, 2]


@pytest.mark.parametrize("dump", [True, False])
def test_evaluate_dumps_every_batchs_trees_only_under_eval_dump_trees(tmp_path, monkeypatch,
                                                                       dump):
    def step_search(ctx, method, samples, runtime, q_fn, utility):
        return lambda batch, description: [SearchResult(
            problem_index=i, steps=("#### 4",), node_id=1, outcome=Outcome.complete,
            score=0.0, trajectories=(), tree={"problem_index": i},
            counters=SearchCounters(generated_tokens=1, prefilled_tokens=0, q_calls=0,
                                    prm_calls=0, expansions=1, wall_s=0.0)) for i in batch]

    monkeypatch.setattr(evaluate, "_step_search", step_search)
    monkeypatch.setattr(RunContext, "runtime", lambda self, problems, model=None, rows=None: None)
    ctx = RunContext(config=load_config(None, [
        "eval.methods=[greedy]", "task.eval_problems=3", "eval.problems_per_batch=2",
        "q_train.second_opinion=null", f"eval.dump_trees={dump}"]), out=tmp_path)
    evaluate.evaluate(ctx)
    if not dump:
        assert not (tmp_path / "trees").exists()
        return
    ids = [p.id.replace("/", "_") for p in ctx.problems("test", 3)]
    folder = tmp_path / "trees" / "greedy"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{i}.json" for i in ids)
    assert [json.loads((folder / f"{i}.json").read_text()) for i in ids] == [
        {"problem_index": 0}, {"problem_index": 1}, {"problem_index": 2}]  # both batches


def test_self_consistency_read_from_best_of_n_keeps_its_tree_with_the_votes(tmp_path,
                                                                              monkeypatch):
    """Self-consistency votes on best-of-N's chains: its trees are best-of-N's, with each
    complete chain's votes by its last node."""
    chains = (ScoredTrajectory(steps=("#### 4",), node_id=1, score=0.9),
              ScoredTrajectory(steps=("#### 5",), node_id=2, score=0.1),
              ScoredTrajectory(steps=("so", "#### 5"), node_id=3, score=0.2))

    def step_search(ctx, method, samples, runtime, q_fn, utility):
        return lambda batch, description: [SearchResult(
            problem_index=i, steps=("#### 4",), node_id=1, outcome=Outcome.complete,
            score=0.9, trajectories=chains, tree={"problem_index": i},
            counters=SearchCounters(generated_tokens=3, prefilled_tokens=0, q_calls=3,
                                    prm_calls=0, expansions=1, wall_s=0.0)) for i in batch]

    monkeypatch.setattr(evaluate, "_step_search", step_search)
    monkeypatch.setattr(RunContext, "runtime", lambda self, problems, model=None, rows=None: None)
    monkeypatch.setattr(evaluate, "load_q_function", lambda ctx, problems: None)
    ctx = RunContext(config=load_config(None, [
        "eval.methods=[self_consistency,best_of_n]", "task.eval_problems=2",
        "q_train.second_opinion=null", "eval.dump_trees=true"]), out=tmp_path)
    evaluate.evaluate(ctx)
    [first, _] = [p.id.replace("/", "_") for p in ctx.problems("test", 2)]
    best_of_n = json.loads((tmp_path / "trees" / "best_of_n" / f"{first}.json").read_text())
    voted = json.loads((tmp_path / "trees" / "self_consistency" / f"{first}.json").read_text())
    assert best_of_n == {"problem_index": 0}
    assert voted == {"problem_index": 0, "votes": {"1": 1, "2": 2, "3": 2}}


def test_best_of_n_matched_keeps_each_ns_trees_apart():
    assert evaluate.tree_folder("best_of_n_matched", 8) == "best_of_n_matched/n8"
    assert evaluate.tree_folder("best_of_n", 8) == "best_of_n"
