"""The mesh and its sharding rules; decoding and training on 4 CPU devices, and
decoding over two processes, each against one device; what the compiled decoder moves
between data shards."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

from qstar_jax.decoding.weights import DecoderWeights
from qstar_jax.models.llama import LlamaModel
from qstar_jax.parallel import (MeshError, ShardingRules, barrier, check_slots,
                                cluster_in_environment, collectives, data_collectives,
                                free_local_port, initialize_distributed, is_writer,
                                local_child_environment, make_mesh, shard_rows,
                                weight_shardings)
from tests.decoding.tiny_models import tiny_config

REPO = Path(__file__).resolve().parents[1]


def start_child(module: str, *args: str, devices: int) -> subprocess.Popen:
    """``python -m module`` in a fresh process with ``devices`` CPU devices."""
    env = local_child_environment(devices, REPO)
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


@pytest.mark.parametrize("data, model, message", [
    (2, 1, r"data=2 x model=1 needs 2 devices, but there are 1"),
    (-1, 2, r"mesh.model=2 does not divide the 1 devices"),
    (0, 1, r"sizes must be >= 1"),
    (-2, 1, r"sizes must be >= 1 \(data may be -1\), got data=-2 model=1"),
    (1, 0, r"sizes must be >= 1 \(data may be -1\), got data=1 model=0"),
    (-1, 0, r"sizes must be >= 1 \(data may be -1\), got data=-1 model=0"),
])
def test_an_impossible_mesh_is_a_clear_error(data, model, message):
    with pytest.raises(MeshError, match=message):
        make_mesh(data, model, devices=jax.devices()[:1])


def test_mesh_axes_are_auto_so_gspmd_propagates_shardings():
    """jax.make_mesh's own default is Explicit axes, under which every jitted function
    would have to spell out its shardings."""
    mesh = make_mesh(-1, 1, devices=jax.devices()[:1])
    assert dict(mesh.shape) == {"data": 1, "model": 1}
    assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
    assert list(mesh.devices.flat) == jax.devices()[:1]


def test_data_minus_one_takes_the_devices_the_model_axis_leaves(monkeypatch):
    built = []
    monkeypatch.setattr(jax, "make_mesh", lambda shape, names, **options: built.append(
        (shape, names, options["devices"])))
    devices = [f"device {i}" for i in range(8)]
    for model, data in ((1, 8), (2, 4), (4, 2), (8, 1)):
        make_mesh(-1, model, devices=devices)
        assert built.pop() == ((data, model), ("data", "model"), devices)
    with pytest.raises(MeshError, match="mesh.model=3 does not divide the 8 devices"):
        make_mesh(-1, 3, devices=devices)


def test_the_slot_pool_must_split_evenly_over_the_data_shards():
    mesh = AbstractMesh((4, 1), ("data", "model"))
    check_slots(mesh, 8)
    with pytest.raises(MeshError, match="decode.slots=6 does not split over the 4 data shards"):
        check_slots(mesh, 6)


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
    # Each axis is checked against the mesh axis its own rule names; replicated stays so.
    rules = ShardingRules(heads=None, mlp="data").for_model(
        tiny_config(64), AbstractMesh((3, 2), ("data", "model")))
    assert (rules.heads, rules.kv_heads, rules.mlp, rules.vocab) == (None, "model", None,
                                                                     "model")


def test_batch_rows_split_over_the_data_axis_where_it_divides_them(monkeypatch):
    constrained = []
    monkeypatch.setattr(jax.lax, "with_sharding_constraint",
                        lambda x, sharding: constrained.append((x.shape, sharding.spec)) or x)
    mesh = AbstractMesh((2, 3), ("data", "model"))
    rows = {"even": np.zeros((4, 3)), "odd": np.zeros((3, 2)), "labels": np.zeros(6)}
    shard_rows(rows, mesh)
    assert sorted(constrained) == [((4, 3), PartitionSpec("data", None)),
                                   ((6,), PartitionSpec("data"))]
    constrained.clear()
    shard_rows(rows, mesh, ShardingRules(batch="model"))  # 3-way: 3 and 6 rows, not 4
    assert sorted(constrained) == [((3, 2), PartitionSpec("model", None)),
                                   ((6,), PartitionSpec("model"))]
    constrained.clear()
    assert shard_rows(rows, None) is rows
    assert shard_rows(rows, mesh, ShardingRules(batch=None)) is rows
    assert constrained == []


def test_each_weight_splits_its_own_dimension_over_the_model_axis():
    """Qwen2-shaped tiny weights (q/k/v biases) on a 1x4 mesh: the vocabulary, query heads
    and MLP width split 4 ways, the 2 kv heads replicated; the stack's leading layer axis,
    the norms and the transposed copy's fused q/k/v rows never split. Every decoder and
    restored policy takes this layout; GSPMD computes the same tokens under any other, so
    only the specs show a weight split along the wrong dimension."""
    config = dataclasses.replace(tiny_config(64), model_type="qwen2", attention_bias=True)
    mesh = AbstractMesh((1, 4), ("data", "model"))
    rules = ShardingRules().for_model(config, mesh)

    def shapes():  # of the stacked weights and of the transposed copy's first layer
        weights = DecoderWeights.of(LlamaModel(config, rngs=nnx.Rngs(0)),
                                    "per-layer-transposed")
        return [nnx.to_pure_dict(state) for state in (nnx.state(weights.model, nnx.Param),
                                                       weights.layers[0])]
    stacked, per_layer = (
        {jax.tree_util.keystr(path, simple=True, separator="."): sharding.spec
         for path, sharding in jax.tree_util.tree_leaves_with_path(
             weight_shardings(tree, mesh, rules))}
        for tree in jax.eval_shape(shapes))
    split, whole = "model", None
    assert stacked == {
        "embed_tokens.embedding": PartitionSpec(split, whole),
        "layers.input_layernorm.weight": PartitionSpec(whole, whole),
        "layers.post_attention_layernorm.weight": PartitionSpec(whole, whole),
        "layers.self_attn.q_proj.kernel": PartitionSpec(whole, whole, split),
        "layers.self_attn.q_proj.bias": PartitionSpec(whole, split),
        "layers.self_attn.k_proj.kernel": PartitionSpec(whole, whole, whole),
        "layers.self_attn.k_proj.bias": PartitionSpec(whole, whole),
        "layers.self_attn.v_proj.kernel": PartitionSpec(whole, whole, whole),
        "layers.self_attn.v_proj.bias": PartitionSpec(whole, whole),
        "layers.self_attn.o_proj.kernel": PartitionSpec(whole, split, whole),
        "layers.mlp.gate_proj.kernel": PartitionSpec(whole, whole, split),
        "layers.mlp.up_proj.kernel": PartitionSpec(whole, whole, split),
        "layers.mlp.down_proj.kernel": PartitionSpec(whole, split, whole),
        "lm_head.kernel": PartitionSpec(whole, split),
        "norm.weight": PartitionSpec(whole)}
    assert per_layer == {
        "input_layernorm.weight": PartitionSpec(whole),
        "post_attention_layernorm.weight": PartitionSpec(whole),
        "self_attn.qkv_proj.rows": PartitionSpec(whole, whole),
        "self_attn.qkv_proj.bias": PartitionSpec(whole),
        "self_attn.o_proj.rows": PartitionSpec(whole, split),  # [embed, heads]
        "mlp.gate_proj.kernel": PartitionSpec(whole, split),
        "mlp.up_proj.kernel": PartitionSpec(whole, split),
        "mlp.down_proj.kernel": PartitionSpec(split, whole)}


def test_llamas_mlp_biases_split_with_their_products():
    """Llama's MLP biases (mlp_bias) on a 1x4 mesh: the gate's and the up product's split
    over the model axis as their products' outputs are; the down product's, added to the
    whole residual, is held whole."""
    config = dataclasses.replace(tiny_config(64), mlp_bias=True)
    rules = ShardingRules().for_model(config, AbstractMesh((1, 4), ("data", "model")))
    weights = jax.eval_shape(lambda: nnx.to_pure_dict(
        nnx.state(LlamaModel(config, rngs=nnx.Rngs(0)), nnx.Param)))
    specs = {jax.tree_util.keystr(path, simple=True, separator="."): sharding.spec
             for path, sharding in jax.tree_util.tree_leaves_with_path(
                 weight_shardings(weights, AbstractMesh((1, 4), ("data", "model")), rules))}
    assert {k: v for k, v in specs.items() if k.endswith("bias")} == {
        "layers.mlp.gate_proj.bias": PartitionSpec(None, "model"),
        "layers.mlp.up_proj.bias": PartitionSpec(None, "model"),
        "layers.mlp.down_proj.bias": PartitionSpec(None, None)}


@pytest.fixture
def jax_initialize_calls(monkeypatch) -> list[dict]:
    """The arguments of each jax.distributed.initialize call, in an environment cleared of
    every cluster and JAX_* launch variable."""
    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_", "TPU_", "MEGASCALE_", "JAX_COORDINATOR_ADDRESS",
                            "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")):
            monkeypatch.delenv(name)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    return calls


def test_distributed_settings_come_all_together(jax_initialize_calls):
    assert initialize_distributed() is False  # nothing set: a single-process run
    with pytest.raises(ValueError, match="give coordinator, num_processes and process_id"):
        initialize_distributed(coordinator="localhost:1234")
    with pytest.raises(ValueError, match=r"process_id=2 must lie in \[0, num_processes=2\)"):
        initialize_distributed(coordinator="localhost:1234", num_processes=2, process_id=2)
    with pytest.raises(ValueError, match=r"process_id=-1 must lie in \[0, num_processes=2\)"):
        initialize_distributed(coordinator="localhost:1234", num_processes=2, process_id=-1)
    for address in ("localhost", "localhost:", ":1234", "localhost:port"):
        with pytest.raises(ValueError, match=f"distributed.coordinator='{address}' must be "
                                             "HOST:PORT of process 0, e.g. localhost:1234"):
            initialize_distributed(coordinator=address, num_processes=2, process_id=0)
    assert jax_initialize_calls == []


def test_a_child_imports_the_checkout_before_the_callers_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/site")
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/dump")
    env = local_child_environment(4, REPO)
    assert (env["JAX_PLATFORMS"], env["JAX_NUM_CPU_DEVICES"]) == ("cpu", "4")
    assert env["PYTHONPATH"] == f"{REPO}{os.pathsep}/site"
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/dump"  # the rest of the caller's
    monkeypatch.delenv("PYTHONPATH")
    assert local_child_environment(2, REPO)["PYTHONPATH"] == str(REPO)


SLURM_STEP = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": "2",
              "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
CLUSTERS = {
    "SLURM job 7, a step of 2 tasks": SLURM_STEP,
    "Open MPI job of 4 ranks": {"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:5000",
                                "OMPI_COMM_WORLD_SIZE": "4"},
    "TPU pod slice of 4 hosts": {"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"},
    "TPU pod slice of 2 hosts": {"TPU_PROCESS_ADDRESSES": "t0:8476,t1:8476"},
    "TPU multislice run": {"MEGASCALE_COORDINATOR_ADDRESS": "t0:8080"},
}
ONE_PROCESS = [
    {},
    {**SLURM_STEP, "SLURM_NTASKS": "1"},
    {**SLURM_STEP, "SLURM_STEP_NUM_TASKS": "1"},  # a one-task step of a two-task job
    {key: value for key, value in SLURM_STEP.items() if key != "SLURM_STEP_NODELIST"},  # sbatch
    {"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:5000", "OMPI_COMM_WORLD_SIZE": "1"},
    {"TPU_WORKER_HOSTNAMES": "localhost"},  # a single TPU VM
]


def test_a_multi_process_job_is_read_from_the_environment_and_one_process_is_not():
    for described, env in CLUSTERS.items():
        assert cluster_in_environment(env) == described
    for env in ONE_PROCESS:
        assert cluster_in_environment(env) is None, env
    for name in SLURM_STEP:  # JAX's SLURM detection reads every one of them
        assert cluster_in_environment({k: v for k, v in SLURM_STEP.items() if k != name}) is None


@pytest.mark.parametrize("env, auto_detect, joins", [
    (SLURM_STEP, None, True), ({}, None, False),  # by default: as the environment shows
    (SLURM_STEP, False, False), ({}, True, True),  # or as auto_detect says
])
def test_empty_settings_let_jax_detect_the_cluster_the_environment_shows(
        jax_initialize_calls, monkeypatch, env, auto_detect, joins):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert initialize_distributed(auto_detect=auto_detect, heartbeat_timeout_s=7) is joins
    assert jax_initialize_calls == ([{"heartbeat_timeout_seconds": 7}] if joins else [])


def test_auto_detect_on_a_machine_that_shows_no_job_says_what_to_give(jax_initialize_calls,
                                                                      monkeypatch):
    """JAX's own words on a plain machine ("coordinator_address should be defined") name
    none of the run's settings; within a job the environment shows, JAX's error stands."""
    def refuse(**kwargs):
        raise ValueError("coordinator_address should be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", refuse)
    with pytest.raises(ValueError, match=r"^distributed\.auto_detect=true, but JAX finds no "
                                         r"multi-process job here .* give distributed\."
                                         r"coordinator, num_processes and process_id"):
        initialize_distributed(auto_detect=True)
    for name, value in SLURM_STEP.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="^coordinator_address should be defined.$"):
        initialize_distributed(auto_detect=True)


def test_launch_settings_come_from_the_environment_too(jax_initialize_calls, monkeypatch):
    monkeypatch.setenv("JAX_PROCESS_ID", "one")
    with pytest.raises(ValueError, match="^JAX_PROCESS_ID='one' must be a whole number$"):
        initialize_distributed()
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    with pytest.raises(ValueError, match=r"together \(got \(None, None, 1\)\)"):
        initialize_distributed()
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    assert initialize_distributed(heartbeat_timeout_s=7) is True
    assert initialize_distributed(coordinator="g:2", process_id=0) is True  # arguments win
    assert jax_initialize_calls == [
        {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1,
         "initialization_timeout": 300, "heartbeat_timeout_seconds": 7},
        {"coordinator_address": "g:2", "num_processes": 2, "process_id": 0,
         "initialization_timeout": 300, "heartbeat_timeout_seconds": 100}]


def test_explicit_settings_pass_the_heartbeat_timeout_and_say_whom_they_wait_for(
        jax_initialize_calls, capsys):
    """JAX waits for the others in silence (a wrong address: 5 minutes, then an abort
    blaming a task that died), so the process first says where it joins and how long it
    waits."""
    assert initialize_distributed(coordinator="h:1", num_processes=2, process_id=1,
                                  heartbeat_timeout_s=7) is True
    assert jax_initialize_calls == [{"coordinator_address": "h:1", "num_processes": 2,
                                     "process_id": 1, "initialization_timeout": 300,
                                     "heartbeat_timeout_seconds": 7}]
    assert capsys.readouterr().out == ("[qstar] process 1 of 2: joining the others at h:1 "
                                       "(waiting up to 300 s for all 2)\n")


def test_only_process_0_writes_and_only_several_processes_wait_for_each_other(monkeypatch):
    synced = []
    monkeypatch.setattr(multihost_utils, "sync_global_devices", synced.append)
    monkeypatch.setattr(jax, "process_count", lambda: 1)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    assert is_writer() is True
    barrier("alone")
    assert synced == []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    barrier("results appended")
    assert synced == ["results appended"]
    assert is_writer() is True
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert is_writer() is False


def assert_same_as_one_device(report: dict, meshes: set[str]) -> None:
    """Each mesh's decoding gave one device's; and each mesh's prefill traced for a GPU
    (``prefill_as_on_a_gpu``) gave its logits with no scan, and on several data shards
    moved no cache rows between them (on one, the reader counts the model axis's
    gathers in JAX 0.11's sub-axis notation as crossing: the scan's program has the
    same)."""
    decoded = {name: got for name, got in report.items() if not name.endswith("_gpu_prefill")}
    assert set(decoded) == meshes
    prefilled = {name.removesuffix("_gpu_prefill") for name in report if name not in decoded}
    assert prefilled == {name.split("_")[0] for name in meshes}
    for mesh in prefilled:
        got = report[f"{mesh}_gpu_prefill"]
        assert not got["loops"], (mesh, got)
        assert got["cache_rows"] == 0 or mesh.startswith("1x"), (mesh, got)
        assert got["logits_max_diff"] < 1e-5, (mesh, got)
    for mesh, got in decoded.items():
        assert got["logits_max_diff"] < 1e-5, mesh
        assert got["logprob_max_diff"] < 1e-4, mesh
        assert got["same_tokens"] == {"greedy": True, "hot": True, "uneven": True,
                                      "trie": True}, mesh
        assert not got["recompiled"], mesh


def test_chunks_short_of_spares_on_each_data_shard_sample_the_one_device_trie(
        decoding_on_4_devices):
    """On meshes of several data shards (4x1, 2x2), the trie's chunks given almost no
    spares stop for want of them, shard by shard, and sample the one-device trie."""
    for mesh in ("4x1", "2x2"):
        starved = decoding_on_4_devices[mesh]["starved_trie"]
        assert starved["same"] and starved["starved_calls"] > 0, mesh
    assert "starved_trie" not in decoding_on_4_devices["1x4"]


@pytest.fixture(scope="module")
def one_device_outputs(tmp_path_factory) -> Path:
    """Where the 4-device run of tests.support.sharded_decoding writes its one-device
    outputs, which the two-process run compares its meshes with."""
    return tmp_path_factory.mktemp("decoding") / "one_device.npz"


@pytest.fixture(scope="module")
def decoding_on_4_devices(one_device_outputs) -> dict:
    """tests.support.sharded_decoding's report for meshes 4x1, 2x2 and 1x4."""
    return json.loads(run_child("tests.support.sharded_decoding",
                                str(one_device_outputs)).splitlines()[-1])


