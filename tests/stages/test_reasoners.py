"""evaluate's wiring of ToT and MCTSr over a scripted runtime: each method runs through
the decoder adapters and is charged what the runtime sampled for its problem."""

import dataclasses
import types

import numpy as np
import pytest

from qstar_jax.config_loading import load_config
from qstar_jax.search.aggregate import Agg
from qstar_jax.search.mctsr import DONT_KNOW
from qstar_jax.search.process_utility import RuleUtility, ZeroUtility
from qstar_jax.search.tot import ToTConfig, q_value
from qstar_jax.stages import reasoners
from qstar_jax.stages.reasoners import reasoner_search, reasoner_slots
from qstar_jax.tasks.base import Problem
from qstar_jax.tasks.prompts import ReasonerPrompts
from tests.stages.scripted_reasoners import TOKENS, OneLineRuntime, run


@pytest.mark.parametrize("method", ["tot_bfs", "tot_dfs"])
def test_tot_expands_through_the_decoder_and_q_judges_the_states(method):
    results, _ = run(method)
    assert [r.problem_index for r in results] == [0, 2]
    for r in results:  # the root's 2 children both end: one expansion
        c = r.counters
        assert (c.expansions, c.q_calls, c.generated_tokens) == (1, 2, 2 * TOKENS)
        assert r.completed and r.steps == ("Score: 50",)


@pytest.mark.parametrize("method, planner", [("tot_bfs", "tot_bfs_planner"),
                                               ("tot_dfs", "ToTDFSPlanner")])
def test_tot_searches_with_the_configured_settings(method, planner, monkeypatch):
    made = []
    real = getattr(reasoners, planner)
    monkeypatch.setattr(reasoners, planner, lambda i, config, value: made.append(
        (i, config, value)) or real(i, config, value))
    run(method, "eval.tot.k=3", "eval.tot.threshold=0.25", "eval.tot.max_expansions=7",
        "eval.temperature=0.7", "decode.max_steps=5", "search.agg=sum", "search.h_agg=min")
    assert made == [(i, ToTConfig(k=3, keep=2, threshold=0.25, max_expansions=7,
                                  temperature=0.7, max_steps=5, agg=Agg.sum, h_agg=Agg.min),
                     q_value) for i in (0, 2)]


class TwoScoresRuntime(OneLineRuntime):
    """Each state's first sampled line is "Score: 10", its second "Score: 90"."""

    def sample(self, slots, problem_indices, node_ids, temperatures):
        steps = super().sample(slots, problem_indices, node_ids, temperatures)
        return [dataclasses.replace(s, text=f"Score: {10 + 80 * (j % 2)}")
                for j, s in enumerate(steps)]


class ScoreQ:
    """Q̂ of a step is its score over 100: 0.1 for the first line, 0.9 for the second."""

    def score(self, items):
        return np.array([int(item.step_text.split()[-1]) / 100 for item in items])


@pytest.mark.parametrize("method", ["tot_bfs", "tot_dfs"])
def test_tot_answers_with_the_state_q_hat_values_highest(method):
    """evaluator=q ranks by Q̂, not by g (0 here, a tie the lower node id, the first line,
    would win): of the root's two finished children, the one Q̂ values at 0.9."""
    config = load_config(overrides=["eval.tot.k=2", "eval.tot.keep=1",
                                    "eval.prefix_sharing=false"])
    problems = [Problem(id="p0", question="q0", reference=None)]
    runtime = TwoScoresRuntime()
    search = reasoner_search(types.SimpleNamespace(config=config), method, problems,
                             runtime, ScoreQ(), ZeroUtility())
    [result] = search([0], method)
    assert result.completed and result.steps == ("Score: 90",)
    assert result.counters.q_calls == 2


def test_tot_dfs_prunes_at_the_configured_threshold():
    """Above both children's Q̂ (0.1 and 0.9), eval.tot.threshold leaves no answer."""
    config = load_config(overrides=["eval.tot.k=2", "eval.tot.keep=1",
                                    "eval.prefix_sharing=false", "eval.tot.threshold=0.95"])
    search = reasoner_search(types.SimpleNamespace(config=config), "tot_dfs",
                             [Problem(id="p0", question="q0", reference=None)],
                             TwoScoresRuntime(), ScoreQ(), ZeroUtility())
    [result] = search([0], "tot_dfs")
    assert not result.completed and result.steps == ()


