"""The command line of ``python -m qstar_jax.run``: a config, overrides and folders; the
checks before any stage runs, the stages' order and what a process says when it loses
the others."""

import errno
import json
import os
import re
import resource
import signal
import time
from pathlib import Path

import jax
import pytest
from jax.sharding import AbstractMesh

from qstar_jax import run
from qstar_jax.config import STAGES, ConfigError, DistributedConfig
from qstar_jax.config_loading import load_config, to_yaml
from qstar_jax.decoding.kv_cache import SlotPoolExhausted
from qstar_jax.decoding.page_table import PagePoolExhausted
from qstar_jax.decoding.paged_cache import Paging
from qstar_jax.outputs.durable import DamagedOutputError
from qstar_jax.outputs.folder_lock import lock_folder
from qstar_jax.parallel import DATA, MODEL
from qstar_jax.policy.runtime import PromptTooLong
from qstar_jax.qvalue import checkpoint
from qstar_jax.qvalue.dataset import load_labelled
from qstar_jax.qvalue.head import QHeadConfig
from qstar_jax.preflight import (check_layer_weights, identical_samples_warning, preflight,
                                 shared_split_warning, warmup_warning)
from qstar_jax.run import parse_args
from qstar_jax.run_messages import lost_process_message
from qstar_jax.stages.context import RunContext
from qstar_jax.tasks.base import MalformedRecordError
from tests.decoding.tiny_models import tiny_config
from tests.support.tiny_checkpoints import save_tiny_checkpoint

GSM8K_TEST = "tests/fixtures/gsm8k/test.jsonl"
# A real-data task on the packaged policy: every checkpoint named below is the test's.
REAL_TASK = ["task.name=gsm8k", "search.utility=zero", "label.live_states_only=false",
             "label.method=best_of_rollouts", "q_train.second_opinion=null",
             "policy.source=smollm2-135m-instruct"]


def test_overrides_may_follow_the_output_folder():
    args = parse_args(["c.yaml", "--out", "runs/x", "seed=3", "decode.slots=8"])
    assert (args.config, args.overrides, args.out) == ("c.yaml", ["seed=3", "decode.slots=8"],
                                                       "runs/x")


def test_overrides_around_reuse_keep_their_order():
    args = parse_args(["c.yaml", "seed=3", "--reuse", "runs/a", "decode.slots=8"])
    assert (args.config, args.overrides, args.reuse) == ("c.yaml", ["seed=3", "decode.slots=8"],
                                                         "runs/a")


def test_with_no_config_the_first_override_is_not_taken_for_one():
    args = parse_args(["--out", "runs/x", "seed=3", "decode.slots=8"])
    assert (args.config, args.overrides) == (None, ["seed=3", "decode.slots=8"])


@pytest.mark.parametrize("overrides, key", [
    (["search.utility=prm", "search.prm_model=/no/such/prm"], "search.prm_model"),
    (["label.method=stronger_model", "label.stronger_model=/no/such/model"],
     "label.stronger_model"),
    (["q_train.backbone=separate", "q_train.separate_model=/no/such/model"],
     "q_train.separate_model"),
    (["policy.source=/no/such/policy"], "policy.source"),
    (["q_train.second_opinion=/no/such/second"], "q_train.second_opinion"),
])
def test_preflight_names_each_missing_checkpoint_the_run_loads(overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}: checkpoint /no/such/.* does not exist; "
                                          r"give .* one of \['smollm2-135m-instruct'\]"):
        preflight(load_config(None, [*REAL_TASK, *overrides]))


def test_preflight_passes_a_prm_the_search_does_not_use_and_each_data_file_that_exists(
        monkeypatch, tmp_path):
    preflight(load_config(None, [*REAL_TASK, "search.prm_model=/no/such/prm"]))
    monkeypatch.setenv("HOME", str(Path(GSM8K_TEST).parents[1].absolute()))
    # Reads the test split alone; datasets' cache, under HOME by default, out of the repo.
    evaluate = [*REAL_TASK, "stages=[evaluate]", f"task.options.cache_dir={tmp_path}"]
    preflight(load_config(None, [*evaluate, "task.options.data_files.test=~/gsm8k/test.jsonl"]))
    for files in (GSM8K_TEST, "{test: tests/fixtures/gsm8k/t*.jsonl}", f"{{test: [{GSM8K_TEST}]}}"):
        preflight(load_config(None, [*evaluate, f"task.options.data_files={files}"]))
    listed = f"task.options.data_files={{test: [{GSM8K_TEST}, /no/such/part.jsonl]}}"
    with pytest.raises(ConfigError, match="^task.options.data_files: /no/such/part.jsonl does "
                                          "not exist$"):
        preflight(load_config(None, [*REAL_TASK, listed]))


@pytest.mark.parametrize("overrides, message", [
    (["task.options.data_files={}"], "^task.options.data_files is empty: name the files, or "
                                     "leave it out to load the task's dataset from the hub$"),
    (["task.options.data_files=[]"], "^task.options.data_files is empty"),
    (["task.options.data_files=5"], "^task.options.data_files: data files must be a path or "
                                    "glob, or a list of them, got 5$"),
    (["task.options.data_files.test=null"], "^task.options.data_files: data files must be a "
                                            "path or glob, or a list of them, got None$"),
    (["task.name=humaneval", "task.options={problems_file: /no/such/he.jsonl}"],
     "^task.options.problems_file: /no/such/he.jsonl is not a file$"),
], ids=["empty mapping", "empty list", "a number", "a null split", "missing problems file"])
def test_preflight_refuses_data_files_that_name_no_file(overrides, message):
    # Each was met at collect or evaluate, after the model loaded, or as a TypeError.
    with pytest.raises(ConfigError, match=message):
        preflight(load_config(None, [*REAL_TASK, *overrides]))


