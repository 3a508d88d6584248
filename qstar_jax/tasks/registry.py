"""Tasks by name: ``make_task("gsm8k", data_files={...})``.

Task modules are imported on first use, so importing the registry does not pull in
``datasets`` (or a task's own dependencies) for a run that never needs them.
"""

from __future__ import annotations

import importlib
import inspect

from qstar_jax.tasks.base import Task

# name -> (module, class)
TASK_CLASSES = {
    "gsm8k": ("qstar_jax.tasks.gsm8k", "Gsm8kTask"),
    "math": ("qstar_jax.tasks.hendrycks_math", "MathTask"),
    "math500": ("qstar_jax.tasks.hendrycks_math", "Math500Task"),
    "mbpp": ("qstar_jax.tasks.mbpp", "MbppTask"),
    "mbpp_sanitized": ("qstar_jax.tasks.mbpp", "MbppSanitizedTask"),
    "countdown": ("qstar_jax.tasks.countdown", "CountdownTask"),
    "humaneval": ("qstar_jax.tasks.humaneval", "HumanEvalTask"),
    "gsm_symbolic": ("qstar_jax.tasks.gsm_symbolic", "GsmSymbolicTask"),
    "arithmetic": ("qstar_jax.tasks.arithmetic", "ArithmeticTask"),
}


def make_task(name: str, **options) -> Task:
    """The task called ``name``, built with ``options`` (its constructor's keywords)."""
    if name not in TASK_CLASSES:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_CLASSES)}")
    module, class_name = TASK_CLASSES[name]
    task_class = getattr(importlib.import_module(module), class_name)
    known = set(inspect.signature(task_class).parameters)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"task {name!r} has no option(s) {unknown}; "
                         f"its options are: {', '.join(sorted(known))}")
    return task_class(**options)
