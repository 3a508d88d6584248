"""A whole run over two processes against one process (in a file of its own, so that
pytest's workers run it beside tests/test_parallel.py rather than after it)."""

import runpy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_tiny_run_over_two_processes_writes_what_one_process_writes(tmp_path):
    """Every stage as 2 processes x 2 devices (process 0 writing the shared folder)
    against one process with the same 4x1 mesh: the same results."""
    check = runpy.run_path(str(REPO / "experiments" / "sharding_check.py"))
    # Greedy and Q* run every kind of decoder program (prefill, fork, the step and trie
    # samplers) and Q-hat scoring; a 10-step policy is as good as a trained one for
    # comparing two ways of computing the same thing.
    overrides = ["task.eval_problems=4", "mesh.data=4", "policy_training.steps=10",
                 "eval.methods=[greedy,qstar]"]
    check["run"](tmp_path / "one", overrides, devices=4)
    check["run"](tmp_path / "two", overrides, devices=2, processes=2)
    assert check["rows"](tmp_path / "two") == check["rows"](tmp_path / "one")
    for name in ("summary.json", "policy/config.json", "labels.jsonl", "q_training.json"):
        assert (tmp_path / "two" / name).exists(), name
