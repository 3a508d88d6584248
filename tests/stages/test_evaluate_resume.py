"""evaluate logs each (method, problem) once, a batch of eval.problems_per_batch at a time,
and after a kill searches only the problems some row is missing for: self-consistency's
rows, derived from best-of-N's chains, included."""

import json
from types import SimpleNamespace

import pytest

from qstar_jax.config_loading import load_config
from qstar_jax.outputs.results_log import ResultsLog
from qstar_jax.search.planner import Outcome, ScoredTrajectory, SearchCounters, SearchResult
from qstar_jax.stages import evaluate
from qstar_jax.stages.context import RunContext
from tests.outputs.problem_results import result

STEPS = ("2 + 2 = 4", "#### 4")


@pytest.fixture
def searched(monkeypatch):
    """The (method, batch) of every search evaluate runs; a problem's result spends as many
    generated tokens as its index (best_of_n_matched at N: index x N / 12, rounded down)."""
    calls = []

    def step_search(ctx, method, samples, runtime, q_fn, utility):
        def tokens(i):
            return i * samples // 12 if method == "best_of_n_matched" else i

        def search(batch, description):
            calls.append((method, list(batch)))
            return [SearchResult(problem_index=i, steps=STEPS, node_id=1,
                                 outcome=Outcome.complete, score=0.0,
                                 trajectories=(ScoredTrajectory(node_id=1, steps=STEPS,
                                                                score=0.0),),
                                 counters=SearchCounters(generated_tokens=tokens(i),
                                                         prefilled_tokens=0, q_calls=0,
                                                         prm_calls=0, expansions=1,
                                                         wall_s=0.0))
                    for i in batch]
        return search

    monkeypatch.setattr(evaluate, "_step_search", step_search)
    monkeypatch.setattr(RunContext, "runtime", lambda self, problems, model=None, rows=None: None)
    return calls


def context(tmp_path):
    return RunContext(config=load_config(None, [
        "eval.methods=[greedy,best_of_n,self_consistency]", "task.eval_problems=5",
        "eval.problems_per_batch=2", "q_train.second_opinion=null"]), out=tmp_path)


def logged(tmp_path):
    return sorted((r.method, r.problem_id, r.generated_tokens)
                  for r in ResultsLog(tmp_path / "results.jsonl").read())


def test_each_method_searches_the_problems_in_batches_and_logs_each_once(tmp_path, searched):
    ctx = context(tmp_path)
    ids = [p.id for p in ctx.problems("test", 5)]
    summary = evaluate.evaluate(ctx, q_fn=object())
    assert searched == [("greedy", [0, 1]), ("greedy", [2, 3]), ("greedy", [4]),
                        ("best_of_n", [0, 1]), ("best_of_n", [2, 3]), ("best_of_n", [4])]
    assert logged(tmp_path) == sorted((m, ids[i], i) for m in
                                      ("greedy", "best_of_n", "self_consistency")
                                      for i in range(5))
    assert [summary["methods"][m]["n"] for m in ("greedy", "best_of_n", "self_consistency")] \
        == [5, 5, 5]


def test_a_killed_evaluation_searches_only_what_is_missing(tmp_path, searched):
    ctx = context(tmp_path)
    ids = [p.id for p in ctx.problems("test", 5)]
    # Logged: greedy's first 3 problems; best-of-N's first batch and its second batch's own
    # rows, as a kill before self-consistency's rows of that batch leaves them.
    ResultsLog(tmp_path / "results.jsonl").append(
        [result("greedy", ids[i], False, i) for i in range(3)]
        + [result(m, ids[i], False, i) for m in ("best_of_n", "self_consistency")
           for i in (0, 1)]
        + [result("best_of_n", ids[i], False, i) for i in (2, 3)])
    evaluate.evaluate(ctx, q_fn=object())
    assert searched == [("greedy", [3, 4]), ("best_of_n", [2, 3]), ("best_of_n", [4])]
    assert logged(tmp_path) == sorted((m, ids[i], i) for m in
                                      ("greedy", "best_of_n", "self_consistency")
                                      for i in range(5))