def test_decoding_on_meshes_4x1_2x2_1x4_matches_one_device(decoding_on_4_devices):
    report = decoding_on_4_devices
    assert_same_as_one_device(report, {"4x1", "2x2", "1x4", "2x2_paged", "1x4_transposed",
                                       "4x1_row_windows", "4x1_paged_row_windows"})
    # Slots on data; 2 kv heads do not split 4 ways, so they are replicated on 1x4 while
    # the 4 query heads are split.
    assert report["2x2"]["layout"]["cache"] == str(PartitionSpec(None, "data", "model",
                                                                 None, None))
    assert report["1x4"]["layout"]["cache"] == str(PartitionSpec(None, "data", None, None,
                                                                 None))
    assert report["1x4"]["layout"]["q_proj"] == str(PartitionSpec(None, None, "model"))
    assert report["1x4"]["layout"]["k_proj"] == str(PartitionSpec(None, None, None))
    # A per-layer copy with transposed projections: o's rows [embed, heads] split on the
    # heads; q, k and v's fused rows, whose output axis mixes three layouts, replicated.
    assert report["1x4_transposed"]["layout"]["o_proj_rows"] == str(PartitionSpec(None,
                                                                                  "model"))
    assert report["1x4_transposed"]["layout"]["qkv_proj_rows"] == str(PartitionSpec(None,
                                                                                    None))


