from pathlib import Path
from types import SimpleNamespace

import jax.numpy as jnp
import pytest

from qstar_jax.config import CountdownWorldConfig, RunConfig, TaskConfig
from qstar_jax.config_loading import load_config, to_yaml
from qstar_jax.decoding.paged_cache import Paging
from qstar_jax.models.loading import LoadedModel
from qstar_jax.models.sharded_params import PARAMS_FOLDER
from qstar_jax.models.weights import CheckpointError
from qstar_jax.outputs.durable import DamagedOutputError
from qstar_jax.stages import context
from qstar_jax.stages.context import RunContext
from qstar_jax.tasks.base import MalformedRecordError
from qstar_jax.tasks.hendrycks_math import Math500Task

GSM8K_MALFORMED = Path(__file__).parents[1] / "fixtures" / "gsm8k" / "malformed.jsonl"


def _task(tmp_path, **task):
    return RunContext(config=RunConfig(task=TaskConfig(**task)), out=tmp_path).task


def _saved_run(folder, *overrides):
    folder.mkdir()
    (folder / "config.yaml").write_text(to_yaml(load_config(None, list(overrides))))
    return folder


def test_a_worlds_settings_reach_its_task_under_the_options_overrides(tmp_path):
    task = _task(tmp_path, name="countdown",
                 countdown=CountdownWorldConfig(num_count=3, target_range=(10, 20)),
                 options={"config": {"target_range": (24, 24)}})
    assert (task.config.num_count, task.config.number_range, task.config.target_range) == (
        3, (1, 9), (24, 24))


def test_a_worlds_task_refuses_an_option_it_does_not_know(tmp_path):
    """Countdown's constructor takes only ``config``: a stray option is refused by name, as
    every other task's is, not dropped."""
    with pytest.raises(ValueError, match=r"^task 'countdown' has no option\(s\) "
                                         r"\['split_seed'\]; its options are: config$"):
        _task(tmp_path, name="countdown", options={"split_seed": 4})


def test_a_task_without_world_settings_gets_its_options(tmp_path):
    task = _task(tmp_path, name="math500", options={"n_shot": 0})
    assert isinstance(task, Math500Task) and task.n_shot == 0


def test_trained_models_live_in_the_run_folder_and_configured_ones_where_the_config_says(
        tmp_path):
    trained = RunContext.of_run(_saved_run(tmp_path / "trained"))
    assert (trained.policy_dir, trained.second_opinion_dir) == (
        tmp_path / "trained" / "policy", tmp_path / "trained" / "second_policy")
    given = RunContext.of_run(_saved_run(tmp_path / "given", "policy.source=/ckpt/policy",
                                         "q_train.second_opinion=/ckpt/second"))
    assert (given.policy_dir, given.second_opinion_dir) == (Path("/ckpt/policy"),
                                                            Path("/ckpt/second"))
    none = RunContext.of_run(_saved_run(tmp_path / "none", "q_train.second_opinion=null"))
    assert none.second_opinion_dir is None


def test_q_hats_folder_is_absolute_under_a_relative_output_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ctx = RunContext(config=RunConfig(), out=Path("runs/x"))
    assert ctx.q_dir == tmp_path / "runs" / "x" / "q_checkpoint"
    assert (ctx.rollouts_path, ctx.labels_path, ctx.step_outcomes_path) == (
        Path("runs/x/rollouts.jsonl"), Path("runs/x/labels.jsonl"),
        Path("runs/x/step_outcomes.jsonl"))


def test_problems_are_the_tasks_for_the_runs_seed(tmp_path):
    def questions(seed):
        ctx = RunContext(config=RunConfig(seed=seed), out=tmp_path)
        return [p.question for p in ctx.problems("train", 3)]
    seeded = RunContext(config=RunConfig(), out=tmp_path).task.load("train", limit=3, seed=1)
    assert questions(1) == [p.question for p in seeded]
    assert len(questions(1)) == 3 and questions(1) != questions(0)


