"""The run CLI end to end on a tiny Countdown world: every stage, every method, resume."""

import json
import re
import runpy
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from qstar_jax.config_loading import load_config, to_yaml
from qstar_jax.models.loading import load_model
from qstar_jax.models.sharded_params import PARAMS_FOLDER
from qstar_jax.outputs.results_log import ResultsLog
from qstar_jax.parallel import make_mesh
from qstar_jax.run import main
from qstar_jax.stages.context import RunContext

METHODS = ("greedy", "self_consistency", "best_of_n", "beam", "qstar", "qstar_no_q",
           "best_of_n_matched")
# The verifier-guided Countdown world (configs/countdown_verifier.yaml), tiny.
TINY = [
    "task.name=countdown", "search.agg=sum", "label.method=best_of_rollouts",
    "label.gamma=0.25", "label.live_states_only=false", "q_train.step_logprob=false",
    "policy_training.steps=40", "policy_training.train_problems=200",
    "policy_training.hidden_size=32", "policy_training.intermediate_size=64",
    "policy_training.num_layers=1", "policy_training.num_heads=2",
    "policy_training.num_kv_heads=1", "policy_training.batch_size=16",
    "task.train_problems=6", "task.eval_problems=6",
    "collect.rollouts_per_problem=2", "label.rollouts_per_state=2", "q_train.max_epochs=2",
    "decode.max_len=96", "decode.step_token_cap=32", "decode.slots=256", "decode.max_steps=4",
    "search.k=3", "search.n_complete=2", "search.max_expansions=4",
    "eval.samples=2", "eval.beam_k=2", "eval.problems_per_batch=4",
    "search.utility=countdown_rule", "q_train.second_opinion=null",
    "policy_training.learning_rate=3e-3",
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main([*TINY, "--out", str(out)]) == 0
    return out


def _without_wall(results):
    return [{k: v for k, v in vars(r).items() if k != "wall_s"} for r in results]


def _evaluated_again(finished_run, out, *overrides):
    """The results of evaluating ``finished_run``'s trained outputs again into ``out``
    under ``overrides`` (``--reuse``)."""
    assert main(["--reuse", str(finished_run), "--out", str(out), *TINY, *overrides]) == 0
    return ResultsLog(out / "results.jsonl").read()


def test_every_stage_writes_its_outputs(finished_run):
    out = finished_run
    for name in ("config.yaml", "policy/config.json", "policy/model.safetensors",
                 f"policy/{PARAMS_FOLDER}", "rollouts.jsonl", "labels.jsonl",
                 "q_training.json", "results.jsonl", "summary.json", "summary.md",
                 "accuracy_vs_tokens.png"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())["methods"]
    assert tuple(summary) == METHODS
    for method, entry in summary.items():
        assert entry["n"] == 6
        assert 0.0 <= entry["accuracy"] <= 1.0
        assert entry["generated_tokens"] > 0 and entry["prefilled_tokens"] > 0
    assert summary["greedy"]["q_calls"] == 0 and summary["qstar"]["q_calls"] > 0
    # Q* expands K children per expansion: it samples more than one greedy chain.
    assert summary["qstar"]["generated_tokens"] > summary["greedy"]["generated_tokens"]
    results = ResultsLog(out / "results.jsonl").read()
    assert len(results) == 6 * len(METHODS)
    assert len({(r.method, r.problem_id) for r in results}) == len(results)


def test_later_stages_restore_the_trained_policy_onto_the_mesh(finished_run, monkeypatch):
    """A run's context loads the policy train_policy wrote from its orbax parameters,
    straight onto the run's mesh, without reading the HF export; the same weights."""
    def params(model):
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    exported = params(load_model(finished_run / "policy").model)

    def no_safetensors(*args, **kwargs):
        raise AssertionError("the policy was read from its safetensors")
    monkeypatch.setattr("qstar_jax.models.loading.load_hf_model", no_safetensors)
    mesh = make_mesh()
    ctx = RunContext(config=load_config(finished_run / "config.yaml"), out=finished_run,
                     mesh=mesh)
    restored = params(ctx.policy.model)
    assert all(x.sharding.mesh == mesh for x in jax.tree.leaves(restored))
    jax.tree.map(np.testing.assert_array_equal, restored, exported)


def test_rerun_is_a_no_op_and_a_killed_run_resumes_to_the_same_results(finished_run, tmp_path):
    original = ResultsLog(finished_run / "results.jsonl").read()
    assert main([*TINY, "--out", str(finished_run)]) == 0
    assert _without_wall(ResultsLog(finished_run / "results.jsonl").read()) == \
        _without_wall(original)

    killed = tmp_path / "killed"
    shutil.copytree(finished_run, killed)
    lines = (finished_run / "results.jsonl").read_text().splitlines(keepends=True)
    # Killed mid-way through the third method, in the middle of writing a line.
    (killed / "results.jsonl").write_text("".join(lines[:15]) + lines[15][:40])
    (killed / "summary.json").unlink()
    assert main([*TINY, "--out", str(killed)]) == 0
    resumed = ResultsLog(killed / "results.jsonl").read()
    key = lambda r: (r["method"], r["problem_id"])
    assert sorted(_without_wall(resumed), key=key) == sorted(_without_wall(original), key=key)


def test_running_other_stages_of_a_finished_run_in_its_folder_is_allowed(finished_run):
    original = ResultsLog(finished_run / "results.jsonl").read()
    assert main([*TINY, "stages=[evaluate]", "--out", str(finished_run)]) == 0
    assert _without_wall(ResultsLog(finished_run / "results.jsonl").read()) == \
        _without_wall(original)


def test_a_different_config_in_the_same_folder_is_refused(finished_run, capsys):
    assert main([*TINY, "search.k=4", "--out", str(finished_run)]) == 2
    assert "different config" in capsys.readouterr().err


def test_reuse_evaluates_on_the_trained_outputs_of_another_run(finished_run, tmp_path):
    out = tmp_path / "ablation"
    assert main([*TINY, "eval.methods=[qstar]", "--reuse", str(finished_run),
                 "--out", str(out)]) == 0
    for name in ("policy", "labels.jsonl", "q_checkpoint", "q_training.json"):
        assert (out / name).is_symlink() and (out / name).resolve() == (finished_run / name)
    # The same Q̂, policy and search settings: the same results as the original run's.
    original = [r for r in ResultsLog(finished_run / "results.jsonl").read() if r.method == "qstar"]
    assert _without_wall(ResultsLog(out / "results.jsonl").read()) == _without_wall(original)
    # Search settings may differ; a training setting may not.
    assert main([*TINY, "eval.methods=[qstar]", "search.k=2", "--reuse", str(finished_run),
                 "--out", str(tmp_path / "k2")]) == 0


def test_self_consistency_voted_on_best_of_ns_chains_is_self_consistency_searched(
        finished_run, tmp_path):
    # The run evaluated both, so self-consistency voted on best-of-N's chains; alone it
    # samples its own, and must answer and spend the same.
    alone = _evaluated_again(finished_run, tmp_path / "alone",
                             "eval.methods=[self_consistency]")
    voted = [r for r in _without_wall(ResultsLog(finished_run / "results.jsonl").read())
             if r["method"] == "self_consistency"]
    assert len(voted) == 6
    assert _without_wall(alone) == voted


def test_matched_best_of_n_is_the_smallest_n_that_spends_qstars_tokens(finished_run, tmp_path):
    def tokens_per_problem(folder, method):
        entry = json.loads((folder / "summary.json").read_text())["methods"][method]
        return entry["generated_tokens"] / entry["n"]

    n = json.loads((finished_run / "best_of_n_matched.json").read_text())["samples"]
    assert n > 2  # Q* spent more than best-of-2 on the tiny world
    assert f"best_of_n_matched is best-of-{n}," in (finished_run / "summary.md").read_text()
    qstar = tokens_per_problem(finished_run, "qstar")
    assert tokens_per_problem(finished_run, "best_of_n_matched") >= qstar
    for samples in (n, n - 1):
        out = tmp_path / f"bon{samples}"
        assert main([*TINY, "eval.methods=[best_of_n]", f"eval.samples={samples}", "--reuse",
                     str(finished_run), "--out", str(out)]) == 0
        if samples == n:  # the same searches as the run's best_of_n_matched
            matched = [dict(r, method="best_of_n") for r in _without_wall(
                ResultsLog(finished_run / "results.jsonl").read())
                if r["method"] == "best_of_n_matched"]
            assert _without_wall(ResultsLog(out / "results.jsonl").read()) == matched
        else:  # one sample fewer falls short
            assert tokens_per_problem(out, "best_of_n") < qstar


@pytest.mark.parametrize("override, source, message", [
    ("label.rollouts_per_state=3", "finished", "label.rollouts_per_state"),
    ("eval.samples=3", "empty", "finished train_q"),
])
def test_reuse_refuses_what_it_cannot_stand_on(finished_run, tmp_path, capsys, override, source,
                                               message):
    folder = finished_run if source == "finished" else tmp_path / "empty"
    folder.mkdir(exist_ok=True)
    assert main([*TINY, override, "--reuse", str(folder), "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x" / "config.yaml").exists()


@pytest.mark.parametrize("override, message", [
    ("search.k=0", "search.k"),
    ("search.n_complete=0", "search.n_complete"),
    ("search.max_generated_tokens=2", "cannot finish one step"),
    ("policy.source=/no/such/checkpoint", "does not exist"),
    ("task.options.data_files=/no/such/file.jsonl", "does not exist"),
    ("q_train.second_opinion=/no/such/policy", "q_train.second_opinion: checkpoint"),
])
def test_bad_configs_fail_before_any_work(override, message, tmp_path, capsys):
    extra = (["task.name=gsm8k", "search.utility=zero", "label.live_states_only=false",
              "label.method=best_of_rollouts", "q_train.second_opinion=null"]
             if "policy.source" in override or "data_files" in override else [])
    if "data_files" in override:
        extra.append("policy.source=smollm2-135m-instruct")
    assert main([override, *extra, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.jsonl").exists()


@pytest.mark.parametrize("overrides, message", [
    (["mesh.data=2", "mesh.model=64"], "mesh data=2 x model=64 needs 128 devices, but there are"),
    (["mesh.model=1000"], "mesh.model=1000 does not divide the"),
])
def test_a_mesh_the_devices_cannot_form_stops_the_run_before_weights_load(
        overrides, message, tmp_path, capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("weights loaded before the mesh was checked")
    monkeypatch.setattr("qstar_jax.stages.context.load_model", no_loading)
    assert main([*TINY, *overrides, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_exact_q_experiment_scores_every_edge_by_the_solver(finished_run, tmp_path, capsys):
    script = runpy.run_path(str(Path(__file__).parents[1] / "experiments/countdown_exact_q.py"))
    out = tmp_path / "exact"
    # The run's settings come from a config file (--reuse refuses other training settings).
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(to_yaml(load_config(None, TINY)))
    assert script["main"](["--config", str(config_file), "--reuse", str(finished_run),
                           "--out", str(out), "eval.methods=[qstar]",
                           "eval.dump_trees=true"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["methods"]["qstar"]["n"] == 6
    ctx = RunContext.of_run(out)
    problems = {p.id.replace("/", "_"): p for p in ctx.problems("test", 6)}
    scored = 0
    for dump in (out / "trees" / "qstar").glob("*.json"):
        problem = problems[dump.stem]
        for node in json.loads(dump.read_text())["nodes"][1:]:  # the root has no edge
            assert node["h"] == float(ctx.task.can_still_succeed(problem, node["steps"]))
            scored += 1
    assert scored > 6


def test_prefix_sharing_computes_identical_chains_once(finished_run, tmp_path):
    """At temperature 0 best-of-N's chains are all the greedy chain: with prefix sharing
    it costs what greedy does, without it N times that."""
    results = {sharing: {(r.method, r.problem_id): r for r in _evaluated_again(
        finished_run, tmp_path / sharing, "eval.temperature=0",
        "eval.methods=[greedy,best_of_n]", f"eval.prefix_sharing={sharing}")}
        for sharing in ("true", "false")}
    for (method, problem), r in results["true"].items():
        unshared = results["false"][(method, problem)]
        greedy = results["true"][("greedy", problem)]
        assert r.completion == unshared.completion == greedy.completion
        copies = 1 if method == "greedy" else 2  # eval.samples=2
        assert (r.generated_tokens, unshared.generated_tokens) == (
            greedy.generated_tokens, copies * greedy.generated_tokens)


@pytest.mark.parametrize("sharing", ["false", "true"])
def test_chunked_steps_and_a_paged_cache_give_the_one_call_results(finished_run, tmp_path,
                                                                  capsys, sharing):
    """Against steps sampled in one call on the row cache (decode.step_chunk=0), rows
    padded to powers of two from 1 (decode.min_rows=1), the same searches from steps
    sampled as chunks of 3 tokens, the rows that ended dropped between chunks
    (decode.step_chunk=3), and from a paged cache that forks share (decode.page_size=16,
    chunks of the default 16), both with rows padded to at least the default 64; a node's
    children one row per copy, or as a trie (eval.prefix_sharing) run in chunks of rounds
    whose splits fork rows or page tables. On 32 pages the searches of a batch of four
    problems do not all fit at once in Q*: some wait for others' pages, and one row per
    child a search begins again to make room (the run says so), with the same results."""
    settings = {"one call": ["decode.step_chunk=0", "decode.min_rows=1"],
                "chunks of 3": ["decode.step_chunk=3"], "pages": ["decode.page_size=16"],
                "few pages": ["decode.page_size=16", "decode.pages=32"]}
    results, waited = {}, {}
    for i, (name, setting) in enumerate(settings.items()):
        results[name] = _without_wall(_evaluated_again(
            finished_run, tmp_path / f"setting{i}", "eval.methods=[greedy,best_of_n,qstar]",
            f"eval.prefix_sharing={sharing}", *setting))
        waited[name] = re.findall(r"short of room: \d+ rounds left searches waiting, (\d+) "
                                  r"searches were begun again", capsys.readouterr().out)
    assert len(results["one call"]) == 18
    assert results["chunks of 3"] == results["one call"]
    assert results["pages"] == results["one call"]
    assert results["few pages"] == results["one call"]
    assert waited == {"one call": [], "chunks of 3": [], "pages": [],
                      "few pages": ["0" if sharing == "true" else "1"]}  # Q*'s


def test_label_quality_experiment_reads_labels_against_the_exact_value(finished_run):
    script = Path(__file__).parents[1] / "experiments/label_quality.py"
    rows = runpy.run_path(str(script))["main"]([str(finished_run)])
    assert sum(r["pairs"] for r in rows) == len((finished_run / "labels.jsonl").read_text()
                                                 .splitlines())
    for row in rows:
        # A positive best-of-rollouts label is a found solution, never a dead state, so the
        # positive labels are exactly the recalled share of the exactly positive pairs.
        assert row["label_positive"] <= row["exact_positive"]
        if row["label_recall"] is not None:
            assert row["label_positive"] == pytest.approx(
                row["exact_positive"] * row["label_recall"], abs=0.002)
        auc = row["exact_trained_auc_vs_exact"]  # None when a step's held-out rows are one class
        assert auc is None or 0.0 <= auc <= 1.0


def test_value_probe_trains_on_exactly_labelled_legal_states(capsys, tmp_path):
    script = runpy.run_path(str(Path(__file__).parents[1] / "experiments/countdown_value_probe.py"))
    from qstar_jax.tasks.base import STEP_SEPARATOR

    ctx = RunContext(config=load_config(None, TINY), out=Path("unused"))
    texts, values, steps = script["random_states"](ctx, 40, seed=0)
    problems = ctx.problems("train", ctx.config.policy_training.train_problems)
    by_prompt = dict(zip(ctx.prompts(problems), problems))
    for text, value, step_count in zip(texts, values, steps):
        prompt = next(p for p in by_prompt if text.startswith(p))
        lines = text[len(prompt):].split(STEP_SEPARATOR)[:-1]
        assert len(lines) == step_count
        assert all(ctx.task.step_legality(by_prompt[prompt], lines))
        assert value == float(ctx.task.can_still_succeed(by_prompt[prompt], lines))
    assert set(steps) == {1, 2} and 0 < values.mean() < 1

    config_file = tmp_path / "tiny.yaml"  # Countdown: the defaults' world is refused
    config_file.write_text(to_yaml(load_config(None, TINY)))
    result = script["main"](["--states", "200", "--steps", "20", "--config", str(config_file)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert sum(row["states"] for row in result["steps"]) == 200



def test_tree_of_thoughts_runs_on_the_trained_policy_and_its_q_hat(finished_run, tmp_path):
    """(MCTSr's prompts do not fit this policy's 96-token window: tests/stages/
    test_reasoners.py runs it over a scripted runtime.)"""
    out = tmp_path / "reasoners"
    assert main(["--reuse", str(finished_run), "--out", str(out), *TINY,
                 "eval.methods=[tot_bfs,tot_dfs]", "eval.tot.k=2", "eval.tot.keep=2",
                 "eval.tot.max_expansions=3", "eval.tot.threshold=0"]) == 0
    rows = ResultsLog(out / "results.jsonl").read()
    for method in ("tot_bfs", "tot_dfs"):
        mine = [r for r in rows if r.method == method]
        assert len(mine) == 6
        # Q̂ judges every new state; every expansion prefills its node and samples steps.
        assert all(r.q_calls > 0 and r.generated_tokens > 0 and r.prefilled_tokens > 0
                   for r in mine)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"tot_bfs", "tot_dfs"}
