"""A run whose stages leave out, or put after, the stage that writes what another reads is
refused before any stage runs, naming the stage to add."""

import pytest

from qstar_jax import run
from qstar_jax.config import ConfigError
from qstar_jax.config_loading import load_config
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.evaluate import (reads_q, reads_q_hat, reported_methods,
                                      uncached_q_scorer)
from qstar_jax.stages.stage_inputs import check_stage_inputs


def context(tmp_path, *overrides) -> RunContext:
    return RunContext(config=load_config(None, list(overrides)), out=tmp_path)


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")


@pytest.mark.parametrize("stages, stage, reads, writer", [
    ("[collect]", "collect", "the policy trained from scratch", "train_policy"),
    ("[train_policy,label]", "label", "the rollouts", "collect"),
    ("[train_policy,collect,train_q,label]", "train_q", "the labels", "label"),
    ("[train_policy,collect,label,evaluate,train_q]", "evaluate", "Q-hat", "train_q"),
])
def test_the_first_stage_missing_an_input_is_named_with_its_writer(tmp_path, stages, stage,
                                                                  reads, writer):
    with pytest.raises(ConfigError, match=f"stage {stage} reads {reads} .* list {writer} "
                                          f"before {stage} in stages"):
        check_stage_inputs(context(tmp_path, f"stages={stages}"))


def test_the_default_stages_and_a_finished_runs_folder_pass(tmp_path):
    check_stage_inputs(context(tmp_path))  # every stage's writer comes before it
    for name in ("policy/config.json", "second_policy/config.json", "rollouts.jsonl",
                 "labels.jsonl", "q_training.json"):
        touch(tmp_path / name)
    check_stage_inputs(context(tmp_path, "stages=[evaluate]"))


def test_a_stage_whose_outputs_are_there_reads_nothing(tmp_path):
    touch(tmp_path / "labels.jsonl")  # label will be skipped: the rollouts are not read
    touch(tmp_path / "policy/config.json")
    touch(tmp_path / "second_policy/config.json")
    check_stage_inputs(context(tmp_path, "stages=[label,train_q]"))
    (tmp_path / "labels.jsonl").unlink()
    with pytest.raises(ConfigError, match="stage label reads the rollouts"):
        check_stage_inputs(context(tmp_path, "stages=[label,train_q]"))


def test_evaluate_reads_q_hat_and_the_second_policy_only_where_a_method_does(tmp_path):
    touch(tmp_path / "policy/config.json")
    check_stage_inputs(context(tmp_path, "stages=[evaluate]",
                               "eval.methods=[self_consistency]"))
    with pytest.raises(ConfigError, match="stage evaluate reads Q-hat"):
        check_stage_inputs(context(tmp_path, "stages=[evaluate]", "eval.methods=[beam]"))
    with pytest.raises(ConfigError, match=r"stage evaluate reads the second policy \(.*"
                                          r"second_policy\)"):
        check_stage_inputs(context(tmp_path, "stages=[evaluate]", "eval.methods=[greedy]"))
    check_stage_inputs(context(tmp_path, "stages=[evaluate]", "eval.methods=[greedy]",
                               "q_train.second_opinion=null"))


def test_evaluate_reads_the_learned_prm_train_prm_writes(tmp_path):
    for name in ("policy/config.json", "rollouts.jsonl", "labels.jsonl"):
        touch(tmp_path / name)
    settings = ["search.utility=prm", "eval.methods=[self_consistency]",
                "stages=[train_prm,evaluate]"]
    check_stage_inputs(context(tmp_path, *settings))
    with pytest.raises(ConfigError, match="stage evaluate reads the learned PRM"):
        check_stage_inputs(context(tmp_path, *settings[:2], "stages=[evaluate,train_prm]"))


def test_the_command_refuses_before_any_stage_and_names_a_bad_output_folder(tmp_path,
                                                                            capsys):
    out = tmp_path / "run"
    assert run.main(["stages=[train_q]", "--out", str(out)]) == 2
    assert "config error: stage train_q reads the labels" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.yaml"]
    assert run.main(["task.options.foo=1", "--out", str(tmp_path / "other")]) == 2
    assert "config error: task 'arithmetic' has no option(s) ['foo']" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    (tmp_path / "a_file").write_text("")
    assert run.main(["--out", str(tmp_path / "a_file")]) == 2
    assert "cannot use " in capsys.readouterr().err


