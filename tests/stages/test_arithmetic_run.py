"""The default experiment's world end to end on a tiny scale: the arithmetic chains, a
policy trained from scratch with its joint value head, labels by the task's exact
solver, Q̂, and every method with no verifier inside a search (g = 0)."""

import dataclasses
import json
import random

import numpy as np

import pytest

from qstar_jax.config import METHODS
from qstar_jax.config_loading import load_config, to_yaml
from qstar_jax.outputs.results_log import ResultsLog
from qstar_jax.qvalue.dataset import load_labelled
from qstar_jax.qvalue.rollouts import collect_rollouts
from qstar_jax.run import main
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.rollouts import label
from qstar_jax.tasks.base import join_steps

TINY = [
    "task.name=arithmetic", "search.utility=zero",
    "label.method=stronger_model", "label.stronger_model=solver", "label.gamma=0.5",
    "policy_training.value_weight=1.0", "policy_training.value_batch_size=8",
    "policy_training.steps=30", "policy_training.train_problems=100",
    "policy_training.hidden_size=32", "policy_training.intermediate_size=64",
    "policy_training.num_layers=1", "policy_training.num_heads=2",
    "policy_training.num_kv_heads=1", "policy_training.batch_size=16",
    "task.train_problems=6", "task.eval_problems=4", "q_train.max_epochs=2",
    "collect.rollouts_per_problem=2", "decode.max_len=96", "decode.step_token_cap=24",
    "decode.slots=256", "decode.max_steps=6", "search.k=3", "search.max_expansions=6",
    "eval.samples=2", "eval.beam_k=2", "eval.problems_per_batch=4",
    "task.options={config: {operations: [2, 3]}}",
]


