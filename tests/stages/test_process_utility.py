"""The process utility evaluate's searches score steps with (search.utility): the code
rule on the task's code prefix and the steps so far, the Countdown rule from the task;
only the searches whose choices read its rewards get it."""

from types import SimpleNamespace

import numpy as np
import pytest

from qstar_jax.config import Scorer, ToTEvaluator, Utility
from qstar_jax.config_loading import load_config
from qstar_jax.outputs.reports import SECOND_POLICY_GREEDY
from qstar_jax.search.interface import QItem
from qstar_jax.search.planner import Outcome, SearchCounters, SearchResult
from qstar_jax.search.process_utility import ZeroUtility
from qstar_jax.stages import evaluate
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.evaluate import process_utility, reads_process_rewards
from qstar_jax.tasks.base import Problem

PROBLEMS = [Problem(id="f", question='def f(x):\n    """Doc."""\n', reference=None),
            Problem(id="g", question="def g(s):\n", reference=None)]


def utility(kind, task=None):
    config = SimpleNamespace(search=SimpleNamespace(utility=kind))
    return process_utility(SimpleNamespace(config=config, task=task), PROBLEMS)


def item(problem_index, *steps):
    return QItem(problem_index=problem_index, prefix_steps=steps[:-1], step_text=steps[-1],
                 hidden=None)


def test_the_code_rule_reads_the_steps_after_each_problems_code_prefix():
    code = utility(Utility.code_rule, SimpleNamespace(code_prefix=lambda p: p.question))
    rewards = code.step_rewards([
        item(0, "    return x"),  # a body after f's docstring
        item(0, "    return x)"),  # a bracket that closes nothing
        item(0, "    y = (x", "    + 1)"),  # closes the bracket its earlier step opened
        item(1, "    return s"),  # g's body
        item(1, "return s"),  # g's def is still waiting for an indented body
    ])
    np.testing.assert_array_equal(rewards, [0.0, -0.5, 0.0, 0.0, -0.5])


def test_the_code_rule_reads_the_code_as_grading_runs_it_without_its_fences():
    code = utility(Utility.code_rule, SimpleNamespace(code_prefix=lambda p: p.question))
    rewards = code.step_rewards([
        item(0, "    return x", "```"),  # the closing fence ends a sound program
        item(0, "    return x)", "```"),  # and a broken one
        item(1, "```python", "    return s"),  # a reply that re-opens the block
        item(1, "```python", "return s"),
    ])
    np.testing.assert_array_equal(rewards, [0.0, -0.5, 0.0, -0.5])


def test_the_countdown_rule_is_the_tasks_step_reward_of_that_problem():
    asked = []

    def step_reward(problem, steps):
        asked.append((problem.id, steps))
        return 1.0
    countdown = utility(Utility.countdown_rule, SimpleNamespace(step_reward=step_reward))
    np.testing.assert_array_equal(countdown.step_rewards([item(1, "a", "b"), item(0, "c")]),
                                  [1.0, 1.0])
    assert asked == [("g", ("a", "b")), ("f", ("c",))]
    assert isinstance(utility(Utility.zero), ZeroUtility)


@pytest.mark.parametrize("scorer, evaluator, reading", [
    ("f", "q", {"beam", "qstar", "qstar_no_q", "best_of_n", "best_of_n_matched"}),
    ("q", "q", {"beam", "qstar", "qstar_no_q"}),
    ("prm", "prm",
     {"beam", "qstar", "qstar_no_q", "best_of_n", "best_of_n_matched", "tot_bfs", "tot_dfs"}),
    ("f", "value_prompt", {"beam", "qstar", "qstar_no_q", "best_of_n", "best_of_n_matched"}),
])
def test_only_searches_that_rank_by_g_read_the_process_rewards(scorer, evaluator, reading):
    config = SimpleNamespace(eval=SimpleNamespace(best_of_n_scorer=Scorer(scorer),
                                                  tot=SimpleNamespace(
                                                      evaluator=ToTEvaluator(evaluator))))
    methods = ("greedy", SECOND_POLICY_GREEDY, "self_consistency", "best_of_n",
               "best_of_n_matched", "beam", "qstar", "qstar_no_q", "tot_bfs", "tot_dfs",
               "mctsr")
    assert {m for m in methods if reads_process_rewards(config, m)} == reading


def test_evaluate_hands_the_process_utility_only_to_searches_that_read_it(tmp_path,
                                                                         monkeypatch):
    """Under a PRM, greedy and best-of-N ranked by Q̂ search with ZeroUtility: no PRM call
    is made or charged for rewards their choices never read; Q* gets the PRM, and where no
    method reads it, it is not loaded."""
    prm = SimpleNamespace(name="the PRM")
    given = {}

    def step_search(ctx, method, samples, runtime, q_fn, utility):
        given[method] = utility
        return lambda batch, description: [SearchResult(
            problem_index=i, steps=("#### 4",), node_id=1, outcome=Outcome.complete,
            score=0.0, trajectories=(), tree=None,
            counters=SearchCounters(generated_tokens=1, prefilled_tokens=0, q_calls=0,
                                    prm_calls=0, expansions=1, wall_s=0.0)) for i in batch]

    monkeypatch.setattr(evaluate, "_step_search", step_search)
    monkeypatch.setattr(evaluate, "process_utility", lambda ctx, problems: prm)
    monkeypatch.setattr(RunContext, "runtime", lambda self, problems, model=None, rows=None: None)
    ctx = RunContext(config=load_config(None, [
        "eval.methods=[greedy,best_of_n,qstar]", "eval.best_of_n_scorer=q",
        "task.eval_problems=2", "q_train.second_opinion=null"]), out=tmp_path)
    evaluate.evaluate(ctx, q_fn=lambda items: np.zeros(len(items)))
    assert given["qstar"] is prm
    assert isinstance(given["greedy"], ZeroUtility) and isinstance(given["best_of_n"],
                                                                   ZeroUtility)
    # Where no method reads the rewards, the PRM is not even loaded.
    monkeypatch.setattr(evaluate, "process_utility",
                        lambda ctx, problems: pytest.fail("the PRM was loaded"))
    ctx = RunContext(config=load_config(None, [
        "eval.methods=[greedy,self_consistency]", "task.eval_problems=2",
        "q_train.second_opinion=null"]), out=tmp_path / "unread")
    evaluate.evaluate(ctx)
    assert isinstance(given["self_consistency"], ZeroUtility)
