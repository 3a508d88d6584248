"""The scripts under experiments/ as modules, as ``python experiments/NAME.py`` has them:
their folder on sys.path, so that they import one another."""

import importlib
from pathlib import Path
from types import ModuleType

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def experiment_module(monkeypatch: pytest.MonkeyPatch, name: str) -> ModuleType:
    """experiments/``name``.py, imported with its folder on sys.path for the test."""
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    return importlib.import_module(name)
