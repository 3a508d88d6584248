"""Tasks: datasets, prompts, step format, answer extraction and grading.

``make_task(name, **options)`` builds a task by name; each task's module is imported on
first use, so importing this package stays cheap.
"""

from qstar_jax.tasks.base import (STEP_SEPARATOR, ChatFormatter, MalformedRecordError, Problem,
                                  Task, join_steps, split_steps)
from qstar_jax.tasks.registry import TASK_CLASSES, make_task

__all__ = ["STEP_SEPARATOR", "TASK_CLASSES", "ChatFormatter", "MalformedRecordError", "Problem",
           "Task", "join_steps", "make_task", "split_steps"]
