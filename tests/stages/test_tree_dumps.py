"""Tree dumps (``eval.dump_trees``): in a multi-process run every process searched alike,
and process 0 alone writes the trees."""

import json
from types import SimpleNamespace

import pytest

from qstar_jax.stages import evaluate

PROBLEMS = [SimpleNamespace(id="countdown/1")]
RESULTS = [SimpleNamespace(problem_index=0, tree={"nodes": [{"steps": [], "h": 0.5}]})]


@pytest.mark.parametrize("writer", [True, False])
def test_only_the_writer_process_dumps_trees(tmp_path, monkeypatch, writer):
    monkeypatch.setattr(evaluate, "is_writer", lambda: writer)
    evaluate._dump_trees(SimpleNamespace(out=tmp_path), "qstar", PROBLEMS, RESULTS)
    if writer:
        dump = tmp_path / "trees" / "qstar" / "countdown_1.json"
        assert json.loads(dump.read_text()) == RESULTS[0].tree
    else:
        assert list(tmp_path.iterdir()) == []
