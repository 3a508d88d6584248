from qstar_jax.config import CountdownWorldConfig, RunConfig, TaskConfig
from qstar_jax.stages.context import RunContext
from qstar_jax.tasks.hendrycks_math import Math500Task


def _task(tmp_path, **task):
    return RunContext(config=RunConfig(task=TaskConfig(**task)), out=tmp_path).task


def test_a_worlds_settings_reach_its_task_under_the_options_overrides(tmp_path):
    task = _task(tmp_path, name="countdown",
                 countdown=CountdownWorldConfig(num_count=3, target_range=(10, 20)),
                 options={"config": {"target_range": (24, 24)}})
    assert (task.config.num_count, task.config.number_range, task.config.target_range) == (
        3, (1, 9), (24, 24))


def test_a_task_without_world_settings_gets_its_options(tmp_path):
    task = _task(tmp_path, name="math500", options={"n_shot": 0})
    assert isinstance(task, Math500Task) and task.n_shot == 0
