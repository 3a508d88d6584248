"""evaluate logs, for each (method, problem), the tokens its uncached scorers read in
forward passes of their own (Q̂'s second policy or separate backbone, a Math-Shepherd
PRM), counted from the start of the problem's search: of the attempt that finished, where
the cache made a search begin again."""

from pathlib import Path
from types import SimpleNamespace

from qstar_jax.config_loading import load_config
from qstar_jax.outputs.results_log import ResultsLog
from qstar_jax.qvalue.scorers import ForwardTokens
from qstar_jax.search.planner import Outcome, ScoredTrajectory, SearchCounters, SearchResult
from qstar_jax.search.process_utility import ZeroUtility
from qstar_jax.stages import evaluate
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.evaluate import uncached_prm

STEPS = ("2 + 2 = 4", "#### 4")


def _result(i):
    return SearchResult(problem_index=i, steps=STEPS, node_id=1, outcome=Outcome.complete,
                        score=0.0, trajectories=(ScoredTrajectory(node_id=1, steps=STEPS,
                                                                  score=0.0),),
                        counters=SearchCounters(generated_tokens=1, prefilled_tokens=0,
                                                q_calls=0, prm_calls=0, expansions=1,
                                                wall_s=0.0))


def test_evaluate_logs_each_problems_q_hat_and_prm_tokens_and_none_for_a_vote(
        tmp_path, monkeypatch):
    """best_of_n's and qstar's searches read Q̂ (10 + i tokens for problem i), qstar's the
    PRM too (100 + i); greedy reads neither, nor do self-consistency's votes on best_of_n's
    chains. What the scorers read before (another stage's labels) is not counted."""
    q_fn = SimpleNamespace(forward_tokens=ForwardTokens())
    q_fn.forward_tokens.add([0, 1], [[0] * 1000, [0] * 1000])
    utility = SimpleNamespace(prm=SimpleNamespace(forward_tokens=ForwardTokens()))

    def step_search(ctx, method, samples, runtime, q_hat, rewards):
        def search(batch, description):
            for i in batch:
                if method in ("best_of_n", "qstar"):
                    q_hat.forward_tokens.add([i], [[0] * (10 + i)])
                if method == "qstar":
                    rewards.prm.forward_tokens.add([i], [[0] * (100 + i)])
            return [_result(i) for i in batch]
        return search

    monkeypatch.setattr(evaluate, "_step_search", step_search)
    monkeypatch.setattr(evaluate, "process_utility", lambda ctx, problems: utility)
    monkeypatch.setattr(RunContext, "runtime", lambda self, problems, model=None, rows=None: None)
    ctx = RunContext(config=load_config(None, [
        "eval.methods=[greedy,best_of_n,self_consistency,qstar]", "task.eval_problems=3",
        "eval.problems_per_batch=2", "q_train.second_opinion=null", "search.utility=prm",
        "stages=[train_prm,evaluate]"]),
        out=tmp_path)
    ids = [p.id for p in ctx.problems("test", 3)]
    summary = evaluate.evaluate(ctx, q_fn=q_fn)["methods"]
    logged = {(r.method, r.problem_id): (r.q_scorer_tokens, r.prm_scorer_tokens)
              for r in ResultsLog(tmp_path / "results.jsonl").read()}
    assert [logged["greedy", p] for p in ids] == [(0, 0)] * 3
    assert [logged["self_consistency", p] for p in ids] == [(0, 0)] * 3
    assert [logged["best_of_n", p] for p in ids] == [(10, 0), (11, 0), (12, 0)]
    assert [logged["qstar", p] for p in ids] == [(10, 100), (11, 101), (12, 102)]
    assert (summary["qstar"]["q_scorer_tokens"], summary["qstar"]["prm_scorer_tokens"]) == (
        33, 303)
    assert "| qstar | 0.0 (0.0–56.1) | 3 | 1.0 | 0.0 | 112.0 |" in (
        tmp_path / "summary.md").read_text()


def test_a_search_begun_again_counts_its_scorers_tokens_from_its_new_beginning(monkeypatch):
    """The room keeper makes a fresh planner for a search it begins again, and the search
    counts the attempt that finishes: its scorers' tokens count from that planner."""
    q_fn = SimpleNamespace(forward_tokens=ForwardTokens())
    monkeypatch.setattr(evaluate, "DecoderExpander", lambda runtime, prefix_sharing: None)

    def run_search(count, make_planner, expander, q_hat, utility, **_):
        make_planner(0)
        q_hat.forward_tokens.add([7], [[0] * 5])  # the attempt given up
        make_planner(0)
        q_hat.forward_tokens.add([7], [[0] * 3])  # the attempt that finishes
        return []

    monkeypatch.setattr(evaluate, "run_search", run_search)
    ctx = RunContext(config=load_config(None), out=Path("unused"))
    evaluate._step_search(ctx, "qstar", 1, None, q_fn, ZeroUtility())([7], "qstar")
    assert q_fn.forward_tokens[7] == 3


def test_evaluate_names_a_math_shepherd_prm_as_a_scorer_whose_tokens_are_counted(tmp_path):
    def named(*overrides):
        return uncached_prm(load_config(None, ["eval.methods=[greedy,qstar]",
                                               "search.utility=prm", *overrides]))

    shepherd, learned = tmp_path / "shepherd", tmp_path / "learned"
    shepherd.mkdir()
    (shepherd / "config.json").write_text("{}")
    learned.mkdir()
    (learned / "prm.json").write_text("{}")
    assert named(f"search.prm_model={shepherd}") == f"the Math-Shepherd PRM ({shepherd})"
    # A learned PRM reads the policy's hidden states; no PRM, or none read: nothing named.
    assert named(f"search.prm_model={learned}") is None
    assert named("stages=[train_prm,evaluate]") is None  # this run's learned PRM
    assert named(f"search.prm_model={shepherd}", "search.utility=zero") is None
    assert named(f"search.prm_model={shepherd}", "eval.methods=[greedy]") is None