@pytest.fixture(scope="module")
def arithmetic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("arithmetic")
    assert main([*TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def solver_traces_run(arithmetic_run, tmp_path_factory):
    """The label stage of a run beside ``arithmetic_run`` (its policy and config) over
    traces written here: on each of two training problems the solution, a trace whose
    first line is wrong and one whose second line is (the tiny policy's own traces go
    wrong at their first line, so they hold no live state past the root)."""
    out = tmp_path_factory.mktemp("solver_traces")
    config = load_config(arithmetic_run / "config.yaml")  # its first two training problems
    (out / "config.yaml").write_text(to_yaml(dataclasses.replace(
        config, task=dataclasses.replace(config.task, train_problems=2))))
    (out / "policy").symlink_to(arithmetic_run / "policy")
    ctx = RunContext.of_run(out)
    task, rng, problems = ctx.task, random.Random(0), ctx.problems("train", 2)
    written = []
    for problem in problems:
        solution = tuple(task.solution_steps(problem))
        traces = []
        for right in (0, 1):  # the wrong line first, so no order of rows ranks like exact
            wrong = [*solution[:right], task.wrong_step(problem, solution[:right], rng)]
            traces.append((*wrong, *task.solver_completion(problem, wrong)))
        written.append([*traces, solution])

    class WrittenTraces:
        def continue_from(self, items, n, temperature, max_steps=None):
            return [written[i] for i, _ in items]

    collect_rollouts([0, 1], WrittenTraces(),
                     lambda i, trace: float(task.grade(problems[i], join_steps(trace))),
                     per_problem=3, temperature=1.0, out_path=ctx.rollouts_path,
                     progress=False)
    label(ctx)
    return out


def test_labels_are_the_solvers_exact_discounted_values(arithmetic_run):
    ctx = RunContext(config=load_config(None, TINY), out=arithmetic_run)
    problems = ctx.problems("train", 6)
    steps, features = load_labelled(arithmetic_run / "labels.jsonl")
    assert len(steps) == len(features) > 0
    live = []
    for step in steps:
        state = (*step.prefix_steps, step.step_text)
        problem = problems[step.problem_index]
        remaining = len(ctx.task.solver_completion(problem, state))
        exact = ctx.task.can_still_succeed(problem, state)
        live.append(exact)
        assert step.label == pytest.approx(0.5 ** remaining if exact else 0.0)
    # The tiny policy's first lines are all wrong, so this compares dead states (label 0)
    # only; test_the_solver_labels_a_live_state_by_its_distance_to_the_answer checks the
    # live ones on traces written for it.
    assert not any(live)


def test_the_solver_labels_a_live_state_by_its_distance_to_the_answer(solver_traces_run):
    """label.stronger_model=solver: a line of the solution is labelled γ^k (γ = 0.5) for
    the k lines the solver still writes after it (k = 0 for the answer line: its reward);
    a wrong line, which the solver cannot bring to the answer, 0."""
    ctx = RunContext.of_run(solver_traces_run)
    steps, features = load_labelled(ctx.labels_path)
    labels = {(s.problem_index, s.prefix_steps, s.step_text): s.label for s in steps}
    expected = {}
    for i, problem in enumerate(ctx.problems("train", 2)):
        solution = tuple(ctx.task.solution_steps(problem))
        assert len(solution) in (3, 4)  # 2 or 3 operations, then the answer line
        for t, line in enumerate(solution):
            expected[i, solution[:t], line] = 0.5 ** (len(solution) - 1 - t)
    # The labelled live states are the solution's prefixes (a wrong line's state is
    # dead, and live_states_only drops the pairs after it), each with one wrong child
    # at the first and second line.
    wrong = {key for key in labels if key not in expected}
    assert len(wrong) == 4 and all(labels[key] == 0.0 for key in wrong)
    assert {key: labels[key] for key in expected} == pytest.approx(expected)
    assert len(features) == len(labels) == len(expected) + 4


def test_every_method_runs_and_qstar_no_q_spends_no_q_hat(arithmetic_run):
    summary = json.loads((arithmetic_run / "summary.json").read_text())["methods"]
    # Q̂ reads the second policy's opinion, so its greedy is reported beside the policy's.
    assert tuple(summary) == (METHODS[0], "greedy_second_policy", *METHODS[1:])
    assert summary["qstar_no_q"]["q_calls"] == 0 < summary["qstar"]["q_calls"]
    # The second policy Q̂ reads runs over each child Q* scores; with λ = 0 it never runs.
    assert summary["qstar_no_q"]["q_scorer_tokens"] == 0 < summary["qstar"]["q_scorer_tokens"]
    assert summary["greedy"]["q_scorer_tokens"] == summary["qstar"]["prm_scorer_tokens"] == 0
    assert summary["greedy"]["prm_calls"] == summary["qstar"]["prm_calls"] == 0
    assert "pass_at_n" in summary["best_of_n"]
    results = ResultsLog(arithmetic_run / "results.jsonl").read()
    for r in results:
        if r.method == "best_of_n":
            assert r.any_correct or not r.correct  # a right answer is one of the chains
    lines = (arithmetic_run / "summary.md").read_text().splitlines()
    assert lines[-2].startswith("- qstar − qstar_no_q") and lines[-1].startswith(
        "- qstar − best_of_n_matched")


def test_policy_training_logs_the_value_head(arithmetic_run):
    log = json.loads((arithmetic_run / "policy" / "training_log.json").read_text())
    assert len(log["value_loss"]) == len(log["loss"]) >= 1


def test_label_features_are_what_the_decoder_gives_search(arithmetic_run):
    """Q̂ trains on features recomputed by a full forward pass (hidden state at the step's
    end, the step's log-probability); search reads the decoder's: they must agree."""
    from qstar_jax.qvalue.features import last_step_features

    ctx = RunContext(config=load_config(None, TINY), out=arithmetic_run)
    problems = ctx.problems("validation", 3)
    runtime = ctx.runtime(problems)
    prompts = ctx.prompts(problems)
    slots = runtime.prefill([0, 1, 2], [() for _ in problems])
    sampled = runtime.sample(slots, [0, 1, 2], node_ids=[7, 8, 9], temperatures=[1.0] * 3)
    runtime.free([s.slot for s in sampled])
    # The step exactly as sampled (an untrained policy may stop at the token cap, without
    # the newline a finished step ends with).
    decode = ctx.policy.tokenizer.decode
    hidden, logprob = last_step_features(ctx.policy.model, ctx.policy.tokenizer, prompts,
                                         [decode(list(s.token_ids)) for s in sampled])
    np.testing.assert_allclose(hidden, np.stack([s.hidden for s in sampled]), atol=1e-4)
    np.testing.assert_allclose(logprob, [s.logprob for s in sampled], atol=1e-3)
    assert all(s.logprob < 0 for s in sampled)


def test_second_opinion_with_the_same_policy_reads_the_saved_log_probabilities(
        arithmetic_run, solver_traces_run):
    """experiments/second_opinion.py recomputes each labelled step's log-probability under
    another policy as the label stage computed it: given the run's own policy, its scores
    are the saved ones, so every AUC and choice agrees with them. (On the labels of the
    written traces: the tiny policy's own labelled states are all dead, where every AUC
    is undefined and no state has a right and a wrong child to choose between.)"""
    import runpy
    from pathlib import Path

    script = Path(__file__).parents[2] / "experiments/second_opinion.py"
    report = runpy.run_path(str(script))["main"]([str(solver_traces_run),
                                                  str(arithmetic_run / "policy")])
    assert report["pairs"] == len(
        (solver_traces_run / "labels.jsonl").read_text().splitlines())
    # On each problem the root and the first line's state have a right and a wrong child.
    assert report["mixed_states"] == 4
    assert report["auc"]["first"] == report["auc"]["second"] == report["auc"]["sum"]
    assert set(report["auc_by_step"]) == {"1", "2", "3", "4"}
    for row in report["auc_by_step"].values():
        assert row["first"] == row["second"]
    choice = report["best_child_right"]
    assert choice["first"] == choice["second"] == choice["sum"] is not None


def test_a_second_opinion_from_the_policy_itself_reads_the_saved_log_probabilities(
        arithmetic_run):
    """q_train.second_opinion scores each step with a second policy as the label stage
    scored it with the first: given the run's own policy, the saved log-probabilities."""
    from qstar_jax.qvalue.dataset import load_step_logprobs
    from qstar_jax.qvalue.scorers import SecondOpinion

    ctx = RunContext(config=load_config(None, TINY), out=arithmetic_run)
    problems = ctx.problems(ctx.config.task.train_split, ctx.config.task.train_problems)
    steps, _ = load_labelled(ctx.labels_path)
    opinion = SecondOpinion(ctx.policy, ctx.prompts(problems))
    np.testing.assert_allclose(
        opinion(steps),
        load_step_logprobs(ctx.labels_path), atol=1e-4)


def test_a_second_policy_trained_in_the_run_is_the_next_seeds_and_q_hat_reads_it(
        arithmetic_run, tmp_path):
    """q_train.second_opinion=scratch (the default): train_policy also trains the policy a
    run with seed + 1 trains (the same weights, bit for bit), and Q̂'s head gets its column."""
    from qstar_jax.qvalue.checkpoint import load_q_head

    alone = tmp_path / "alone"
    assert main([*TINY, "seed=1", "stages=[train_policy]", "--out", str(alone)]) == 0
    weights = "model.safetensors"
    assert ((arithmetic_run / "second_policy" / weights).read_bytes()
            == (alone / "policy" / weights).read_bytes()
            != (arithmetic_run / "policy" / weights).read_bytes())
    ctx = RunContext(config=load_config(None, TINY), out=arithmetic_run)
    head = load_q_head(ctx.q_dir, policy_config=ctx.policy.config)
    assert head.head_config.second_opinion and head.head_config.step_logprob


def test_the_second_policys_greedy_row_is_that_policy_decoding_alone(arithmetic_run, tmp_path):
    """greedy_second_policy is greedy decoding with the second policy as the policy: the
    same answers, correctness and tokens as a run that decodes with it."""
    alone = tmp_path / "alone"
    assert main([*TINY, f"policy.source={arithmetic_run / 'second_policy'}",
                 "q_train.second_opinion=null", "stages=[evaluate]", "eval.methods=[greedy]",
                 "--out", str(alone)]) == 0

    def rows(folder, method):
        return {r.problem_id: (r.answer, r.correct, r.generated_tokens)
                for r in ResultsLog(folder / "results.jsonl").read() if r.method == method}

    second = rows(arithmetic_run, "greedy_second_policy")
    assert second == rows(alone, "greedy") and len(second) == 4


def test_a_text_whose_read_part_is_complete_stops_after_that_chunk(arithmetic_run):
    """A request's ``read_complete`` check ends its samples between the sampler's chunks
    once it holds: the text is the start of the one sampled without the check (the same
    draws), cut at the first chunk edge where the check holds, and only that much is
    charged; a request without a check in the same call is untouched."""
    from qstar_jax.policy.text_generator import DecoderTextGenerator
    from qstar_jax.search.interface import TextRequest

    ctx = RunContext(config=load_config(None, [*TINY, "decode.step_chunk=4"]),
                     out=arithmetic_run)
    problems = ctx.problems("validation", 2)
    prompts = ctx.prompts(problems)

    def sample(check):
        runtime = ctx.runtime(problems)
        generator = DecoderTextGenerator(runtime, max_tokens=24)
        # (A stream whose text runs to the cap, with an "=" early in it.)
        [[plain], [checked]] = generator.generate([
            TextRequest(problem_index=i, prompt=prompts[i], num_samples=1, temperature=1.0,
                        stream="a", read_complete=c) for i, c in enumerate([None, check])])
        return checked, plain

    (whole, plain), (cut, plain_again) = sample(None), sample(lambda text: "=" in text)
    assert plain_again == plain
    assert "=" in cut.text and whole.text.startswith(cut.text) and cut.text != whole.text
    tokens = ctx.policy.tokenizer.encode(cut.text)
    assert cut.generated_tokens % 4 == 0 and cut.generated_tokens < whole.generated_tokens
    assert "=" not in ctx.policy.tokenizer.decode(tokens[:cut.generated_tokens - 4])


def test_texts_continuing_kept_rows_are_the_texts_of_whole_prompts(arithmetic_run):
    """A prompt that continues a row the text generator kept (as MCTSr's refinement
    continues its critique) is forked from it and prefills only its new tokens, and the
    text sampled after it is the one a whole-prompt prefill gives."""
    from qstar_jax.policy.text_generator import DecoderTextGenerator
    from qstar_jax.search.interface import TextRequest

    ctx = RunContext(config=load_config(None, TINY), out=arithmetic_run)
    problems = ctx.problems("validation", 2)
    prompts = ctx.prompts(problems)

    def converse(kept_rows):
        runtime = ctx.runtime(problems)
        generator = DecoderTextGenerator(runtime, max_tokens=24,
                                         kept_rows_per_problem=kept_rows)

        def ask(texts, stream):
            return [g.text for [g] in generator.generate([
                TextRequest(problem_index=i, prompt=t, num_samples=1, temperature=1.0,
                            stream=stream) for i, t in enumerate(texts)])]

        first = ask(prompts, "first")
        again = ask([f"{p}{a}\nSo:\n" for p, a in zip(prompts, first)], "again")
        generator.drop_kept()
        assert runtime.decoder.pool.num_free == runtime.decoder.num_slots
        return first + again, [generator.prefilled_tokens(i) for i in range(2)]

    texts, prefilled = converse(0)
    kept_texts, kept_prefilled = converse(4)
    assert kept_texts == texts
    encode = ctx.policy.tokenizer.encode
    whole = [len(encode(p)) + len(encode(f"{p}{a}\nSo:\n")) for p, a in zip(prompts, texts)]
    assert prefilled == whole
    # The second prompt computes only what follows the first answer's last line.
    assert all(k <= len(encode(p)) + len(encode("\nSo:\n"))
               for k, p in zip(kept_prefilled, prompts))


def test_a_collect_stage_with_every_rollout_on_disk_builds_no_decoder(arithmetic_run, tmp_path,
                                                                      monkeypatch):
    """A resumed or reused run's collect stage has nothing to sample, so it allocates no
    cache (a paged cache of a real model is gigabytes, seconds to zero)."""
    from qstar_jax.stages.rollouts import collect

    (tmp_path / "rollouts.jsonl").write_bytes((arithmetic_run / "rollouts.jsonl").read_bytes())
    ctx = RunContext(config=load_config(None, TINY), out=tmp_path)
    monkeypatch.setattr(RunContext, "runtime", lambda *_, **__: pytest.fail("built a decoder"))
    collect(ctx)
    assert (tmp_path / "rollouts.jsonl").read_bytes() == (
        arithmetic_run / "rollouts.jsonl").read_bytes()


def test_the_label_feature_timer_gives_back_the_features_the_run_saved(arithmetic_run, capsys,
                                                                        monkeypatch):
    """experiments/label_features_time.py recomputes a run's label features as the stage
    did: on the run's own machine and code, exactly the saved ones."""
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "experiments/label_features_time.py"
    monkeypatch.setattr(sys, "argv", [str(script), str(arithmetic_run)])
    runpy.run_path(str(script), run_name="__main__")
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["pairs"] == len(load_labelled(arithmetic_run / "labels.jsonl")[0])
    # This tiny policy's traces end after one step, so no pair rides on another's row
    # (tests/qvalue/test_features.py checks the sharing).
    assert figures["rows"] == figures["pairs"]
    assert figures["hidden_max_diff"] == 0.0 and figures["logprob_max_diff"] == 0.0