@pytest.mark.parametrize("method", ["tot_bfs", "tot_dfs"])
def test_tot_judged_by_the_prm_ranks_by_g_and_spends_no_q_hat_call(method):
    """evaluator=prm ranks by g, the process utility's score of each step (the second
    line's here), and never calls Q̂, whose ranking (the first line's) is ignored."""
    config = load_config(overrides=["eval.tot.k=2", "eval.tot.keep=1",
                                    "eval.prefix_sharing=false", "eval.tot.evaluator=prm",
                                    "search.utility=prm", "search.prm_model=/a/prm"])
    problems = [Problem(id="p0", question="q0", reference=None)]
    first_line_q = types.SimpleNamespace(score=lambda items: 1 - ScoreQ().score(items))
    search = reasoner_search(types.SimpleNamespace(config=config), method, problems,
                             TwoScoresRuntime(), first_line_q,
                             RuleUtility(rule=lambda i, steps: int(steps[-1].split()[-1]) / 100))
    [result] = search([0], method)
    assert result.completed and result.steps == ("Score: 90",)
    assert result.counters.q_calls == 0


def test_tot_with_the_value_prompt_charges_its_verdicts_to_the_problem():
    [result, _], _ = run("tot_bfs", "eval.tot.evaluator=value_prompt", "eval.tot.value_samples=3")
    # 2 steps, then 3 verdicts for each of the 2 new states.
    assert result.counters.generated_tokens == (2 + 2 * 3) * TOKENS
    assert result.counters.q_calls == 2


def test_the_value_prompt_samples_its_configured_verdicts_at_its_temperature(monkeypatch):
    made = []
    real = reasoners.ValuePromptScorer
    monkeypatch.setattr(reasoners, "ValuePromptScorer", lambda **settings: made.append(
        settings) or real(**settings))
    run("tot_bfs", "eval.tot.evaluator=value_prompt", "eval.tot.value_samples=2",
        "eval.tot.value_temperature=0.3")
    assert [(s["samples"], s["temperature"]) for s in made] == [(2, 0.3)]


def test_mctsr_writes_critiques_refinements_and_scores_through_the_generator():
    [result, _], _ = run("mctsr")
    # Two roots: the greedy answer and the seed, each scored (2 samples); then one
    # rollout: critique, refine, score (2 samples).
    assert result.counters.expansions == 6
    assert result.counters.generated_tokens == (1 + 2 + 2 + 1 + 1 + 2) * TOKENS
    assert [t.score for t in result.trajectories] == [50, 50, 50]


class RecordingRuntime(OneLineRuntime):
    """Records each prompt prefilled, the tokens it takes from a kept row, and each text's
    token cap."""

    def __init__(self):
        super().__init__()
        self.prompts, self.shared, self.caps = [], [], []

    def prefill_tokens(self, problem_indices, token_lists, *, sources=None, shared=None):
        self.prompts += ["".join(map(chr, tokens)) for tokens in token_lists]
        self.shared += shared or [0] * len(token_lists)
        return super().prefill_tokens(problem_indices, token_lists, sources=sources,
                                      shared=shared)

    def sample_texts(self, slots, problem_indices, node_ids, temperatures, max_tokens,
                     read_complete=None):
        self.caps += max_tokens
        return super().sample_texts(slots, problem_indices, node_ids, temperatures,
                                    max_tokens, read_complete)


