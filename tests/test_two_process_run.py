"""Whole runs over two processes: against one process, and with one process dying (in a
file of its own, so that pytest's workers run it beside tests/test_parallel.py rather
than after it)."""

import re
import runpy
import time
from pathlib import Path

import pytest

from qstar_jax.parallel import free_local_port
from qstar_jax.run import main
from tests.test_parallel import start_child
from tests.test_run_pipeline import TINY

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


@pytest.mark.slow
def test_when_a_process_dies_the_other_stops_naming_it_and_the_run_resumes(tmp_path):
    """Process 1 is killed once both have trained the policy: process 0's next collective
    fails and it says so, JAX's coordination service names process 1 once it has been
    silent for the heartbeat timeout and stops process 0 (no hang), and a rerun resumes
    from what process 0 wrote."""
    port = str(free_local_port())
    tiny = [*TINY, "policy_training.steps=2"]
    children = [start_child("qstar_jax.run", *tiny, f"distributed.coordinator=localhost:{port}",
                            "distributed.num_processes=2", f"distributed.process_id={i}",
                            "distributed.heartbeat_timeout_s=5", "--out", str(tmp_path),
                            devices=2) for i in (0, 1)]
    try:
        for line in children[1].stdout:
            if line.startswith("[qstar] stage train_policy done"):
                break
        began = time.monotonic()
        children[1].kill()
        _, stderr = children[0].communicate(timeout=60)
        stopped_after = time.monotonic() - began
    finally:
        for child in children:
            child.kill()
    assert children[0].returncode != 0 and stopped_after < 30
    assert "run error: process 0 of 2 lost the others" in stderr
    assert re.search(r"unhealthy \(stopped sending heartbeats\):\s*1\b", stderr)
    policy = tmp_path / "policy" / "model.safetensors"
    written = policy.stat().st_mtime_ns
    assert main([*tiny, "stages=[train_policy]", "--out", str(tmp_path)]) == 0
    assert policy.stat().st_mtime_ns == written  # resumed: not trained again
