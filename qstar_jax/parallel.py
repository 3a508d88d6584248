"""Device mesh, logical-axis sharding rules, placement of weights and cache, multi-host
start-up.

One ``jax.sharding.Mesh`` with two axes: ``data`` (independent rows: cache slots, decode
batches, training batches, problems) and ``model`` (a model too large for one device:
vocabulary, attention heads, MLP width). Arrays name their dimensions with logical axes;
``ShardingRules`` maps those to mesh axes, in the style of jax-llm-examples'
``ShardingRules``. A logical axis whose size the mesh axis does not divide (SmolLM2-135M's
3 kv heads on a 2-way model axis) is replicated instead: the jitted code stays correct
under any placement, GSPMD only moves more data. ``data_collectives`` finds, in a compiled
program's HLO text, the collectives that move data between ``data`` shards.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NoReturn

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

if TYPE_CHECKING:  # a type only: the models package loads its weights onto meshes from here
    from qstar_jax.models.config import ModelConfig

DATA, MODEL = "data", "model"
JOIN_TIMEOUT_S = 300  # how long a process waits for the others to start (JAX's default)


class MeshError(ValueError):
    """The mesh asked for cannot be built from the devices there are."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardingRules:
    """Logical axis -> mesh axis (None: replicated)."""

    batch: str | None = DATA
    slots: str | None = DATA
    vocab: str | None = MODEL
    heads: str | None = MODEL
    kv_heads: str | None = MODEL
    mlp: str | None = MODEL
    embed: str | None = None  # no FSDP: decoding would all-gather every weight each token

    def spec(self, *logical: str | None) -> PartitionSpec:
        """PartitionSpec of an array whose dimensions have these logical names (None: a
        dimension that is never sharded)."""
        axes = [None if name is None else getattr(self, name) for name in logical]
        used = [a for a in axes if a is not None]
        if len(used) != len(set(used)):
            raise ValueError(f"logical axes {logical} map two dimensions to one mesh axis "
                             f"({axes})")
        return PartitionSpec(*axes)

    def splits(self, logical: str, mesh: Mesh) -> bool:
        """Whether these rules spread logical axis ``logical`` over more than one device
        of ``mesh``."""
        axis = getattr(self, logical)
        return axis is not None and mesh.shape[axis] > 1

    def for_model(self, config: ModelConfig, mesh: Mesh) -> ShardingRules:
        """These rules with every logical axis the mesh cannot split evenly for ``config``
        replicated."""
        sizes = {"vocab": config.vocab_size, "heads": config.num_heads,
                 "kv_heads": config.num_kv_heads, "mlp": config.intermediate_size}
        return dataclasses.replace(self, **{
            name: None for name, size in sizes.items()
            if getattr(self, name) is not None and size % mesh.shape[getattr(self, name)]})


# The logical axes of each weight, by its module and leaf name (HF layout turned into
# nnx's: kernels are [in, out], a ``RowLinear``'s rows [out, in]). Weights not listed
# (norms, RoPE table, the fused q/k/v rows of a transposed per-layer copy, whose output
# axis mixes three head layouts) are replicated; a leading stacked-layers axis is never
# sharded.
_WEIGHT_AXES = {
    ("embed_tokens", "embedding"): ("vocab", "embed"),
    ("q_proj", "kernel"): ("embed", "heads"), ("q_proj", "bias"): ("heads",),
    ("k_proj", "kernel"): ("embed", "kv_heads"), ("k_proj", "bias"): ("kv_heads",),
    ("v_proj", "kernel"): ("embed", "kv_heads"), ("v_proj", "bias"): ("kv_heads",),
    ("o_proj", "kernel"): ("heads", "embed"), ("o_proj", "rows"): ("embed", "heads"),
    ("gate_proj", "kernel"): ("embed", "mlp"), ("up_proj", "kernel"): ("embed", "mlp"),
    ("gate_proj", "bias"): ("mlp",), ("up_proj", "bias"): ("mlp",),
    ("down_proj", "kernel"): ("mlp", "embed"),
    ("lm_head", "kernel"): ("embed", "vocab"),
}


def make_mesh(data: int = -1, model: int = 1, *, devices: Sequence[jax.Device] | None = None
              ) -> Mesh:
    """A (data, model) mesh over ``devices`` (default: every device of every process);
    ``data = -1`` takes all the devices the model axis leaves. Raises MeshError, before
    anything is loaded, when the sizes do not multiply to the device count."""
    devices = list(jax.devices() if devices is None else devices)
    data, model = mesh_shape(data, model, len(devices))
    # Auto axes, said explicitly: jax.make_mesh defaults to Explicit, which would make
    # every jitted function spell out its shardings instead of letting GSPMD propagate.
    return jax.make_mesh((data, model), (DATA, MODEL), devices=devices,
                         axis_types=(AxisType.Auto, AxisType.Auto))