@pytest.mark.parametrize("overrides, message", [
    (["eval.methods=[greedy,mctsr]"], "^eval.methods: mctsr asks the policy in English to "
                                      "critique, refine and score its answers, which a policy "
                                      r"trained from scratch \(policy.source=scratch\) cannot "
                                      "read: it knows only the task's characters; drop mctsr "
                                      "or give a pretrained chat model as policy.source$"),
    (["eval.methods=[tot_dfs]", "eval.tot.evaluator=value_prompt"],
     "^eval.tot.evaluator: value_prompt asks the policy in English whether a state can still "
     "succeed, which a policy trained from scratch .*; use q, or give a pretrained chat model "
     "as policy.source$"),
])
def test_preflight_refuses_english_prompts_to_a_policy_trained_from_scratch(overrides, message):
    with pytest.raises(ConfigError, match=message):
        preflight(load_config(None, overrides))


@pytest.mark.parametrize("overrides", [
    ["eval.methods=[tot_bfs,tot_dfs]"],  # judged by Q̂
    ["eval.methods=[greedy]", "eval.tot.evaluator=value_prompt"],  # no ToT to ask
    ["eval.methods=[mctsr]", "stages=[train_policy,collect]"],  # nothing evaluated
    [*REAL_TASK, "eval.methods=[mctsr,tot_bfs]", "eval.tot.evaluator=value_prompt"],
])
def test_preflight_lets_reasoners_ask_a_pretrained_policy_or_none(overrides):
    assert preflight(load_config(None, overrides)) is None  # no refusal


def test_preflight_refuses_a_checkpoint_of_an_architecture_the_loader_does_not_read(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConfigError) as raised:
        preflight(load_config(None, [*REAL_TASK, "label.method=stronger_model",
                                         f"label.stronger_model={tmp_path}"]))
    assert str(raised.value) == (f"label.stronger_model: {tmp_path}/config.json: "
                                 "model_type='gpt2' is not supported; supported: ('llama', "
                                 "'mistral', 'qwen2')")
    with pytest.raises(ConfigError, match=f"^q_train.separate_model: {tmp_path}/config.json: "):
        preflight(load_config(None, [*REAL_TASK, "q_train.backbone=separate",
                                         f"q_train.separate_model={tmp_path}"]))


@pytest.mark.parametrize("overrides, message", [
    (["task.eval_problems=200"], "task.eval_split='test': humaneval split 'test' has 152 "
                                 "problems; asked for 200."),
    (["task.eval_split=validation"], "task.eval_split='validation': humaneval has no split "
                                     "'validation'; its splits are ('train', 'test', 'full')"),
    (["task.train_problems=13", "task.options.train_size=12"],
     "task.train_split='train': humaneval split 'train' has 12 problems; asked for 13."),
])
def test_preflight_refuses_a_split_that_does_not_hold_what_a_stage_asks_of_it(overrides,
                                                                            message):
    # Met when collect or evaluate loaded the split, after the stages before it.
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        preflight(load_config("configs/smollm2_humaneval.yaml", overrides))
    preflight(load_config("configs/smollm2_humaneval.yaml", [*overrides, "stages=[]"]))


def test_preflight_refuses_more_trainable_layers_than_the_separate_backbone_has(tmp_path):
    # Met by train_q, after collect and label, before.
    backbone = save_tiny_checkpoint(tmp_path, "llama")  # 2 layers
    separate = [*REAL_TASK, "q_train.backbone=separate", f"q_train.separate_model={backbone}"]
    preflight(load_config(None, [*separate, "q_train.trainable_layers=2"]))
    with pytest.raises(ConfigError, match=re.escape(
            f"q_train.trainable_layers=3: {backbone} has 2 layers; give at most that, or -1 "
            "for all")):
        preflight(load_config(None, [*separate, "q_train.trainable_layers=3"]))


def test_preflight_refuses_data_files_of_a_format_the_loader_does_not_read(tmp_path):
    csv = tmp_path / "test.csv"
    csv.write_text("question,answer\nQ,#### 1\n")
    with pytest.raises(ConfigError) as raised:
        preflight(load_config(None, [*REAL_TASK, f"task.options.data_files.test={csv}"]))
    assert str(raised.value) == (f"task.options.data_files: cannot load '{csv}': data files "
                                 "must end in one of ['.json', '.jsonl', '.parquet']")


def test_preflight_refuses_data_files_without_the_split_evaluate_reads():
    with pytest.raises(ConfigError) as raised:
        preflight(load_config(None, [*REAL_TASK, "task.eval_split=validation",
                                         f"task.options.data_files.test={GSM8K_TEST}"]))
    assert str(raised.value) == (
        "task.options.data_files: data_files has no entry for split 'validation' (it has "
        "['test']); add one, e.g. data_files.validation=/path/to/validation.jsonl "
        "(task.eval_split)")
    preflight(load_config(None, [*REAL_TASK, "task.eval_split=validation", "stages=[collect]",
                                     f"task.options.data_files.train={GSM8K_TEST}"]))


