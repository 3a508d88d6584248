"""Tasks whose problems ship inside a Python package: importing that package with an
error that says how to install it, and drawing a run's subset of a split."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Sequence, TypeVar

import numpy as np

from qstar_jax.values import is_integer

Item = TypeVar("Item")


def import_package(module: str, pip_name: str, task: str) -> ModuleType:
    """``module``, imported; a clear error naming ``pip install pip_name`` when missing."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"task {task!r} needs the {pip_name!r} package, which is not installed "
            f"({error}): run `pip install {pip_name}` (`make setup` installs it)") from error


def seeded_subset(items: Sequence[Item], limit: int | None, seed: int, *,
                  task: str, split: str, size_option: str) -> list[Item]:
    """``limit`` items drawn by ``seed``, kept in order (a smaller limit with the same seed
    gives a subset of a larger one); all of them when ``limit`` is None. Asking for more
    than the split holds is an error naming ``size_option``, not a silently smaller run."""
    if limit is None:
        return list(items)
    if not (is_integer(limit) and 1 <= limit <= len(items)):
        raise ValueError(f"{task} split {split!r} has {len(items)} problems; asked for "
                         f"{limit!r}. Ask for 1 to {len(items)} (task.eval_problems / "
                         f"task.train_problems), or change {size_option}")
    chosen = np.random.default_rng(seed).permutation(len(items))[:limit]
    return [items[i] for i in sorted(chosen)]
