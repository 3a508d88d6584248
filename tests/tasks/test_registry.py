"""make_task: every known name, options, clear errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from qstar_jax.tasks import make_task
from qstar_jax.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from qstar_jax.tasks.gsm8k import Gsm8kTask
from qstar_jax.tasks.hendrycks_math import Math500Task, MathTask
from qstar_jax.tasks.mbpp import MbppSanitizedTask, MbppTask


@pytest.mark.parametrize("name, task_class", [
    ("gsm8k", Gsm8kTask), ("math", MathTask), ("math500", Math500Task), ("mbpp", MbppTask),
    ("mbpp_sanitized", MbppSanitizedTask)])
def test_names_build_their_task_with_options(name, task_class):
    task = make_task(name, n_shot=1, data_files={"test": "/data/test.jsonl"})
    assert type(task) is task_class
    assert task.name == name
    assert task.n_shot == 1
    assert task.data_files == {"test": "/data/test.jsonl"}


def test_countdown_is_built_by_name():
    from qstar_jax.tasks.countdown import CountdownConfig, CountdownTask

    config = CountdownConfig(num_count=3, test_size=7)
    task = make_task("countdown", config=config)
    assert type(task) is CountdownTask
    assert task.name == "countdown"
    assert task.config is config


def test_arithmetic_is_built_by_name_from_a_yaml_mapping():
    task = make_task("arithmetic", config={"operations": [2, 2], "test_size": 4})
    assert type(task) is ArithmeticTask and task.name == "arithmetic"
    assert task.config == ArithmeticConfig(operations=(2, 2), test_size=4)
    assert len(task.load("test")) == 4


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown task 'gsm9k'; known tasks: gsm8k, math, "
                                         "math500, mbpp, mbpp_sanitized, countdown, "
                                         "humaneval, gsm_symbolic, arithmetic$"):
        make_task("gsm9k")


def test_bad_option_value_fails_when_the_task_is_made():
    with pytest.raises(ValueError, match="n_shot must be between 0 and 3"):
        make_task("mbpp_sanitized", n_shot=4)


def test_unknown_option_lists_the_task_options():
    with pytest.raises(ValueError, match=r"task 'mbpp' has no option\(s\) \['nshot'\]; its "
                                         r"options are: cache_dir, challenge_tests, "
                                         r"data_files, hub_name, memory_mb, n_shot, "
                                         r"shown_tests, timeout_s"):
        make_task("mbpp", nshot=2)


def test_importing_the_package_does_not_load_task_modules():
    code = ("import sys, qstar_jax.tasks; "
            "print(sorted(m for m in ('datasets', 'qstar_jax.tasks.gsm8k', "
            "'qstar_jax.tasks.mbpp') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).parents[2])
    assert result.stdout.strip() == "[]"