def test_a_malformed_record_is_an_error_naming_the_setting_that_skips_it(tmp_path):
    """gsm8k's malformed fixture (record 2 has no '####' line) over a run's config."""
    def problems(*overrides):
        ctx = RunContext(config=load_config("configs/gsm8k_llama2_7b.yaml", [
            f"task.options.data_files.test={GSM8K_MALFORMED}",
            f"task.options.cache_dir={tmp_path / 'hf'}", *overrides]), out=tmp_path)
        return [p.id for p in ctx.problems("test", 10)]
    with pytest.raises(MalformedRecordError, match=r"record 2: .*or skip such records "
                       r"\(task.skip_malformed=true in a run, skip_malformed=True to "
                       r"Task.load\)"):
        problems()
    assert problems("task.skip_malformed=true") == ["gsm8k/test/0", "gsm8k/test/1",
                                                    "gsm8k/test/3"]


def test_the_runtime_decodes_with_the_runs_decode_settings(tmp_path, monkeypatch):
    made = {}
    monkeypatch.setattr(context, "Decoder", lambda model, **settings: made.update(
        decoder=(model, settings)) or "decoder")
    monkeypatch.setattr(context, "PolicyRuntime", lambda *args, **settings: made.update(
        runtime=(args, settings)))
    tokenizer = SimpleNamespace(newline_table=lambda vocab: f"newlines of {vocab}",
                                blank_step_tables=lambda vocab: f"blank steps of {vocab}",
                                eos_ids=(2, 3))
    second = LoadedModel(config=SimpleNamespace(vocab_size=40), model="second model",
                         tokenizer=tokenizer)
    ctx = RunContext(config=load_config(None, [
        "decode.slots=64", "decode.max_len=96", "decode.step_chunk=8", "decode.page_size=16",
        "decode.pages=300", "decode.min_rows=4", "decode.layer_weights=stacked",
        "decode.row_windows=gather", "decode.step_token_cap=20", "seed=5"]), out=tmp_path)
    problems = ctx.problems("test", 2)
    ctx.runtime(problems, model=second)
    model, settings = made["decoder"]
    assert model == "second model" and settings == dict(
        num_slots=64, max_len=96, newline_table="newlines of 40",
        blank_steps="blank steps of 40", eos_ids=(2, 3), step_chunk=8,
        paging=Paging(page_size=16, num_pages=300), min_batch_bucket=4,
        layer_weights="stacked", row_windows=False, mesh=None)
    args, settings = made["runtime"]
    assert args == ("decoder", tokenizer, ctx.task, problems, ctx.prompts(problems))
    assert settings == dict(seed=5, step_token_cap=20)
    # A cache of 6 rows: 6 slots, each with the 6 pages a 96-token row fills.
    ctx.runtime(problems, model=second, rows=6)
    assert made["decoder"][1]["num_slots"] == 6
    assert made["decoder"][1]["paging"] == Paging(page_size=16, num_pages=36)
    RunContext(config=load_config(None), out=tmp_path).runtime(problems, model=second)
    assert made["decoder"][1]["paging"] is None  # decode.page_size=0: a row per slot