@pytest.mark.parametrize("overrides, message", [
    (["task.eval_split=tset"], "task.eval_split: arithmetic has splits ('train', "
                               "'validation', 'test'), not 'tset'"),
    (["task.name=countdown", "label.method=best_of_rollouts", "task.train_split=dev"],
     "task.train_split: countdown has splits ('train', 'validation', 'test'), not 'dev'")])
def test_preflight_refuses_a_split_a_synthetic_world_does_not_have(overrides, message):
    """Evaluate would meet an unknown eval split only after every training stage."""
    with pytest.raises(ConfigError) as raised:
        preflight(load_config(None, overrides))
    assert str(raised.value) == message


def test_train_and_eval_splits_reading_the_same_file_are_warned_of(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(Path(GSM8K_TEST).read_text())
    test = Path(GSM8K_TEST).resolve()

    def warning(*overrides):
        return shared_split_warning(load_config(None, [*REAL_TASK, *overrides]))

    assert warning(f"task.options.data_files={GSM8K_TEST}") == (
        f"warning: task.options.data_files gives the 'train' and 'test' splits the same "
        f"file(s) ['{test}']: the stages that learn (collect, label, train_q) read the problems "
        "evaluate scores; give each split its own files (task.options.data_files.train=... "
        "and .test=...)")
    assert f"['{train.resolve()}']" in warning(f"task.options.data_files.train={tmp_path}/*.jsonl",
                                               f"task.options.data_files.test=[{GSM8K_TEST}, "
                                               f"{train}]")
    assert warning(f"task.options.data_files.train={train}",
                   f"task.options.data_files.test={GSM8K_TEST}") is None
    assert warning(f"task.options.data_files.test={GSM8K_TEST}") is None  # no train files
    assert warning(f"task.options.data_files={GSM8K_TEST}", "stages=[collect]") is None
    assert warning() is None  # the hub's splits
    assert warning("task.eval_split=train") == (  # one split, wherever it comes from
        "warning: task.train_split and task.eval_split are both 'train': the stages that "
        "learn (collect, label, train_q) read the problems evaluate scores; give evaluate a "
        "split of its own")


def test_settings_that_sample_copies_of_the_greedy_one_are_warned_of():
    def warning(*overrides):
        return identical_samples_warning(load_config(None, [
            "eval.methods=[greedy,best_of_n,qstar]", *overrides]))

    assert warning() is None  # the defaults sample
    assert warning("eval.temperature=0") == (
        "warning: temperature 0 decodes greedily, so eval.temperature=0 gives ['best_of_n'] "
        "eval.samples=6 equal chains: each costs its copies' tokens for one sample's result")
    assert warning("eval.temperature=0", "eval.samples=1") is None
    assert warning("eval.temperature=0", "eval.methods=[greedy,qstar]") is None
    assert "collect.rollouts_per_problem=4 equal rollouts" in warning("collect.temperature=0")
    assert warning("collect.temperature=0", "stages=[evaluate]") is None
    assert "search.temperature=0 makes A*'s search.k=6 children one step" in warning(
        "search.temperature=0")
    assert warning("search.temperature=0", "search.k=1") is None


def test_a_warmup_as_long_as_the_policys_training_is_warned_of():
    def warning(*overrides):
        return warmup_warning(load_config(None, list(overrides)))

    assert warning() is None  # the default world: 1000 steps, 100 of warmup
    assert warning("policy_training.steps=100") == (
        "warning: policy_training.warmup_steps=100 is not below its steps=100: the learning "
        "rate climbs the whole run and never reaches policy_training.learning_rate=0.002; "
        "give fewer warmup steps")
    assert warning("policy_training.steps=100", "policy_training.warmup_steps=99") is None
    assert warning("policy_training.steps=100", "stages=[evaluate]") is None
    assert warning("policy_training.steps=100", *REAL_TASK) is None  # a checkpoint's policy


def test_preflight_refuses_a_prm_model_that_is_neither_a_learned_prm_nor_a_checkpoint(
        tmp_path):
    with pytest.raises(ConfigError, match=f"^search.prm_model={tmp_path} is neither a PRM the "
                                          "train_prm stage wrote"):
        preflight(load_config(None, [*REAL_TASK, "search.utility=prm",
                                         f"search.prm_model={tmp_path}"]))
    # A Math-Shepherd checkpoint: an HF directory (checked whatever the stages; its labels
    # are read with its tokenizer where evaluate scores with it).
    save_tiny_checkpoint(tmp_path, "mistral_sliding")
    preflight(load_config(None, [*REAL_TASK, "search.utility=prm",
                                     f"search.prm_model={tmp_path}", "stages=[collect]"]))


def test_preflight_reads_a_math_shepherd_prms_labels_with_its_tokenizer(tmp_path):
    # Met when evaluate loaded the PRM, after every training stage.
    prm = save_tiny_checkpoint(tmp_path / "prm", "llama")
    scored = [*REAL_TASK, "search.utility=prm", f"search.prm_model={prm}"]
    preflight(load_config(None, scored))  # '+' and '-' are one token each
    with pytest.raises(ConfigError) as raised:
        preflight(load_config(None, [*scored, "search.prm_bad_token=--"]))
    assert str(raised.value) == (f"search.prm_bad_token='--' is 2 tokens for the tokenizer of "
                                 f"search.prm_model={prm}; give a single-token label")
    preflight(load_config(None, [*scored, "search.prm_bad_token=--", "stages=[collect]"]))
    (prm / "tokenizer.json").unlink()
    (prm / "tokenizer_config.json").unlink()
    with pytest.raises(ConfigError) as raised:
        preflight(load_config(None, scored))
    assert str(raised.value) == (f"search.prm_model: model {prm} ships no tokenizer; point the "
                                 "config at a checkpoint with tokenizer files")


def test_a_folder_holds_the_same_run_whatever_stages_ran_there(tmp_path):
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(load_config(None, ["seed=3", "stages=[train_policy,collect]"])))
    assert run.changed_settings(saved, load_config(None, ["seed=3", "stages=[label]"])) == []
    assert run.changed_settings(saved, load_config(None, ["seed=4", "decode.slots=64",
                                                          "stages=[label]"])) == \
        ["decode.slots", "seed"]
    saved.write_text("search: {kk: 3}\n")  # another version's keys: only the text counts
    assert run.changed_settings(saved, load_config(None, ["seed=3"])) is None


