"""What pyproject.toml installs without the test extra (``pip install -e '.[cuda]'`` on a
GPU box, as the README says): every package a run needs."""

import importlib.metadata
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def runtime_closure() -> set[str]:
    """The distributions pyproject.toml's dependencies install, their own included (as this
    environment's metadata gives them; no extras)."""
    names = [Requirement(r).name for r in tomllib.loads(PYPROJECT.read_text())["project"]
             ["dependencies"]]
    seen: set[str] = set()
    while names:
        name = names.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                names.append(requirement.name)
    return seen


def test_a_chat_template_renders_without_the_test_extra():
    # transformers renders chat templates (policy.chat_template=true) with jinja2 but does
    # not require it; only torch, of the test extra, brought it.
    assert "jinja2" in runtime_closure()
