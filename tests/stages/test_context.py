from pathlib import Path

from qstar_jax.config import CountdownWorldConfig, RunConfig, TaskConfig, load_config, to_yaml
from qstar_jax.stages.context import RunContext
from qstar_jax.tasks.hendrycks_math import Math500Task


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