def test_the_command_refuses_a_folder_of_another_run_and_resumes_its_own(tmp_path,
                                                                         monkeypatch, capsys):
    """A saved seed=3 run (stages [collect]): seed=4 and search.k=2 there are refused by
    those keys (the stages may differ), exit 2, its config.yaml untouched; evaluation
    settings alone are refused pointing at --reuse; seed=3 runs its stages there and saves
    their list."""
    ran = []
    monkeypatch.setattr(run, "run_stages", lambda ctx: ran.append(ctx.config.stages))
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(load_config(None, ["decode.slots=8", "seed=3",
                                                "stages=[collect]"])))
    before = saved.read_text()
    other = ["decode.slots=8", "stages=[train_policy]", "--out", str(tmp_path)]
    assert run.main(["seed=4", "search.k=2", *other]) == 2
    assert capsys.readouterr().err == (
        f"config error: {tmp_path} holds a run with a different config ({saved}: differs in "
        "search.k, seed); choose another --out or delete the folder\n")
    assert saved.read_text() == before and ran == []
    assert run.main(["seed=3", "search.k=2", "eval.samples=3", *other]) == 2
    # What evaluation alone reads: --reuse keeps the rest, once the training has finished
    # (--reuse refuses a run without q_training.json).
    assert capsys.readouterr().err == (
        f"config error: {tmp_path} holds a run with a different config ({saved}: differs in "
        f"eval.samples, search.k); its training stages have not finished, and --reuse takes "
        f"a run whose train_q has: finish them under its own settings first (its own "
        f"command), then evaluate these with --out NEW --reuse {tmp_path}\n")
    (tmp_path / "q_training.json").write_text("{}")
    assert run.main(["seed=3", "search.k=2", "eval.samples=3", *other]) == 2
    assert capsys.readouterr().err == (
        f"config error: {tmp_path} holds a run with a different config ({saved}: differs in "
        f"eval.samples, search.k); to evaluate these settings on what it trained, use --out "
        f"NEW --reuse {tmp_path}\n")
    assert run.main(["seed=3", *other]) == 0
    assert ran == [("train_policy",)]
    assert saved.read_text() == to_yaml(load_config(None, ["decode.slots=8", "seed=3",
                                                           "stages=[train_policy]"]))


def test_a_failed_write_of_the_config_keeps_the_runs_own(tmp_path, monkeypatch):
    """Each invocation saves config.yaml again. A write cut short (the disk full, here a
    file-size limit) must leave the saved one whole, or the next invocation would refuse
    the folder as another run's and tell the user to delete what it holds."""
    monkeypatch.setattr(run, "run_stages", lambda ctx: None)
    argv = ["decode.slots=8", "stages=[train_policy]", "--out", str(tmp_path)]
    assert run.main(argv) == 0
    saved = (tmp_path / "config.yaml").read_text()
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, limits[1]))
    try:
        with pytest.raises(OSError):
            run.main(argv)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert (tmp_path / "config.yaml").read_text() == saved
    assert run.main(argv) == 0


def test_reuse_of_a_folder_without_a_trained_q_hat_is_a_config_error(tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setattr(run, "run_stages", lambda ctx: pytest.fail("a stage ran"))
    source = tmp_path / "untrained"
    source.mkdir()
    assert run.main(["decode.slots=8", "--out", str(tmp_path / "new"),
                     "--reuse", str(source)]) == 2
    assert capsys.readouterr().err == (
        f"config error: --reuse {source}: not a run folder with a finished train_q stage "
        "(config.yaml and q_training.json); run its training stages first\n")


def test_an_evaluating_run_prints_its_summary_and_a_lost_collective_is_exit_3(
        tmp_path, monkeypatch, capsys):
    """One process re-raises a failed collective; in a run of several (2 here, from the
    stage on) it is exit 3 with the lost-process message at the config's heartbeat."""
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "config.json").write_text("{}")
    argv = ["decode.slots=8", "stages=[evaluate]", "eval.methods=[self_consistency]",
            "q_train.second_opinion=null", "distributed.heartbeat_timeout_s=45",
            "--out", str(tmp_path)]
    monkeypatch.setattr(run, "run_stages", lambda ctx: (
        ctx.out / "summary.md").write_text("| method | accuracy |"))
    assert run.main(argv) == 0
    assert capsys.readouterr().out == "| method | accuracy |\n"
    lost = jax.errors.JaxRuntimeError("DEADLINE_EXCEEDED: barrier timed out\nstack trace")

    def lose(ctx):
        raise lost

    monkeypatch.setattr(run, "run_stages", lose)
    with pytest.raises(jax.errors.JaxRuntimeError):
        run.main(argv)

    def lose_one_of_two(ctx):
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        raise lost

    monkeypatch.setattr(run, "run_stages", lose_one_of_two)
    assert run.main(argv) == 3
    assert capsys.readouterr().err == (
        "run error: process 0 of 2 lost the others (DEADLINE_EXCEEDED: barrier timed out); "
        "another process most likely died: JAX names it below once it has been silent for "
        "distributed.heartbeat_timeout_s=45. Start every process again with the same "
        "command: the run resumes from what process 0 wrote.\n")