def test_decoding_keeps_cache_rows_on_their_data_shard(decoding_on_4_devices):
    """New rows spread over the data shards, children and trie steps stay beside their
    parents, and no compiled function moves cache rows between data shards (a fork moves
    nothing at all); the fork jitted over the whole cache by global slot ids, which
    gathers rows across shards, shows the check finds such moves."""
    report = decoding_on_4_devices
    assert report["4x1"]["shards"]["prompts"] == [0, 1, 2, 3]
    assert report["2x2"]["shards"]["prompts"] == [0, 1, 0, 1]
    for mesh in ("4x1", "2x2", "4x1_row_windows"):  # the last: step calls over row windows
        shards, counts = report[mesh]["shards"], report[mesh]["collectives"]
        assert shards["children_beside_parents"] and shards["trie_beside_groups"], mesh
        assert counts["gspmd_fork"]["cache_rows"] > 0, mesh
        for name in ("prefill", "sample_step", "sample_trie", "fork"):
            assert counts[name]["cache_rows"] == 0, (mesh, name)
        assert counts["fork"]["all"] == 0, mesh


@pytest.mark.parametrize("mesh", ["2x2", "4x1"])
def test_a_paged_cache_keeps_its_pages_on_their_data_shard(decoding_on_4_devices, mesh):
    """On 2x2, and on 4x1 with step calls over row windows, the pages split over the data
    shards with the slots: every page a slot holds (forks sharing them, copies on write,
    a trie's splits) lies on the slot's shard, no compiled function moves pages or cache
    rows between data shards (a fork and a page copy move nothing at all), and every page
    goes back; a page copy jitted over the whole cache by global page ids shows the check
    finds such moves."""
    paged = decoding_on_4_devices[mesh + ("_paged" if mesh == "2x2" else "_paged_row_windows")]
    assert paged["shards"] == decoding_on_4_devices[mesh]["shards"]
    assert paged["pages_back"]
    counts = paged["collectives"]
    assert counts["gspmd_copy_pages"]["cache_rows"] > 0
    for name in ("prefill", "sample_step", "sample_trie", "fork", "copy_pages"):
        assert counts[name]["cache_rows"] == 0, (mesh, name)
    assert counts["fork"]["all"] == counts["copy_pages"]["all"] == 0


