"""The mesh and its sharding rules; decoding and training on 4 CPU devices, and
decoding over two processes, each against one device."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from qstar_jax.parallel import MeshError, ShardingRules, initialize_distributed, make_mesh
from tests.decoding.tiny_models import tiny_config

REPO = Path(__file__).resolve().parents[1]


def start_child(module: str, *args: str, devices: int) -> subprocess.Popen:
    """``python -m module`` in a fresh process with ``devices`` CPU devices."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices),
           "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(children: list[subprocess.Popen], timeout: int = 900) -> list[str]:
    """Each child's stdout once all have exited 0; every child is killed on a failure."""
    try:
        outputs = [child.communicate(timeout=timeout) for child in children]
    finally:
        for child in children:
            child.kill()
    for child, (_, stderr) in zip(children, outputs):
        assert child.returncode == 0, stderr[-3000:]
    return [stdout for stdout, _ in outputs]


def run_child(module: str, *args: str) -> str:
    """stdout of ``python -m module`` with 4 CPU devices."""
    return finish([start_child(module, *args, devices=4)])[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("data, model, message", [
    (2, 1, r"data=2 x model=1 needs 2 devices, but there are 1"),
    (-1, 2, r"mesh.model=2 does not divide the 1 devices"),
    (0, 1, r"sizes must be >= 1"),
])
def test_an_impossible_mesh_is_a_clear_error(data, model, message):
    with pytest.raises(MeshError, match=message):
        make_mesh(data, model, devices=jax.devices()[:1])


def test_logical_axes_map_to_mesh_axes():
    rules = ShardingRules()
    assert rules.spec("slots", "kv_heads", None) == PartitionSpec("data", "model", None)
    assert rules.spec("vocab", "embed") == PartitionSpec("model", None)
    with pytest.raises(ValueError, match="two dimensions to one mesh axis"):
        rules.spec("heads", "mlp")


def test_axes_the_model_axis_does_not_divide_are_replicated():
    # tiny config: 4 heads, 2 kv heads, MLP 64, vocab 64; model axis 4.
    rules = ShardingRules().for_model(tiny_config(64), AbstractMesh((1, 4), ("data", "model")))
    assert (rules.heads, rules.kv_heads, rules.mlp, rules.vocab) == ("model", None, "model",
                                                                     "model")
    rules = ShardingRules().for_model(tiny_config(63), AbstractMesh((1, 2), ("data", "model")))
    assert (rules.heads, rules.kv_heads, rules.vocab) == ("model", "model", None)


def test_distributed_settings_come_all_together(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert initialize_distributed() is False  # nothing set: a single-process run
    with pytest.raises(ValueError, match="give coordinator, num_processes and process_id"):
        initialize_distributed(coordinator="localhost:1234")
    with pytest.raises(ValueError, match=r"process_id=2 must lie in \[0, num_processes=2\)"):
        initialize_distributed(coordinator="localhost:1234", num_processes=2, process_id=2)


def assert_same_as_one_device(report: dict, meshes: set[str]) -> None:
    assert set(report) == meshes
    for mesh, got in report.items():
        assert got["logits_max_diff"] < 1e-5, mesh
        assert got["logprob_max_diff"] < 1e-4, mesh
        assert got["same_tokens"] == {"greedy": True, "hot": True, "trie": True}, mesh
        assert not got["recompiled"], mesh


def test_decoding_on_meshes_4x1_2x2_1x4_matches_one_device():
    report = json.loads(run_child("tests.support.sharded_decoding").splitlines()[-1])
    assert_same_as_one_device(report, {"4x1", "2x2", "1x4"})
    # Slots on data; 2 kv heads do not split 4 ways, so they are replicated on 1x4 while
    # the 4 query heads are split.
    assert report["2x2"]["layout"]["cache"] == str(PartitionSpec(None, "data", "model",
                                                                 None, None))
    assert report["1x4"]["layout"]["cache"] == str(PartitionSpec(None, "data", None, None,
                                                                 None))
    assert report["1x4"]["layout"]["q_proj"] == str(PartitionSpec(None, None, "model"))
    assert report["1x4"]["layout"]["k_proj"] == str(PartitionSpec(None, None, None))


def test_sharded_q_training_and_checkpoints(tmp_path):
    report = json.loads(run_child("tests.support.sharded_training",
                                  str(tmp_path / "q")).splitlines()[-1])
    for mesh in ("4x1", "2x2"):
        assert report[mesh]["q"] < 1e-6 and report[mesh]["policy"] < 1e-5, mesh
    assert report["round_trip"] == {"equal": True, "shardings_as_target": True}


def test_decoding_over_two_processes_matches_one_device():
    """2 processes x 2 CPU devices (jax.distributed, gloo collectives on localhost)."""
    port = str(free_port())
    outputs = finish([start_child("tests.support.sharded_decoding", port, str(process),
                                  devices=2) for process in (0, 1)])
    assert_same_as_one_device(json.loads(outputs[0].splitlines()[-1]), {"4x1", "2x2"})