def test_a_batch_shares_its_wall_clock_equally_among_its_problems(tmp_path, searched,
                                                                    monkeypatch):
    """Problems searched side by side each log the batch's time over the batch's size, so
    a method's summed wall_s is the time it took; self-consistency's rows, voted on
    best-of-N's chains, carry best-of-N's share."""
    # Each batch reads the clock before and after its search: greedy's batches [0, 1],
    # [2, 3] and [4] take 3, 1 and 2 s, best-of-N's .5, .25 and 4 s.
    clock = iter([0, 3, 10, 11, 20, 22, 30, 30.5, 40, 40.25, 50, 54])
    monkeypatch.setattr(evaluate, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    ctx = context(tmp_path)
    ids = [p.id for p in ctx.problems("test", 5)]
    summary = evaluate.evaluate(ctx, q_fn=object())
    wall = {(r.method, r.problem_id): r.wall_s
            for r in ResultsLog(tmp_path / "results.jsonl").read()}
    assert [wall["greedy", i] for i in ids] == [1.5, 1.5, 0.5, 0.5, 2.0]
    for method in ("best_of_n", "self_consistency"):
        assert [wall[method, i] for i in ids] == [0.25, 0.25, 0.125, 0.125, 4.0]
    assert [summary["methods"][m]["wall_s"] for m in
            ("greedy", "best_of_n", "self_consistency")] == [6.0, 4.75, 4.75]


def test_best_of_n_matched_is_searched_at_the_matched_n_and_reported_at_it(tmp_path, searched):
    """With best-of-6 logged at 1 token a problem and Q* at 2, best_of_n_matched starts at
    N = 12 (1/6 a sample), which spends the stand-in's 0-4 tokens, 2 a problem: enough;
    N = 11 spends 0, 0, 1, 2, 3, too few, so N = 12's rows are put back. Its batches hold
    what 48 slots hold at 2 x N slots a problem, and summary.md names that N."""
    ctx = RunContext(config=load_config(None, [
        "eval.methods=[best_of_n,qstar,best_of_n_matched]", "task.eval_problems=5",
        "decode.slots=48", "q_train.second_opinion=null"]), out=tmp_path)
    ids = [p.id for p in ctx.problems("test", 5)]
    ResultsLog(tmp_path / "results.jsonl").append(
        [result("best_of_n", i, False, 1) for i in ids]
        + [result("qstar", i, True, 2) for i in ids])
    summary = evaluate.evaluate(ctx, q_fn=object())
    assert searched == 2 * [("best_of_n_matched", [0, 1]), ("best_of_n_matched", [2, 3]),
                            ("best_of_n_matched", [4])]
    assert summary["methods"]["best_of_n_matched"]["generated_tokens"] == 10
    assert json.loads((tmp_path / "best_of_n_matched.json").read_text()) == {
        "samples": 12, "short": [11, 1.2], "enough": 12}
    assert ("best_of_n_matched is best-of-12, the smallest N whose chains spend at least Q*'s "
            "2 generated tokens per problem (it spent 2; best-of-11 spent fewer).") in (
        tmp_path / "summary.md").read_text()


def test_the_second_policy_decodes_its_own_greedy_row_reported_after_greedy(
        tmp_path, searched, monkeypatch):
    """Where Q̂ reads a second policy, evaluate adds its greedy decoding: greedy's search on
    that policy's runtime without Q̂, logged and summarised right after greedy. Its cache
    holds one batch of greedy's rows (2 a problem for eval.problems_per_batch=3), not a
    second decode.slots beside the policy's (memory_plan counts it)."""
    searches = []
    step_search = evaluate._step_search  # the fixture's stand-in

    def recorded(ctx, method, samples, runtime, q_fn, utility):
        searches.append((method, runtime, q_fn))
        return step_search(ctx, method, samples, runtime, q_fn, utility)

    monkeypatch.setattr(evaluate, "_step_search", recorded)
    monkeypatch.setattr(RunContext, "runtime", lambda self, problems, model=None, rows=None: (
        f"runtime of {model or 'policy'}" + ("" if rows is None else f" in {rows} rows")))
    monkeypatch.setattr(RunContext, "second_policy", "second policy")
    q_hat = object()
    ctx = RunContext(config=load_config(None, [
        "eval.methods=[greedy,qstar]", "task.eval_problems=2",
        "eval.problems_per_batch=3"]), out=tmp_path)
    summary = evaluate.evaluate(ctx, q_fn=q_hat)
    assert searches == [("greedy", "runtime of policy", q_hat),
                        ("greedy", "runtime of second policy in 6 rows", None),
                        ("qstar", "runtime of policy", q_hat)]
    assert list(summary["methods"]) == ["greedy", "greedy_second_policy", "qstar"]
    assert [m for m, _, _ in logged(tmp_path)] == ["greedy"] * 2 + [
        "greedy_second_policy"] * 2 + ["qstar"] * 2


def test_a_run_killed_while_dumping_trees_has_every_tree_once_resumed(tmp_path, searched,
                                                                       monkeypatch):
    """A kill as a batch's trees are written leaves that batch unlogged, so the resumed
    run searches it again and dumps its trees: none is missing."""
    ctx = RunContext(config=load_config(None, [
        "eval.methods=[greedy]", "task.eval_problems=3", "eval.problems_per_batch=2",
        "q_train.second_opinion=null", "eval.dump_trees=true"]), out=tmp_path)
    dump = evaluate._dump_trees

    def killed(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluate, "_dump_trees", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate(ctx)
    monkeypatch.setattr(evaluate, "_dump_trees", dump)
    evaluate.evaluate(ctx)
    ids = [p.id.replace("/", "_") for p in ctx.problems("test", 3)]
    assert sorted(p.stem for p in (tmp_path / "trees" / "greedy").iterdir()) == sorted(ids)
    assert searched == [("greedy", [0, 1]), ("greedy", [0, 1]), ("greedy", [2])]


def test_a_method_with_every_problem_logged_builds_no_search(tmp_path, monkeypatch):
    """A method whose problems are all logged (a finished run rerun, or one resumed past
    it) builds no search, nor for the second policy's greedy row a runtime on that
    policy: the reports are written again from the log."""
    monkeypatch.setattr(evaluate, "_step_search", lambda *args: pytest.fail("a search built"))
    monkeypatch.setattr(RunContext, "runtime", lambda self, problems, model=None, rows=None: None)
    monkeypatch.setattr(RunContext, "second_policy", property(
        lambda self: pytest.fail("the second policy was loaded")))
    ctx = RunContext(config=load_config(None, [
        "eval.methods=[greedy,best_of_n,self_consistency]", "task.eval_problems=2"]),
        out=tmp_path)
    methods = ("greedy", "greedy_second_policy", "best_of_n", "self_consistency")
    ResultsLog(tmp_path / "results.jsonl").append(
        [result(m, p.id, True, 1) for m in methods for p in ctx.problems("test", 2)])
    summary = evaluate.evaluate(ctx, q_fn=object())
    assert [(m, s["n"]) for m, s in summary["methods"].items()] == [(m, 2) for m in methods]