def mesh_shape(data: int, model: int, count: int) -> tuple[int, int]:
    """The (data, model) sizes ``make_mesh`` builds over ``count`` devices (``data = -1``:
    what the model axis leaves); MeshError when they cannot be."""
    if model < 1 or (data < 1 and data != -1):
        raise MeshError(f"mesh sizes must be >= 1 (data may be -1), got data={data} "
                        f"model={model}")
    if data == -1:
        if count % model:
            raise MeshError(f"mesh.model={model} does not divide the {count} devices; choose "
                            f"a divisor of {count}")
        data = count // model
    if data * model != count:
        raise MeshError(f"mesh data={data} x model={model} needs {data * model} devices, but "
                        f"there are {count}; set mesh.data=-1 to use every device")
    return data, model


def check_slots(mesh: Mesh, slots: int) -> None:
    """The slot pool is split evenly over ``data``."""
    check_cache_split(mesh.shape[DATA], slots=slots)


def check_cache_split(data_shards: int, *, slots: int, pages: int = 0) -> None:
    """The slot pool, and a paged cache's pages (0: none), split evenly over
    ``data_shards``: what ``run`` checks of its mesh and ``memory_plan`` of the devices
    it is told of."""
    if slots % data_shards:
        raise MeshError(f"decode.slots={slots} does not split over the {data_shards} "
                        f"data shards; make it a multiple of {data_shards}")
    if pages % data_shards:
        raise MeshError(f"decode.pages: {pages} pages do not split over the {data_shards} "
                        f"data shards; make it a multiple of {data_shards}")


def weight_shardings(weights, mesh: Mesh, rules: ShardingRules):
    """A NamedSharding for every array of a model-state pytree (nnx State, or a tuple
    holding them), from ``_WEIGHT_AXES``."""
    def sharding(path, leaf):
        names = [getattr(k, "key", None) for k in path]
        names = [n for n in names if isinstance(n, str)]
        logical = _WEIGHT_AXES.get(tuple(names[-2:]), ())
        logical = (None,) * (leaf.ndim - len(logical)) + tuple(logical)
        return NamedSharding(mesh, rules.spec(*logical))
    return jax.tree_util.tree_map_with_path(sharding, weights)


def place(tree, shardings):
    """``tree``'s arrays laid out as ``shardings`` says. Works across processes: each
    process fills the shards of its own devices from its (identical) host copy, and an
    array already spread over several processes (restored onto a mesh) moves between
    layouts where it lies, as no process holds it whole."""
    def put(x, sharding):
        if sharding.is_fully_addressable or not getattr(x, "is_fully_addressable", True):
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.tree.map(put, tree, shardings)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree, mesh: Mesh):
    """``tree``'s arrays copied whole onto every device of ``mesh``."""
    return place(tree, jax.tree.map(lambda _: replicated(mesh), tree))


def shard_rows(tree, mesh: Mesh | None, rules: ShardingRules = ShardingRules()):
    """Inside a jitted function: each array's leading axis (a batch's rows) split over
    the ``batch`` mesh axis, so each device computes on its own rows and GSPMD sums the
    gradients. Arrays whose rows the axis does not divide (a small last label set) are
    left whole, as is everything without a mesh: the same result, computed on every
    device."""
    if mesh is None or rules.batch is None:
        return tree
    shards = mesh.shape[rules.batch]

    def constrain(x):
        if x.shape[0] % shards:
            return x
        return jax.lax.with_sharding_constraint(
            x, NamedSharding(mesh, rules.spec("batch", *(None,) * (x.ndim - 1))))
    return jax.tree.map(constrain, tree)


