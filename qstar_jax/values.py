"""Checks of values given by users, shared by the config, the loaders and the API."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def is_integer(value: Any) -> bool:
    """An integer (Python's or numpy's) that is not a bool: Python counts True as the int
    1, and JSON's or YAML's true would read as one."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