def test_mctsr_writes_under_the_configured_token_cap_kept_rows_and_chat_template():
    """eval.text_max_tokens=20 caps every text (the self-scores' own 32 too), none of the 6
    prompts continues a kept row under eval.text_kept_rows=0, and each is the policy's chat
    template over the conversation."""
    config = load_config(overrides=["eval.mctsr.rollouts=1", "eval.mctsr.score_samples=2",
                                    "eval.text_max_tokens=20", "eval.text_kept_rows=0",
                                    "policy.source=/ckpt/chat", "q_train.second_opinion=null",
                                    "policy.chat_template=true"])

    def chat(messages):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages)

    ctx = types.SimpleNamespace(config=config, policy=types.SimpleNamespace(
        tokenizer=types.SimpleNamespace(apply_chat_template=chat)))
    problems = [Problem(id=f"p{i}", question=f"q{i}", reference=None) for i in range(2)]
    runtime = RecordingRuntime()
    [result] = reasoner_search(ctx, "mctsr", problems, runtime, None, ZeroUtility())([1], "m")
    prompts = ReasonerPrompts(questions=("q0", "q1"), chat=chat)
    answer = "Score: 50"
    assert runtime.prompts == [prompts.answer(1), prompts.score(1, answer),
                               prompts.score(1, DONT_KNOW), prompts.critique(1, answer),
                               prompts.refine(1, answer, answer), prompts.score(1, answer)]
    assert runtime.shared == [0] * 6 and runtime.caps == [20] * 9
    assert result.counters.prefilled_tokens == sum(map(len, runtime.prompts))
    assert reasoner_slots(ctx, "mctsr") == 2 + 1


def test_slots_per_problem_cover_what_a_problem_holds():
    _, ctx = run("mctsr")
    # A prompt row, 2 score samples and the generator's 4 kept rows (eval.text_kept_rows).
    assert reasoner_slots(ctx, "mctsr") == 3 + 4
    assert reasoner_slots(ctx, "tot_bfs") == 2 * 3
    assert reasoner_slots(ctx, "tot_dfs") == 1 * 8 + 2 + 1  # decode.max_steps = 8
    # A value prompt's 3 verdicts and its prompt row for each new child, and the kept rows.
    _, ctx = run("mctsr", "eval.tot.evaluator=value_prompt", "eval.tot.value_samples=3")
    assert reasoner_slots(ctx, "tot_bfs") == 2 * 3 + 2 * 2 * 4 + 4
    assert reasoner_slots(ctx, "tot_dfs") == 1 * 8 + 2 + 1 + 2 * 4 + 4
    # K = 3 proposals for each of b = 2 states: 2 parents and their 6 children, each child
    # with 3 verdicts and a prompt row; depth first, 2 siblings wait at each of 8 depths.
    _, ctx = run("mctsr", "eval.tot.k=3", "eval.tot.evaluator=value_prompt",
                 "eval.tot.value_samples=3")
    assert reasoner_slots(ctx, "tot_bfs") == 2 * 4 + 2 * 3 * 4 + 4
    assert reasoner_slots(ctx, "tot_dfs") == 2 * 8 + 3 + 1 + 3 * 4 + 4



class TwoStepsRuntime(RecordingRuntime):
    """Sampled lines are "step <n>" for the n-th sampling call; only the second's end."""

    calls = 0

    def sample(self, slots, problem_indices, node_ids, temperatures):
        self.calls += 1
        return [dataclasses.replace(s, text=f"step {self.calls}", ends_trace=self.calls > 1)
                for s in super().sample(slots, problem_indices, node_ids, temperatures)]


def test_tot_asks_the_value_prompt_about_each_new_state_of_its_own_problem():
    """Problem 2's two children at each depth are valued by prompts over their whole
    state: ("step 1",), then ("step 1", "step 2")."""
    config = load_config(overrides=["eval.tot.k=2", "eval.tot.keep=1", "eval.prefix_sharing=false",
                                    "eval.tot.evaluator=value_prompt", "eval.tot.value_samples=3"])
    problems = [Problem(id=f"p{i}", question=f"q{i}", reference=None) for i in range(3)]
    runtime = TwoStepsRuntime()
    [result] = reasoner_search(types.SimpleNamespace(config=config), "tot_bfs", problems,
                               runtime, None, ZeroUtility())([2], "tot_bfs")
    value = ReasonerPrompts(questions=("q0", "q1", "q2")).value
    assert runtime.prompts == ["prompt", *[value(2, ("step 1",))] * 2,
                               *[value(2, ("step 1", "step 2"))] * 2]
    assert result.steps == ("step 1", "step 2") and result.counters.q_calls == 4