def initialize_distributed(*, coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, auto_detect: bool | None = None,
                           heartbeat_timeout_s: int = 100) -> bool:
    """Join a multi-process run with ``jax.distributed.initialize`` before anything touches
    a device; returns whether it did. The three settings come from the arguments, else
    from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID. With none of them
    set, JAX's own detection joins the cluster that ``cluster_in_environment`` sees
    (``auto_detect``: True always asks JAX, False never; a plain machine cannot be
    asked, as JAX raises there). ``heartbeat_timeout_s``: how long a process may fall
    silent before JAX's coordination service stops every other process with an error
    naming it, so a run whose process died ends instead of hanging in a collective."""
    env = os.environ
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in env:
        num_processes = _whole_number(env, "JAX_NUM_PROCESSES")
    if process_id is None and "JAX_PROCESS_ID" in env:
        process_id = _whole_number(env, "JAX_PROCESS_ID")
    given = (coordinator, num_processes, process_id)
    if all(v is None for v in given):
        cluster = cluster_in_environment(env)
        detect = cluster is not None if auto_detect is None else auto_detect
        if detect:
            try:
                jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_s)
            except ValueError as error:  # e.g. "coordinator_address should be defined"
                if cluster is not None:
                    raise
                raise ValueError(
                    "distributed.auto_detect=true, but JAX finds no multi-process job here "
                    "(no SLURM step of several tasks, Open MPI job or TPU pod slice); give "
                    "distributed.coordinator, num_processes and process_id, or leave "
                    f"auto_detect unset (JAX: {error})") from None
        return detect
    if any(v is None for v in given):
        raise ValueError("distributed: give coordinator, num_processes and process_id "
                         f"together (got {given}), or none of them to detect the cluster")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"distributed.process_id={process_id} must lie in "
                         f"[0, num_processes={num_processes})")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():  # JAX would fail deep inside with an IndexError
        raise ValueError(f"distributed.coordinator={coordinator!r} must be HOST:PORT of "
                         "process 0, e.g. localhost:1234")
    # JAX waits for every process in silence, then aborts blaming a task that "died".
    print(f"[qstar] process {process_id} of {num_processes}: joining the others at "
          f"{coordinator} (waiting up to {JOIN_TIMEOUT_S} s for all {num_processes})",
          flush=True)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=JOIN_TIMEOUT_S,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
    return True


def _whole_number(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"{name}={env[name]!r} must be a whole number") from None


def cluster_in_environment(env: Mapping[str, str]) -> str | None:
    """The multi-process job the environment shows, as JAX's detection would find it
    (None: none): a SLURM job step of several tasks, an Open MPI job of several ranks, a
    TPU pod slice of several hosts, a TPU multislice run. One task, one rank or one TPU
    VM reads as none: a single process must not wait for peers that never come."""
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
             "SLURM_LOCALID")  # what JAX's SLURM detection reads
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
    if all(name in env for name in slurm) and tasks > 1:
        return f"SLURM job {env['SLURM_JOB_ID']}, a step of {tasks} tasks"
    ranks = int(env.get("OMPI_COMM_WORLD_SIZE", "1"))
    if "OMPI_MCA_orte_hnp_uri" in env and ranks > 1:
        return f"Open MPI job of {ranks} ranks"
    hosts = (env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_PROCESS_ADDRESSES") or "").split(",")
    if len(hosts) > 1:
        return f"TPU pod slice of {len(hosts)} hosts"
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "TPU multislice run"
    return None


def local_child_environment(devices: int, checkout) -> dict[str, str]:
    """The environment of a child process on this machine that sees ``devices`` CPU
    devices and imports ``checkout`` first, then the caller's PYTHONPATH (packages
    installed beside the interpreter's): how the multi-device and multi-process checks
    run without an accelerator."""
    python_path = os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices),
            "PYTHONPATH": python_path}