def test_train_prm_reads_the_rollouts_beside_the_labels_until_its_summary_is_there(tmp_path):
    for name in ("policy/config.json", "labels.jsonl"):
        touch(tmp_path / name)
    with pytest.raises(ConfigError, match="stage train_prm reads the rollouts .* list collect "
                                          "before train_prm"):
        check_stage_inputs(context(tmp_path, "stages=[train_prm]"))
    touch(tmp_path / "prm_training.json")  # train_prm will be skipped
    (tmp_path / "labels.jsonl").unlink()
    check_stage_inputs(context(tmp_path, "stages=[train_prm]"))


def test_train_q_reads_both_policies_on_the_policy_backbone_and_neither_on_its_own(tmp_path):
    touch(tmp_path / "labels.jsonl")
    touch(tmp_path / "policy/config.json")
    with pytest.raises(ConfigError, match="stage train_q reads the second policy"):
        check_stage_inputs(context(tmp_path, "stages=[train_q]"))
    (tmp_path / "policy/config.json").unlink()
    check_stage_inputs(context(tmp_path, "stages=[train_q]", "q_train.backbone=separate",
                               "q_train.separate_model=/a/model", "q_train.second_opinion=null"))


def test_checkpoints_the_config_names_and_a_skipped_collect_are_no_stages_inputs(tmp_path):
    outside = ["policy.source=/a/policy", "q_train.second_opinion=/a/second"]
    check_stage_inputs(context(tmp_path, "stages=[collect]", *outside))
    check_stage_inputs(context(tmp_path, "stages=[evaluate]", "eval.methods=[greedy]",
                               "search.utility=prm", "search.prm_model=/a/prm", *outside))
    touch(tmp_path / "rollouts.jsonl")  # collect will be skipped: it loads no policy
    check_stage_inputs(context(tmp_path, "stages=[collect]"))


def test_tree_of_thoughts_reads_q_hat_only_when_q_hat_judges_its_states(tmp_path):
    touch(tmp_path / "policy/config.json")
    plain = ["stages=[evaluate]", "q_train.second_opinion=null"]
    for method in ("tot_bfs", "tot_dfs"):
        with pytest.raises(ConfigError, match="stage evaluate reads Q-hat"):
            check_stage_inputs(context(tmp_path, *plain, f"eval.methods=[{method}]"))
        check_stage_inputs(context(tmp_path, *plain, f"eval.methods=[{method}]",
                                   "eval.tot.evaluator=value_prompt"))
    check_stage_inputs(context(tmp_path, *plain, "eval.methods=[mctsr]"))


def test_the_second_policys_greedy_row_follows_greedy_where_q_hat_reads_one(tmp_path):
    methods = "eval.methods=[self_consistency,greedy,qstar]"
    assert reported_methods(context(tmp_path, methods)) == (
        "self_consistency", "greedy", "greedy_second_policy", "qstar")
    assert reported_methods(context(tmp_path, methods, "q_train.second_opinion=null")) == (
        "self_consistency", "greedy", "qstar")
    assert reported_methods(context(tmp_path, "eval.methods=[qstar]")) == ("qstar",)


def test_only_a_method_whose_choices_read_q_hat_runs_it_and_is_charged_for_it():
    def reading(*overrides):
        config = load_config(None, ["eval.methods=[best_of_n,beam,qstar,qstar_no_q]",
                                    *overrides])
        return {m for m in (*config.eval.methods, "greedy", "self_consistency", "mctsr",
                            "best_of_n_matched") if reads_q(config, m)}

    assert reading() == {"best_of_n", "best_of_n_matched", "beam", "qstar"}
    # Best-of-N ranked by the process reward alone was charged Q̂ calls it never read.
    assert reading("eval.best_of_n_scorer=prm", "search.utility=prm",
                   "stages=[train_prm,evaluate]") == {"beam", "qstar"}
    assert reading("eval.best_of_n_scorer=q", "search.lam=0") == {"best_of_n",
                                                                 "best_of_n_matched"}
    assert reading("search.lam=0") == set()  # f = g + 0·h reads no Q̂
    assert not reads_q_hat(load_config(None, ["eval.methods=[best_of_n,qstar]",
                                              "search.lam=0"]))


def test_the_model_q_hat_runs_uncached_over_each_child_is_named_for_the_summary(tmp_path):
    def scorer(*overrides):
        return uncached_q_scorer(context(tmp_path, *overrides))

    assert scorer() == "Q̂'s second policy"  # the default experiment's Q̂
    assert scorer("q_train.second_opinion=null") is None  # the policy's own hidden states
    assert scorer("eval.methods=[greedy,qstar_no_q]") is None  # nothing reads Q̂
    assert scorer("q_train.backbone=separate", "q_train.second_opinion=null",
                  "q_train.separate_model=models/q") == "Q̂'s separate backbone (models/q)"