def test_each_stage_name_runs_the_stage_function_of_that_name():
    assert {name: f"{stage.__module__}.{stage.__name__}"
            for name, stage in run.STAGE_FUNCTIONS.items()} == {
        "train_policy": "qstar_jax.stages.train_policy.train_policy",
        "collect": "qstar_jax.stages.rollouts.collect",
        "label": "qstar_jax.stages.rollouts.label",
        "train_q": "qstar_jax.stages.train_q.train_q",
        "train_prm": "qstar_jax.stages.prm.train_prm",
        "evaluate": "qstar_jax.stages.evaluate.evaluate"}
    assert tuple(run.STAGE_FUNCTIONS) == STAGES


def test_stages_run_in_the_configured_order(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(run, "STAGE_FUNCTIONS", {
        name: (lambda ctx, name=name: called.append((name, ctx.out)))
        for name in run.STAGE_FUNCTIONS})
    config = load_config(None, ["stages=[label,collect,evaluate]"])
    run.run_stages(RunContext(config=config, out=tmp_path))
    assert called == [("label", tmp_path), ("collect", tmp_path), ("evaluate", tmp_path)]


def test_check_makes_the_checks_of_the_configs_stages_and_writes_nothing(tmp_path, capsys,
                                                                         monkeypatch):
    out = tmp_path / "run"
    assert run.main(["--check", "--out", str(out), "stages=[collect,evaluate]"]) == 0
    assert capsys.readouterr().out == (
        "the config passed every check made before its stages (collect, evaluate); no stage "
        "ran and nothing was written\n")
    assert not out.exists()
    assert run.main(["--check", "decode.slots=0"]) == 2  # the checks run
    capsys.readouterr()
    # Evaluate's models are counted in the memory check, as the run counts them.
    checked = []
    monkeypatch.setattr(run, "check_memory", lambda config: checked.append(config.stages))
    assert run.main(["--check"]) == 0 and checked == [run.load_config(None, []).stages]
    capsys.readouterr()
    # No stage to run: said so, and nothing written.
    assert run.main(["stages=[]", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("stages=[]: no stage to run and nothing was "
                                              "written")
    assert not out.exists()


def test_a_process_of_several_stops_on_sigterm_and_checks_its_config_is_process_0s(
        monkeypatch):
    """JAX's preemption notifier, installed with the distributed service, caught SIGTERM
    and the run went on; one process alone keeps Python's handlers as they are."""
    compared = []
    monkeypatch.setattr(run.multihost_utils, "assert_equal",
                        lambda tree, message: compared.append(tree.dtype))
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        config = load_config(None, [])
        run.join_processes(config)  # one process: nothing to do
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL and compared == []
        monkeypatch.setattr(run.jax, "process_count", lambda: 2)
        run.join_processes(config)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and compared == ["uint32"]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_process_that_lost_the_others_says_what_to_do():
    error = RuntimeError("DEADLINE_EXCEEDED: barrier timed out\nstack trace ...")
    assert lost_process_message(error, DistributedConfig(heartbeat_timeout_s=45)) == (
        "process 0 of 1 lost the others (DEADLINE_EXCEEDED: barrier timed out); another "
        "process most likely died: JAX names it below once it has been silent for "
        "distributed.heartbeat_timeout_s=45. Start every process again with the same "
        "command: the run resumes from what process 0 wrote.")


def test_a_page_pool_that_does_not_split_over_the_mesh_is_refused_before_any_stage(
        tmp_path, monkeypatch, capsys):
    """``mesh.data=-1`` takes every device, so only the mesh tells whether the pages split
    over its data shards: 4 here (one device stands in for four)."""
    monkeypatch.setattr(run, "make_mesh", lambda data, model: AbstractMesh(
        (4, 1), (DATA, MODEL)))
    monkeypatch.setattr(run, "run_stages", lambda ctx: pytest.fail("a stage ran"))
    overrides = ["decode.slots=8", "decode.max_len=64", "decode.page_size=16",
                 "--out", str(tmp_path)]
    assert run.main([*overrides, "decode.pages=30"]) == 2
    assert capsys.readouterr().err == ("config error: decode.pages: 30 pages do not split "
                                       "over the 4 data shards; make it a multiple of 4\n")
    assert not (tmp_path / "config.yaml").exists()
    assert run.main([*overrides, "decode.page_size=0", "decode.slots=6"]) == 2
    assert capsys.readouterr().err == ("config error: decode.slots=6 does not split over the "
                                       "4 data shards; make it a multiple of 4\n")


def test_layer_weights_a_mesh_cannot_hold_are_refused_before_any_stage(
        tmp_path, monkeypatch, capsys):
    """per-layer-kernels needs whole heads: on a model axis of 2, which splits the default
    policy's 4 heads (and its second opinion's), it is a config error before training,
    where the first decoder used to raise it once the policy was trained."""
    monkeypatch.setattr(run, "make_mesh", lambda data, model: AbstractMesh(
        (1, 2), (DATA, MODEL)))
    monkeypatch.setattr(run, "run_stages", lambda ctx: pytest.fail("a stage ran"))
    assert run.main(["decode.layer_weights=per-layer-kernels", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "config error: decode.layer_weights='per-layer-kernels' runs each layer's products as "
        "kernels over whole weights, and this mesh splits the attention heads over devices: "
        "use 'auto' or a mesh with model=1 (mesh.model=2 splits the 4 heads)\n")
    assert not (tmp_path / "config.yaml").exists()
    mesh = AbstractMesh((1, 2), (DATA, MODEL))
    check_layer_weights(load_config(None, ["decode.layer_weights=auto"]), mesh)
    three_heads = ["policy_training.num_heads=3", "policy_training.num_kv_heads=1"]
    check_layer_weights(load_config(None, [*three_heads,  # held whole: no split
                                               "decode.layer_weights=per-layer-kernels"]), mesh)


@pytest.mark.parametrize("layer_weights,page_size,mesh_shape,kernel", [
    ("per-layer", 16, (1, 1), True), ("stacked", 0, (1, 1), False),
    ("per-layer", 0, (1, 2), False)])
def test_row_windows_a_run_cannot_use_are_refused_before_any_stage(
        tmp_path, monkeypatch, capsys, layer_weights, page_size, mesh_shape, kernel):
    """decode.row_windows=copy on pages read by the paged-attention kernel (as on a GPU or
    TPU), over stacked weights or on a model axis of 2 is a config error before any
    stage, naming the setting that stands in its way; on the one-device mesh a run builds,
    with the CPU's per-layer weights, it is accepted, on row slots and on pages."""
    monkeypatch.setattr(run, "make_mesh", lambda data, model: AbstractMesh(
        mesh_shape, (DATA, MODEL)))
    monkeypatch.setattr(Paging, "uses_kernel", lambda paging: kernel)
    monkeypatch.setattr(run, "run_stages", lambda ctx: pytest.fail("a stage ran"))
    assert run.main(["decode.row_windows=copy", f"decode.layer_weights={layer_weights}",
                     f"decode.page_size={page_size}", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("config error: decode.row_windows=copy: row_windows needs whole "
                            "layers on each device")
    assert error.endswith(f"(mesh.model={mesh_shape[1]}, decode.layer_weights="
                          f"{layer_weights}, decode.page_size={page_size})\n")
    assert not (tmp_path / "config.yaml").exists()
    monkeypatch.undo()
    for page_size in (0, 16):
        check_layer_weights(load_config(None, ["decode.row_windows=copy",
                                               f"decode.page_size={page_size}"]),
                            AbstractMesh((1, 1), (DATA, MODEL)))


def failing_stage(error: BaseException):
    def stage(ctx):
        raise error
    return stage


def run_failing_in(stage: str, error: BaseException, monkeypatch, out: Path) -> int:
    """run.main over train_policy (which makes policy/) and ``stage``, which raises
    ``error``."""
    monkeypatch.setattr(run, "STAGE_FUNCTIONS", {
        "train_policy": lambda ctx: (ctx.out / "policy").mkdir(exist_ok=True),
        stage: failing_stage(error)})
    return run.main([f"stages=[train_policy,{stage}]", "--out", str(out)])


def test_input_a_stage_cannot_use_is_one_line_and_the_earlier_stages_are_kept(
        tmp_path, monkeypatch, capsys):
    unreadable = MalformedRecordError("gsm8k split 'train', record 2: no '#### <number>' line")
    assert run_failing_in("collect", unreadable, monkeypatch, tmp_path) == 2
    assert capsys.readouterr().err == ("run error: gsm8k split 'train', record 2: no "
                                       "'#### <number>' line\n")
    assert (tmp_path / "policy").is_dir() and (tmp_path / "config.yaml").exists()


def test_a_damaged_file_of_the_run_folder_is_one_line_saying_what_to_delete(
        tmp_path, monkeypatch, capsys):
    damaged = tmp_path / "labels.jsonl"
    damaged.write_text('{"a": 1}\n{"b"\n{"c": 3}\n')
    with pytest.raises(DamagedOutputError) as read:
        load_labelled(damaged)
    assert run_failing_in("train_q", read.value, monkeypatch, tmp_path) == 2
    assert capsys.readouterr().err == (
        f"run error: {damaged}:2 is not valid JSON (Expecting ':' delimiter): the file is "
        f"damaged beyond a torn last line; delete {damaged} so that stage label labels the "
        "rollouts again\n")


def test_data_files_without_a_split_a_stage_reads_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run, "STAGE_FUNCTIONS", {"collect": lambda ctx: ctx.problems("train", 1)})
    for reads_the_model in ("check_memory", "policy_architecture", "context_warning"):
        monkeypatch.setattr(run, reads_the_model, lambda *args: None)  # SmolLM2's GGUF: 3 s
    assert run.main([*REAL_TASK, "stages=[collect]", f"task.options.data_files.test={GSM8K_TEST}",
                     "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (  # said by preflight, before collect
        "config error: task.train_split='train': data_files has no entry for split 'train' "
        "(it has ['test']); add one, e.g. data_files.train=/path/to/train.jsonl\n")


@pytest.mark.parametrize("full, key", [
    (PagePoolExhausted("this write needs 8 new pages of 16 tokens but only 2 of 2 are free; "
                       "free finished slots, or build the cache with more pages"), "decode.pages"),
    (SlotPoolExhausted("asked for 2 cache slots but only 1 of 2 are free; free the slots of "
                       "finished nodes, or build the decoder with a larger num_slots"),
     "decode.slots")])
def test_a_search_that_outgrows_the_cache_names_the_setting_to_raise(
        tmp_path, monkeypatch, capsys, full, key):
    """Before evaluate, the run goes on in its folder under the larger cache; in evaluate,
    whose wall-clock figures keep their settings, under --reuse in a new one."""
    figures = str(full).split(";")[0]
    assert run_failing_in("collect", full, monkeypatch, tmp_path) == 2
    assert capsys.readouterr().err == (
        f"run error: the KV cache is full in stage collect: {figures}; raise {key} (python -m "
        "qstar_jax.memory_plan sizes it for your device) and run again with it, in the same "
        f"folder: the run goes on from what {tmp_path} keeps\n")
    assert (tmp_path / "policy").is_dir()
    monkeypatch.setattr(run, "check_stage_inputs", lambda ctx: None)  # no Q̂ trained here
    assert run_failing_in("evaluate", full, monkeypatch, tmp_path) == 2
    assert capsys.readouterr().err == (
        f"run error: the KV cache is full in stage evaluate: {figures}; raise {key} (python -m "
        "qstar_jax.memory_plan sizes it for your device) or lower eval.problems_per_batch. "
        f"{tmp_path} keeps what was done, under its own settings: to go on under new ones, "
        f"run with --out NEW --reuse {tmp_path}\n")


def test_a_cache_full_on_a_data_shard_says_each_shards_share_must_hold_a_search(
        tmp_path, monkeypatch, capsys):
    """On a mesh a search's rows stay on one data shard, so a shard's share too small for
    one search fails whatever eval.problems_per_batch is."""
    full = SlotPoolExhausted("asked for 2 cache slots beside their parents on data shard 0, "
                             "but only 0 of its 4 are free; raise num_slots")
    monkeypatch.setattr(run, "check_stage_inputs", lambda ctx: None)  # no Q̂ trained here
    assert run_failing_in("evaluate", full, monkeypatch, tmp_path) == 2
    assert ("raise decode.slots (decode.slots is split evenly over the mesh's data shards, "
            "and each shard's share must hold a whole search) (python -m qstar_jax.memory_plan"
            in capsys.readouterr().err)


def test_a_run_resumes_under_a_new_cache_layout_until_evaluate_has_begun(
        tmp_path, monkeypatch, capsys):
    """decode.slots and decode.pages change how rows are held, not what they compute: a
    run killed by a full cache goes on in its folder under larger ones. Once evaluate has
    logged a result they are refused there, as they move its wall-clock figures, and the
    refusal gives the folder's values, with which it goes on."""
    ran = []
    monkeypatch.setattr(run, "run_stages", lambda ctx: ran.append(ctx.config.decode.slots))
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(load_config(None, ["decode.slots=8", "stages=[train_policy]"])))
    assert run.main(["decode.slots=16", "stages=[train_policy]", "--out", str(tmp_path)]) == 0
    assert ran == [16] and load_config(saved).decode.slots == 16
    assert capsys.readouterr().out.startswith(
        f"[qstar] resuming {tmp_path} under new settings: decode.slots\n")
    (tmp_path / "q_training.json").write_text("{}")  # evaluate begins after training
    (tmp_path / "results.jsonl").write_text("")
    assert run.main(["decode.slots=32", "stages=[train_policy]", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"config error: {tmp_path} holds a run with a different config ({saved}: differs in "
        "decode.slots); its evaluate stage has begun, whose wall-clock these settings move: "
        f"to evaluate these settings on what it trained, use --out NEW --reuse {tmp_path}; "
        "to go on in it as it ran, give decode.slots=16\n")
    assert ran == [16] and load_config(saved).decode.slots == 16
    assert run.main(["decode.slots=16", "stages=[train_policy]", "--out", str(tmp_path)]) == 0
    assert ran == [16, 16]


def test_a_run_resumes_under_another_checkpoint_interval_whenever_it_was_stopped(
        tmp_path, monkeypatch, capsys):
    """policy_training.checkpoint_every changes when training saves, not what it computes:
    a run goes on in its folder under another, even once evaluate has begun."""
    ran = []
    monkeypatch.setattr(run, "run_stages",
                        lambda ctx: ran.append(ctx.config.policy_training.checkpoint_every))
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(load_config(None, ["stages=[train_policy]"])))
    (tmp_path / "results.jsonl").write_text("")
    assert run.main(["policy_training.checkpoint_every=7", "stages=[train_policy]",
                     "--out", str(tmp_path)]) == 0
    assert ran == [7] and load_config(saved).policy_training.checkpoint_every == 7
    assert capsys.readouterr().out.startswith(
        f"[qstar] resuming {tmp_path} under new settings: policy_training.checkpoint_every\n")


def test_a_prompt_longer_than_a_cache_row_names_the_settings_that_make_room(
        tmp_path, monkeypatch, capsys):
    long_prompt = PromptTooLong("a prompt of problem p3 has 530 tokens, more than a cache "
                                "row's 512")
    assert run_failing_in("collect", long_prompt, monkeypatch, tmp_path) == 2
    assert capsys.readouterr().err == (
        "run error: a prompt of problem p3 has 530 tokens, more than a cache row's 512: raise "
        "decode.max_len or, for MCTSr's prompts and ToT's value prompt (which quote the "
        "policy's own answers, critiques or steps), lower eval.text_max_tokens or "
        f"decode.max_steps. {tmp_path} keeps what was done: a new eval.text_max_tokens goes "
        f"on with --out NEW --reuse {tmp_path}; the other two need a new run (the training "
        "stages read them)\n")
    assert (tmp_path / "policy").is_dir()


def test_ctrl_c_during_a_stage_says_how_to_resume(tmp_path, monkeypatch, capsys):
    def interrupted(ctx):
        raise KeyboardInterrupt
    monkeypatch.setattr(run, "STAGE_FUNCTIONS", {"train_policy": interrupted})
    assert run.main(["stages=[train_policy]", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err == (f"interrupted: run the same command again to resume "
                                       f"from what {tmp_path} holds\n")


def test_a_ctrl_c_a_callback_swallowed_is_raised_again(tmp_path, monkeypatch, capsys):
    """A KeyboardInterrupt raised inside a callback Python calls for a library (JAX's
    garbage-collector hook) is dropped; the run raises another half a second later, so
    the stage ends and the run says how to resume, instead of going on to its end."""
    def swallowed_then_working(ctx):
        try:  # as Python's hook for unraisable exceptions drops one
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
        except KeyboardInterrupt:
            pass
        time.sleep(10)
        pytest.fail("the stage went on after Ctrl-C")
    monkeypatch.setattr(run, "STAGE_FUNCTIONS", {"train_policy": swallowed_then_working})
    # What the process had before (Python's default, unless an earlier test in this
    # worker left another): the run restores it.
    before = signal.getsignal(signal.SIGINT)
    assert run.main(["stages=[train_policy]", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.startswith("interrupted: run the same command again")
    assert signal.getsignal(signal.SIGINT) is before


def test_a_folder_another_run_is_using_is_refused_and_free_once_it_ends(
        tmp_path, monkeypatch, capsys):
    """While one run holds its folder a second there is exit 2, naming the first's process,
    before any stage; the lock ends with the run that held it."""
    ran = []
    monkeypatch.setattr(run, "run_stages", lambda ctx: ran.append(ctx.out))
    argv = ["decode.slots=8", "stages=[train_policy]", "--out", str(tmp_path)]
    holder = lock_folder(tmp_path)
    assert run.main(argv) == 2
    assert capsys.readouterr().err == (
        f"config error: another run (process {os.getpid()}) is using {tmp_path}; wait for it "
        "to end or choose another --out\n")
    assert ran == []
    holder.close()
    assert run.main(argv) == 0 and ran == [tmp_path]
    lock_folder(tmp_path).close()  # the run let go of the folder when it ended


@pytest.mark.parametrize("filename", [None, "results.jsonl"])
def test_a_disk_that_fills_during_a_stage_is_one_line_and_other_os_errors_are_raised(
        tmp_path, monkeypatch, capsys, filename):
    def disk_full(ctx):
        raise OSError(errno.ENOSPC, "No space left on device", filename)
    monkeypatch.setattr(run, "STAGE_FUNCTIONS", {"train_policy": disk_full})
    argv = ["stages=[train_policy]", "--out", str(tmp_path)]
    assert run.main(argv) == 2
    assert capsys.readouterr().err == (
        f"run error: cannot write {filename or tmp_path}: No space left on device; once it "
        f"can be written, run the same command again to resume from what {tmp_path} holds\n")

    def missing(ctx):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "x")
    monkeypatch.setattr(run, "STAGE_FUNCTIONS", {"train_policy": missing})
    with pytest.raises(FileNotFoundError):
        run.main(argv)


# What tensorstore raises through orbax for a checkpoint write on a full disk.
ORBAX_DISK_FULL = ValueError(
    'RESOURCE_EXHAUSTED: Error writing local file "/out/q_checkpoint/3.orbax-checkpoint-tmp/'
    'params/manifest.ocdbt": Failed to write 113 bytes to file 7: No space left on device '
    "[os_error_code='28']")


@pytest.mark.parametrize("failing", ["save", "wait_until_finished"])
def test_a_disk_that_fills_during_a_checkpoint_save_is_the_same_one_line(
        tmp_path, monkeypatch, capsys, failing):
    """Orbax raises a full disk as a ValueError, from the save that meets it or from the
    next save or close that waits for it: the run says it as it says any full disk."""
    def full(*args, **kwargs):
        raise ORBAX_DISK_FULL
    monkeypatch.setattr(checkpoint.ocp.CheckpointManager, failing, full)

    def saves_a_checkpoint(ctx):
        with checkpoint.QCheckpointer(
                ctx.q_dir, identity=checkpoint.BackboneIdentity.of_policy(tiny_config(32)),
                head_config=QHeadConfig(hidden_size=32, mlp_widths=())) as checkpointer:
            checkpointer.save(3, params={}, opt_state={}, best_params={}, progress={})
    monkeypatch.setattr(run, "STAGE_FUNCTIONS", {"train_policy": saves_a_checkpoint})
    assert run.main(["stages=[train_policy]", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"run error: cannot write {tmp_path.absolute() / 'q_checkpoint'}: No space left on "
        f"device; once it can be written, run the same command again to resume from what "
        f"{tmp_path} holds\n")