def free_local_port() -> int:
    """A TCP port on localhost that is free now (for a local ``jax.distributed`` run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_writer() -> bool:
    """Whether this process writes the run's shared outputs (process 0 of a multi-process
    run; every single-process run)."""
    return jax.process_index() == 0


def leave_at_once(code: int) -> NoReturn:
    """Exit with status ``code`` without waiting for the other processes of a
    multi-process run. Exiting the usual way, a process first waits in JAX's shutdown
    barrier (up to 300 s) for the others; one that failed on its own would wait there for
    processes that wait on it in their next collective, and all would hang until one of
    them gave up. Gone, it fails their collective (on CPUs at once), or JAX's coordination
    service stops them once it has been silent for the heartbeat timeout. What a run wrote
    is whole already (appended lines, atomic files); only the standard streams need
    flushing. In a single-process run: ``sys.exit(code)``."""
    if jax.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def barrier(name: str) -> None:
    """Wait until every process gets here (no-op in a single-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


_COLLECTIVE = re.compile(
    r"^\s*(?:ROOT )?\S+ = (?P<shape>.*?) (?P<op>all-reduce|all-gather|all-to-all|"
    r"ragged-all-to-all|collective-broadcast|collective-permute|reduce-scatter)(?:-start)?"
    r"\((?P<operands>[^)]*)\)(?P<attributes>.*)$", re.MULTILINE)
_DIMS = re.compile(r"\[([\d,]*)\]")
_LIST_GROUPS = re.compile(r"(?:replica_groups|source_target_pairs)=\{((?:\{[\d,]*\},?)*)\}")
_IOTA_GROUPS = re.compile(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?")
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\((.*?)\))? "
                          r"\{([^}]*)\}")


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective instruction of an HLO module. dims: the sizes of every dimension of
    its result and operand shapes; groups: the device ids that exchange data, one list per
    group (None: a notation this parser does not read)."""

    text: str
    dims: frozenset[int]
    groups: list[list[int]] | None

    def crosses_data(self, model_size: int) -> bool:
        """Whether a group spans devices of several ``data`` shards, on a (data, model) mesh
        whose devices are numbered data-major (``make_mesh``'s). Unread groups count as
        spanning: a check built on this errs towards finding too much."""
        if self.groups is None:
            return True
        return any(len({device // model_size for device in group}) > 1
                   for group in self.groups)


def collectives(hlo_text: str, num_devices: int) -> list[Collective]:
    """Every collective instruction (an async one by its start) of an HLO module's text,
    e.g. ``jitted.lower(...).compile().as_text()``, over ``num_devices`` devices."""
    found = []
    for match in _COLLECTIVE.finditer(hlo_text):
        dims = {int(d) for shape in _DIMS.findall(match["shape"] + match["operands"])
                for d in shape.split(",") if d}
        found.append(Collective(text=match[0].strip(), dims=frozenset(dims),
                                groups=_device_groups(match["attributes"], num_devices)))
    return found


def data_collectives(hlo_text: str, *, dim: int, mesh_shape: tuple[int, int]) -> list[Collective]:
    """The collectives of an HLO module compiled for a (data, model) mesh of ``mesh_shape``
    that move arrays with a dimension of size ``dim`` between ``data`` shards (with ``dim``
    the cache length: K/V rows leaving their shard)."""
    data, model = mesh_shape
    return [c for c in collectives(hlo_text, data * model)
            if dim in c.dims and c.crosses_data(model)]


def _device_groups(attributes: str, num_devices: int) -> list[list[int]] | None:
    """The device groups of a collective's attributes in any of HLO's notations: explicit
    lists (also a collective-permute's source-target pairs), iota ``[groups,size]<=[dims]
    T(perm)``, or mesh axes ``mesh['a'=2,'b'=2], device_ids=(...) {'a'}``."""
    if match := _LIST_GROUPS.search(attributes):
        groups = [[int(d) for d in g.split(",") if d]
                  for g in re.findall(r"\{([\d,]*)\}", match[1])]
        return groups or [list(range(num_devices))]  # {}: all devices together
    if match := _IOTA_GROUPS.search(attributes):
        devices = _iota(match[3], match[4])
        return devices.reshape(int(match[1]), int(match[2])).tolist()
    if match := _MESH_GROUPS.search(attributes):
        return _mesh_axes_groups(*match.groups())
    return None


def _mesh_axes_groups(axes: str, device_ids: str | None, grouped: str
                      ) -> list[list[int]] | None:
    """Groups along the ``grouped`` named axes of a mesh of devices (iota by default)."""
    sizes = dict(re.findall(r"'([^']+)'=(\d+)", axes))
    names = re.findall(r"'([^']+)'", grouped)
    if not names or re.search(r"[:(]", grouped) or set(names) - set(sizes):
        return None  # sub-axes: not read
    devices = np.arange(math.prod(map(int, sizes.values())))
    if device_ids is not None:
        match = re.fullmatch(r"\[([\d,]+)\](?:T\(([\d,]+)\))?", device_ids)
        if match is None:
            return None
        devices = _iota(match[1], match[2])
    order = list(sizes)
    devices = devices.reshape([int(sizes[n]) for n in order])
    kept = [order.index(n) for n in order if n not in names]
    devices = devices.transpose(kept + [order.index(n) for n in names])
    return devices.reshape(-1, math.prod(int(sizes[n]) for n in names)).tolist()


def _iota(dims: str, perm: str | None) -> np.ndarray:
    """The flat device order of an iota tile assignment ``[dims]T(perm)``."""
    shape = [int(d) for d in dims.split(",")]
    devices = np.arange(math.prod(shape)).reshape(shape)
    if perm:
        devices = devices.transpose([int(p) for p in perm.split(",")])
    return devices.reshape(-1)