def test_models_load_in_the_runs_dtype_onto_its_mesh_and_prompts_take_the_chat_template(
        tmp_path, monkeypatch):
    loads = []
    chat = SimpleNamespace(apply_chat_template=lambda messages: f"<user>{messages}</user>",
                           has_chat_template=True)

    def load_model(source, **settings):
        loads.append((source, settings))
        tokenizer = None if source.stem == "bare" else chat
        return LoadedModel(config=None, model=f"model at {source}", tokenizer=tokenizer)

    monkeypatch.setattr(context, "load_model", load_model)
    ctx = RunContext(config=load_config(None, [
        "policy.source=/ckpt/policy", "policy.dtype=bfloat16", "policy.chat_template=true",
        "q_train.second_opinion=/ckpt/second"]), out=tmp_path, mesh="the run's mesh")
    assert ctx.second_policy.model == "model at /ckpt/second"
    problems = ctx.problems("test", 2)
    assert ctx.prompts(problems) == [
        f"<user>[{{'role': 'user', 'content': {p.question!r}}}]</user>" for p in problems]
    settings = dict(dtype=jnp.bfloat16, mesh="the run's mesh")
    assert loads == [(Path("/ckpt/second"), settings), (Path("/ckpt/policy"), settings)]
    with pytest.raises(ValueError, match="^model /ckpt/bare ships no tokenizer; point the "
                                         "config at a checkpoint with tokenizer files$"):
        ctx.load(Path("/ckpt/bare"))
    with pytest.raises(CheckpointError) as raised:
        ctx.load(Path("/ckpt/bare.gguf"))
    assert str(raised.value) == (
        "model /ckpt/bare.gguf ships no tokenizer: the file holds no vocabulary "
        "(tokenizer.ggml.tokens); use a GGUF converted with its tokenizer, or the model's HF "
        "directory")


def test_a_chat_template_asked_of_a_tokenizer_without_one_names_the_setting(
        tmp_path, monkeypatch):
    plain = SimpleNamespace(has_chat_template=False)
    monkeypatch.setattr(context, "load_model", lambda source, **settings: LoadedModel(
        config=None, model="model", tokenizer=plain))
    checkpoint = ["policy.source=/ckpt/plain", "q_train.second_opinion=null"]
    ctx = RunContext(config=load_config(None, [*checkpoint, "policy.chat_template=true"]),
                     out=tmp_path)
    with pytest.raises(CheckpointError) as raised:
        ctx.policy  # noqa: B018 (loaded to check)
    assert str(raised.value) == (
        "the tokenizer of /ckpt/plain has no chat template, and policy.chat_template=true "
        "prompts through one; set policy.chat_template=false to prompt with plain text, or "
        "use a checkpoint whose tokenizer_config.json (or chat_template.jinja) has one")
    plain_run = RunContext(config=load_config(None, checkpoint), out=tmp_path)
    assert plain_run.policy.tokenizer is plain


def test_a_trained_model_whose_parameters_do_not_read_back_says_what_to_delete(
        tmp_path, monkeypatch):
    """Tensorstore's error for a cut parameter file runs to kilobytes: the run says its
    first line, and which folder to delete so that train_policy trains the policy again."""
    def load_model(source, **settings):
        if (source / "config.json").exists():
            raise CheckpointError(f"{source}/config.json: cannot read it")
        # Orbax raises some of tensorstore's errors from a bare Exception.
        raise Exception("Encountered error while reading array index") from ValueError(
            'OUT_OF_RANGE: Error reading "norm.weight/.zarray"\n  {"spec": 1}')

    monkeypatch.setattr(context, "load_model", load_model)
    ctx = RunContext(config=load_config(None), out=tmp_path, mesh="the run's mesh")
    policy = tmp_path / "policy"
    (policy / PARAMS_FOLDER).mkdir(parents=True)
    with pytest.raises(DamagedOutputError) as raised:
        ctx.policy  # noqa: B018 (loaded to check)
    assert str(raised.value) == (
        f'cannot read the trained parameters in {policy / PARAMS_FOLDER} (OUT_OF_RANGE: Error '
        f'reading "norm.weight/.zarray"): they are damaged; delete {policy} so that stage '
        "train_policy trains it again")
    elsewhere = tmp_path / "other_run" / "policy"
    (elsewhere / PARAMS_FOLDER).mkdir(parents=True)
    with pytest.raises(DamagedOutputError, match="; restore it from a copy or train it again$"):
        ctx.load(elsewhere)
    with pytest.raises(Exception, match="^Encountered error") as raised:  # no parameters
        ctx.load(tmp_path / "hf_checkpoint")
    assert not isinstance(raised.value, DamagedOutputError)
    (policy / "config.json").touch()
    with pytest.raises(CheckpointError, match="config.json: cannot read it"):
        ctx.load(policy)