# Collectives as XLA's CPU compiler prints them for a 2x2 (data, model) mesh (devices
# numbered data-major): which pairs of devices a notation groups, and whether they lie on
# different data shards.
HLO = "\n".join([
    "  %all-reduce.1 = (f32[8,2,64,8]{3,2,1,0}, f32[8,2,64,8]{3,2,1,0}) all-reduce(%a, %b), "
    "channel_id=2, replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_0'}, to_apply=%add",
    "  %all-gather.2 = f32[8,64]{1,0} all-gather(%c), channel_id=3, replica_groups="
    "mesh['axis_0'=1,'axis_1'=2,'axis_2'=2], device_ids=([2,2]T(1,0)) {'axis_1'}, "
    "dimensions={1}",
    "  %all-reduce.3 = f32[1,8,64]{2,1,0} all-reduce(%d), channel_id=4, "
    "replica_groups=[2,2]<=[2,2]T(1,0), use_global_device_ids=true, to_apply=%add",
    "  %all-gather.4 = f32[2,64]{0,1} all-gather(%e), channel_id=5, "
    "replica_groups=[2,2]<=[4], dimensions={1}",
    "  %collective-permute.5 = s32[8,64]{1,0} collective-permute(%f), channel_id=6, "
    "source_target_pairs={{0,2},{2,0}}",
    "  %all-reduce-start.6 = f32[8,32]{1,0} all-reduce-start(%g), channel_id=7, "
    "replica_groups={{0,1},{2,3}}, to_apply=%add",
    "  %all-reduce-done.6 = f32[8,32]{1,0} all-reduce-done(%all-reduce-start.6)",
    "  %get-tuple-element.7 = f32[8,2,64,8]{3,2,1,0} get-tuple-element(%all-reduce.1), "
    "index=0",
    "  ROOT %all-to-all.8 = f32[4,64]{1,0} all-to-all(%h), channel_id=8, "
    "replica_groups=mesh['axis_0'=4] {'axis_0':(1)2}, dimensions={0}",
])


