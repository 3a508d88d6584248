"""Whole runs over two processes: one process dying, the run resumed over two processes
again, and what it wrote against one process (in a file of its own, so that pytest's
workers run it beside tests/test_parallel.py rather than after it)."""

import re
import runpy
import time
from pathlib import Path

import pytest

from qstar_jax.parallel import free_local_port
from tests.test_parallel import start_child

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory) -> dict:
    """A tiny run as 2 processes x 2 devices whose process 1 is killed once both have
    trained the policy (how process 0 stopped, and how long after), then started again
    as 2 processes with the same settings, which resumes it; and the same run as one
    process with the same 4x1 mesh. One run serves the tests of dying, resuming and
    agreeing: each is a tiny run's worth of processes and compilation."""
    check = runpy.run_path(str(REPO / "experiments" / "sharding_check.py"))
    # Greedy and Q* run every kind of decoder program (prefill, fork, the step and trie
    # samplers) and Q-hat scoring; a 10-step policy is as good as a trained one for
    # comparing two ways of computing the same thing.
    overrides = ["task.eval_problems=4", "mesh.data=4", "policy_training.steps=10",
                 "eval.methods=[greedy,qstar]"]
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    port = str(free_local_port())
    children = [start_child("qstar_jax.run", *check["TINY"], *overrides,
                            f"distributed.coordinator=localhost:{port}",
                            "distributed.num_processes=2", f"distributed.process_id={i}",
                            "distributed.heartbeat_timeout_s=5", "--out", str(two),
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
    policy = two / "policy" / "model.safetensors"
    written = policy.stat().st_mtime_ns
    check["run"](two, overrides, devices=2, processes=2)
    check["run"](one, overrides, devices=4)
    return {"returncode": children[0].returncode, "stderr": stderr,
            "stopped_after": stopped_after, "policy_retrained": policy.stat().st_mtime_ns
            != written, "one": one, "two": two, "rows": check["rows"]}


@pytest.mark.slow
def test_when_a_process_dies_the_other_stops_naming_it_and_the_run_resumes(
        killed_then_resumed):
    """Process 0's next collective after process 1 dies fails and it says so, JAX's
    coordination service names process 1 once it has been silent for the heartbeat
    timeout and stops process 0 (no hang), and the run started again resumes from what
    process 0 wrote: the policy is not trained again."""
    run = killed_then_resumed
    assert run["returncode"] != 0 and run["stopped_after"] < 30
    assert "run error: process 0 of 2 lost the others" in run["stderr"]
    assert re.search(r"unhealthy \(stopped sending heartbeats\):\s*1\b", run["stderr"])
    assert not run["policy_retrained"]


@pytest.mark.slow
def test_a_tiny_run_over_two_processes_writes_what_one_process_writes(killed_then_resumed):
    """Every stage as 2 processes x 2 devices (process 0 writing the shared folder; the
    policies trained before process 1 died) against one process with the same 4x1 mesh:
    the same results."""
    run = killed_then_resumed
    assert run["rows"](run["two"]) == run["rows"](run["one"])
    for name in ("summary.json", "policy/config.json", "labels.jsonl", "q_training.json"):
        assert (run["two"] / name).exists(), name


@pytest.mark.slow
def test_a_process_that_fails_alone_leaves_at_once_and_the_other_follows(tmp_path):
    """Process 0 meets a full disk as the run's first stage starts while process 1 goes on
    into it: process 0 says so and leaves at once, instead of waiting in JAX's shutdown
    barrier for process 1, which waits on it in a collective (until that collective times
    out: 30 s on CPUs). Process 1 then stops too: its collective fails and it says it lost
    the others, or (process 0 being the coordination service's leader) JAX's client ends
    it, saying another task died."""
    check = runpy.run_path(str(REPO / "experiments" / "sharding_check.py"))
    port = str(free_local_port())
    children = [start_child("tests.support.writer_fails", *check["TINY"], "mesh.data=4",
                            f"distributed.coordinator=localhost:{port}",
                            "distributed.num_processes=2", f"distributed.process_id={i}",
                            "distributed.heartbeat_timeout_s=5", "--out", str(tmp_path),
                            devices=2) for i in (0, 1)]
    try:
        said = []
        for line in children[0].stderr:
            said.append(line)
            if line.startswith("run error: "):
                break
        error_at = time.monotonic()
        children[0].wait(timeout=200)
        left_after = time.monotonic() - error_at
        stderr_0 = "".join(said) + children[0].stderr.read()
        _, stderr_1 = children[1].communicate(timeout=200)
    finally:
        for child in children:
            child.kill()
    assert children[0].returncode == 2, stderr_0[-2000:]
    assert "run error: cannot write" in stderr_0 and "No space left on device" in stderr_0
    assert left_after < 10, left_after
    assert children[1].returncode != 0, stderr_1[-2000:]
    assert ("run error: process 1 of 2 lost the others" in stderr_1
            or "another task died" in stderr_1), stderr_1[-2000:]


def test_processes_started_with_different_configs_stop_before_any_stage(tmp_path):
    """Process 1 started with another task.eval_problems than process 0: both ran to exit
    0 and logged empty answers for the problem one of them lacked. Both now stop with a
    config error before any stage (--check: the checks alone), and a SIGTERM would stop
    either (JAX's preemption notifier caught it, so neither did)."""
    check = runpy.run_path(str(REPO / "experiments" / "sharding_check.py"))
    port = str(free_local_port())
    children = [start_child("qstar_jax.run", *check["TINY"], "mesh.data=4", "--check",
                            f"task.eval_problems={4 - i}",
                            f"distributed.coordinator=localhost:{port}",
                            "distributed.num_processes=2", f"distributed.process_id={i}",
                            "distributed.heartbeat_timeout_s=5", "--out", str(tmp_path),
                            devices=2) for i in (0, 1)]
    try:
        outputs = [child.communicate(timeout=200) for child in children]
    finally:
        for child in children:
            child.kill()
    for child, (_, stderr) in zip(children, outputs):
        assert child.returncode == 2, stderr[-2000:]
        assert ("config error: the 2 processes were started with different configs (a file "
                "or an override differs between them)") in stderr, stderr[-2000:]