def test_collectives_are_read_in_every_replica_group_notation():
    found = collectives(HLO, num_devices=4)
    assert [c.text.split(" = ")[0].split()[-1] for c in found] == [
        "%all-reduce.1", "%all-gather.2", "%all-reduce.3", "%all-gather.4",
        "%collective-permute.5", "%all-reduce-start.6", "%all-to-all.8"]
    assert [c.groups for c in found] == [
        [[0, 2], [1, 3]], [[0, 1], [2, 3]], [[0, 2], [1, 3]], [[0, 1], [2, 3]],
        [[0, 2], [2, 0]], [[0, 1], [2, 3]], None]
    assert found[0].dims == {8, 2, 64}
    # Across data shards: the first, third and fifth; an unread notation counts as across.
    assert [c.crosses_data(model_size=2) for c in found] == [True, False, True, False, True,
                                                             False, True]
    moving_rows = data_collectives(HLO, dim=64, mesh_shape=(2, 2))
    assert [c.text for c in moving_rows] == [found[i].text for i in (0, 2, 4, 6)]
    assert data_collectives(HLO, dim=32, mesh_shape=(2, 2)) == []


def test_empty_replica_groups_join_every_device_and_operand_shapes_count():
    hlo = "\n".join([
        "  %all-reduce.1 = f32[16,64]{1,0} all-reduce(f32[16,64]{1,0} %a), channel_id=1, "
        "replica_groups={}, to_apply=%add",
        "  %reduce-scatter.2 = f32[8,8]{1,0} reduce-scatter(f32[16,8]{1,0} %b), channel_id=2, "
        "replica_groups={{0,2},{1,3}}, dimensions={0}",
        "  %all-gather.3 = f32[4,32]{1,0} all-gather(f32[4,16]{1,0} %c), channel_id=3, "
        "replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_0','axis_1'}, dimensions={1}",
    ])
    found = collectives(hlo, num_devices=4)
    assert [c.groups for c in found] == [[[0, 1, 2, 3]], [[0, 2], [1, 3]], [[0, 1, 2, 3]]]
    assert [c.dims for c in found] == [{16, 64}, {8, 16}, {4, 16, 32}]
    assert [c.crosses_data(model_size=2) for c in found] == [True, True, True]
    # The reduce-scatter is found by its operand's 16 rows: its result holds 8 of them.
    assert [c.text for c in data_collectives(hlo, dim=16, mesh_shape=(2, 2))] == [
        found[0].text, found[1].text, found[2].text]
    assert [c.text for c in data_collectives(hlo, dim=8, mesh_shape=(2, 2))] == [found[1].text]


def test_every_collective_op_is_found():
    ops = ["all-reduce", "all-gather", "all-to-all", "ragged-all-to-all",
           "collective-broadcast", "collective-permute", "reduce-scatter"]
    hlo = "\n".join(f"  %{op}.{i} = f32[8,64]{{1,0}} {op}(%x), replica_groups={{{{0,2}}}}"
                     for i, op in enumerate(ops))
    hlo += "\n  %all-gather-done.7 = f32[8,64]{1,0} all-gather-done(%all-gather.1)"
    found = collectives(hlo, num_devices=4)
    assert [c.text.split("(")[0].split()[-1] for c in found] == ops
    assert [c.groups for c in found] == [[[0, 2]]] * 7


def test_sharded_q_training_and_checkpoints(tmp_path):
    report = json.loads(run_child("tests.support.sharded_training",
                                  str(tmp_path)).splitlines()[-1])
    for mesh in ("4x1", "2x2"):
        assert report[mesh]["q"] < 1e-6 and report[mesh]["policy"] < 1e-5, mesh
    assert report["round_trip"] == {"equal": True, "shardings_as_target": True}
    # The policy's params, saved from a 2x2 layout, restored onto 1x4's: 4-way vocabulary.
    assert report["policy_round_trip"] == {"equal": True, "shardings_as_target": True,
                                           "embedding_spec": str(PartitionSpec("model", None))}
    assert report["q_head_on_a_mesh"] == {"equal": True, "replicated_on_mesh": True}
    backbone = report["backbone_q_on_a_mesh"]
    assert backbone["equal"] and backbone["replicated_on_mesh"]
    assert backbone["scores_differ_by"] < 1e-6


def test_decoding_over_two_processes_matches_one_device(decoding_on_4_devices,
                                                        one_device_outputs):
    """2 processes x 2 CPU devices (jax.distributed, gloo collectives on localhost): on
    2x2 the data axis spans the processes (also on a paged cache, each process holding
    its shard's pages), on 1x4 the model axis does. Against the one device's outputs
    the 4-device run decoded."""
    port = str(free_local_port())
    outputs = finish([start_child("tests.support.sharded_decoding", port, str(process),
                                  str(one_device_outputs), devices=2) for process in (0, 1)])
    report = json.loads(outputs[0].splitlines()[-1])
    assert_same_as_one_device(report, {"2x2", "1x4", "2x2_paged"})
    assert report["2x2_paged"]["pages_back"]
