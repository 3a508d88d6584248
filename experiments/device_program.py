"""What XLA makes of the decoder's token loop for a GPU or TPU, compiled here, where there
is neither.

JAX's CUDA plugin and libtpu compile for compile-only devices (``jax.experimental.
topologies``): a GPU that a target description stands for
(``experiments/gpu_targets/h200.txtpb``, an H200's compute capability 9.0, SM count,
memory and bandwidth written as XLA's target configs are), or one chip of a TPU
generation (``--target v4|v5e|v5p|v6e``). This builds bench_decode's random-weight Llama
(``--random-llama``, bfloat16) and a decoder for it on the CPU, runs one short step call
(so the decoder holds the call's arguments), traces that call's token loop again for
the target (its paged-attention kernel, ``qstar_kernels.compiling_for``), compiles it
for the device (``Decoder.compiled``) and reads the optimized HLO: the kernels one token
launches (the fusions and custom calls of the loop's body, a conditional counted by its
larger branch), those per layer, how many of each kind (``device_trace.describe``: what
a fusion computes, reads and writes), the bytes a token's products write to memory on
their way (loop fusions lowered from ``dot_general`` that write 1 MiB or more: a product
XLA computes as a multiply, stores, and reduces in another kernel), and the bytes its
fusions only copy (1 MiB or more: on a GPU, a layer's weights copied out of the stacked
layers). It also serializes the executable and names the GPU architectures its code is
for: XLA:GPU compiles every kernel to machine code even for a compile-only device, so a
Pallas kernel in the loop (``--attention pallas``) has gone through Triton's own
compiler once this prints sm_90; on a TPU, Mosaic's compiler in libtpu has compiled the
TPU kernel once the loop compiles.

What it does not show: how long anything takes. Nothing runs, and XLA picks its matrix
products' tilings without autotuning (which times candidates on the device). The fusions,
their count and what each reads and writes are XLA's own (the same passes run), their
speed is not; the device runs (``device_checks.sh``) time them on a GPU. On a TPU, whose
scalar unit runs the loop's bookkeeping outside fusions, the kernel count is the fusions'
and custom calls' alone.

``--functions`` compiles more of the decoder's jitted functions than the step loop:
"sample_trie" (a trie round's kernels: a token for each of its rows), and "prefill",
"fork" and, on pages, "copy_pages" (a call's kernels, a loop's counted as often as it
runs). The short calls on the CPU then also fork each row, continue the child's prompt
(``prefill(..., starts=...)``: on pages, a copy of the shared partly filled page) and
sample a two-step trie after it, so every function named has been called once. A
function that does not compile for the target is reported with XLA's or Triton's error
and the script exits 1: the check that every kernel the search can reach builds for the
device, not only the step loop's.

    python experiments/device_program.py [--random-llama 1b] [--batches 1 8]
        [--layer-weights per-layer per-layer-transposed] [--page-size 0]
        [--attention jnp|pallas] [--target h200|v5e|...|cpu] [--top 12]
        [--functions sample_step sample_trie prefill fork copy_pages]

Needs this JAX version's CUDA plugin or libtpu on the path: ``make gpu-program`` installs
jax-cuda12-plugin and jax-cuda12-pjrt into .cuda_plugin/ and runs this with it (with
JAX_SKIP_CUDA_CONSTRAINTS_CHECK set: there is no CUDA runtime to check), ``make
tpu-program`` the libtpu that ``jax[tpu]`` pins into .libtpu/ (with TPU_WORKER_HOSTNAMES
set to this machine). ``--target cpu`` compiles for this machine's CPU instead (what the
test runs).

Prints each setting's kernels and, as its last line, JSON: {"target", "model",
"page_size", "attention", "runs": [{"function", "layer_weights", "batch",
"kernels_per_token" (per call for a function without a token loop), "kernels_per_layer",
"products_written_mb_per_token", "copies_written_mb_per_token", "custom_calls": {target:
calls per token}, "machine_code": {"bytes", "gpu_code_for"}, "kinds": {description:
kernels per token, the --top most frequent}} or {"function", "layer_weights", "batch",
"error"}]}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench_decode import RANDOM_LLAMAS
from device_trace import Fusion, computation_lines, describe, parse_fusions
from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.paged_cache import Paging
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.models.config import ModelConfig
from qstar_jax.models.llama import LlamaModel
from qstar_kernels import compiling_for

TARGETS = Path(__file__).parent / "gpu_targets"
# A TPU generation and the smallest topology libtpu describes for it (one chip is used).
TPU_TOPOLOGIES = {"v4": "v4:2x2x1", "v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}
# The decoder's jitted functions (``Decoder.compiled``); the first two run a token loop.
FUNCTIONS = ("sample_step", "sample_trie", "prefill", "fork", "copy_pages")
TOKEN_LOOPS = ("sample_step", "sample_trie")
_DATA_MOVEMENT = {"copy", "dynamic-slice", "slice", "reshape", "transpose"}
PRODUCT_BYTES = 1 << 20  # a materialized product: a loop fusion from dot_general this big
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
          "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_CUSTOM_CALL = re.compile(
    r'%?([\w.\-]+) = [^\n]*? custom-call\([^\n]*?custom_call_target="([^"]+)"')
_CALL = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? (fusion|custom-call|conditional|while)\(")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--random-llama", choices=sorted(RANDOM_LLAMAS), default="1b")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--layer-weights", nargs="+",
                        default=["per-layer", "per-layer-transposed"])
    parser.add_argument("--page-size", type=int, default=0,
                        help="tokens per page of a paged cache (0: row slots)")
    parser.add_argument("--attention", choices=["jnp", "pallas"], default="jnp",
                        help="on pages, the decode step's attention: the jnp path or the "
                             "target's Pallas kernel (the short call on this CPU runs it "
                             "in interpret mode; the target's program has the kernel)")
    parser.add_argument("--target", default="h200",
                        help="a GPU described in experiments/gpu_targets/ (without .txtpb), "
                             f"a TPU ({', '.join(TPU_TOPOLOGIES)}), or cpu: this machine's "
                             "CPU")
    parser.add_argument("--top", type=int, default=12, help="kinds of kernel listed per run")
    parser.add_argument("--functions", nargs="+", choices=FUNCTIONS, default=["sample_step"],
                        help="the decoder's jitted functions to compile (copy_pages: on "
                             "pages only)")
    args = parser.parse_args()
    if args.top < 1:
        parser.error(f"--top must be at least 1, got {args.top}")
    if "copy_pages" in args.functions and not args.page_size:
        parser.error("copy_pages copies pages: give --page-size too")
    return args


def target_device(name: str) -> jax.Device:
    """The device to compile for: a compile-only GPU of the named description or TPU of
    the named generation, or CPU."""
    if name == "cpu":
        return jax.devices("cpu")[0]
    from jax.experimental import topologies
    description = TARGETS / f"{name}.txtpb"
    if name not in TPU_TOPOLOGIES and not description.exists():
        raise SystemExit(f"no target {name!r}: the GPU descriptions are "
                         f"{sorted(p.stem for p in TARGETS.glob('*.txtpb'))}, the TPUs "
                         f"{sorted(TPU_TOPOLOGIES)}")
    try:
        if name in TPU_TOPOLOGIES:
            topology = topologies.get_topology_desc(topology_name=TPU_TOPOLOGIES[name],
                                                    platform="tpu")
        else:
            topology = topologies.get_topology_desc(
                platform="cuda", target_config=description.read_text(), topology="1x1x1")
    except Exception as error:  # the plugin missing, or a JAX without compile-only devices
        raise SystemExit(f"cannot compile for {name} here ({error}): `make gpu-program` "
                         "and `make tpu-program` install this JAX's CUDA plugin or libtpu "
                         "and run this script with it")
    return topology.devices[0]


@contextlib.contextmanager
def tracing_for(device: jax.Device):
    """Trace for ``device`` rather than this CPU: the paged attention the target's
    platform takes (``compiling_for``), and the device Pallas' lowering rules ask about
    (an abstract device of its kind)."""
    abstract = jax.sharding.AbstractDevice(device_kind=device.device_kind,
                                           num_cores=getattr(device, "num_cores", 1),
                                           platform=device.platform)
    # Auto: a mesh of Explicit axes (JAX 0.11's default) would type every array's sharding.
    mesh = jax.sharding.AbstractMesh((1,), ("device",), abstract_device=abstract,
                                     axis_types=(jax.sharding.AxisType.Auto,))
    with compiling_for(device.platform), jax.sharding.use_abstract_mesh(mesh):
        yield


def array_bytes(shape: str) -> int:
    """Bytes of an HLO shape ("bf16[8,2048]{1,0}", or a tuple of them)."""
    return sum(_BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d]))
               for dtype, dims in _ARRAY.findall(shape))


def trip_count(while_line: str, bodies: dict[str, list[str]]) -> int:
    """How many times a while loop runs its body: the count XLA annotates (XLA:GPU), or
    the bound its condition compares a counter from 0 against (a scan over the layers on
    XLA:TPU, which annotates none); 1 where neither says."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', while_line)
    if known:
        return int(known.group(1))
    condition = bodies.get(re.search(r"condition=%?([\w.\-]+)", while_line).group(1), [])
    constants = dict(re.findall(r"%([\w.\-]+) = s32\[\][^ ]* constant\((\d+)\)",
                                "\n".join(condition)))
    for line in condition:
        bound = re.search(r"compare\(%[\w.\-]+, %([\w.\-]+)\), direction=LT", line)
        if bound and bound.group(1) in constants:
            return int(constants[bound.group(1)])
    return 1


def kernels(body: str, bodies: dict[str, list[str]]) -> list[str]:
    """The kernels a run of computation ``body`` launches: its fusions and custom calls,
    a conditional's larger branch, a nested loop's body as many times as it runs."""
    launched = []
    for line in bodies[body]:
        call = _CALL.match(line)
        if call is None:
            continue
        name, opcode = call.groups()
        if opcode in ("fusion", "custom-call"):
            launched.append(name)
        elif opcode == "conditional":
            branches = re.findall(r"(?:true|false)_computation=%?([\w.\-]+)", line) or \
                re.findall(r"%?([\w.\-]+)", re.search(r"branch_computations=\{([^}]*)\}",
                                                       line).group(1))
            launched += max((kernels(branch, bodies) for branch in branches), key=len)
        else:  # a while loop inside the token's: the scan over stacked layers
            launched += kernels(re.search(r"body=%?([\w.\-]+)", line).group(1),
                                bodies) * trip_count(line, bodies)
    return launched


def call_kernels(hlo_text: str) -> list[str]:
    """The kernels one run of the module's entry computation launches."""
    bodies = computation_lines(hlo_text)
    entry = re.search(r"^ENTRY %?([\w.\-]+) ", hlo_text, re.MULTILINE)
    if entry is None:
        raise ValueError("the module has no ENTRY computation")
    return kernels(entry.group(1), bodies)


def token_loop_kernels(hlo_text: str) -> list[str]:
    """The kernels of the module's busiest while loop's body: one token's."""
    bodies = computation_lines(hlo_text)
    loop_bodies = re.findall(r"while\(.*?body=%?([\w.\-]+)", hlo_text)
    if not loop_bodies:
        raise ValueError("the program has no while loop: not a token loop")
    return max((kernels(body, bodies) for body in loop_bodies), key=len)


def writes_a_product(fusion: Fusion) -> bool:
    """A loop fusion that stores the elementwise part of a matrix product (1 MiB or more)
    for another kernel to reduce: not a product itself (a dot), not a reduction, and not
    an update of a buffer in place (the cache write: its root a scatter or a
    dynamic-update-slice). XLA:TPU writes its products as convolutions."""
    return ("dot_general" in fusion.sources and not {"dot", "convolution"} & set(fusion.opcodes)
            and fusion.root not in ("reduce", "dynamic-update-slice", "scatter")
            and array_bytes(fusion.shape) >= PRODUCT_BYTES)


def copies_an_array(fusion: Fusion) -> bool:
    """A fusion that only moves data (1 MiB or more) into the device's main memory: a
    layer's weights sliced out of the stacked layers into a buffer of their own, where
    the products could have read them in place. A move into another memory space (XLA:
    TPU's prefetch into on-chip memory, marked S(n) in the layout) is not one."""
    return (set(fusion.opcodes) <= _DATA_MOVEMENT and "S(" not in fusion.shape
            and array_bytes(fusion.shape) >= PRODUCT_BYTES)


def analyse(hlo_text: str, num_layers: int, per_token: bool = True) -> dict:
    """One token's kernels in ``hlo_text`` (a token loop's optimized HLO), counted; with
    ``per_token`` False, one call's."""
    fusions = parse_fusions(hlo_text)
    launched = token_loop_kernels(hlo_text) if per_token else call_kernels(hlo_text)
    targets = dict(_CUSTOM_CALL.findall(hlo_text))
    kinds = Counter(describe(fusions[name]) if name in fusions
                    else f"custom call {targets.get(name, '')}".strip() for name in launched)
    products = sum(array_bytes(fusions[name].shape) for name in launched
                   if name in fusions and writes_a_product(fusions[name]))
    copies = sum(array_bytes(fusions[name].shape) for name in launched
                 if name in fusions and copies_an_array(fusions[name]))
    custom_calls = Counter(targets.get(name, "?") for name in launched if name not in fusions)
    return {"kernels_per_token": len(launched),
            "kernels_per_layer": round(len(launched) / num_layers, 2),
            "products_written_mb_per_token": round(products / 1e6, 1),
            "copies_written_mb_per_token": round(copies / 1e6, 1),
            "custom_calls": dict(custom_calls.most_common()),
            "kinds": dict(kinds.most_common())}


ARCHITECTURE = re.compile(rb"(?<![0-9A-Za-z_])sm_[0-9]{2,3}a?(?![0-9A-Za-z_])")


def machine_code(compiled: jax.stages.Compiled) -> dict:
    """What the executable holds once serialized: its bytes and the GPU architectures it
    has code for (the sm_XX its cubins name, two or three digits and a whole word, so
    that a compressed stretch spelling "sm_9" is not read as one; none on a CPU), or
    why JAX could not serialize it."""
    try:
        from jax.experimental.serialize_executable import serialize
        blob = serialize(compiled)[0]
    except Exception as error:  # a backend or JAX version that cannot
        return {"bytes": None, "error": f"{type(error).__name__}: {error}"[:200]}
    return {"bytes": len(blob),
            "gpu_code_for": sorted({arch.decode() for arch in ARCHITECTURE.findall(blob)})}


def called_decoder(model: LlamaModel, layer_weights: str, batch: int, page_size: int,
                   attention: str = "jnp", functions: tuple[str, ...] = ("sample_step",)
                   ) -> Decoder:
    """A decoder for ``model`` (on pages of ``page_size`` tokens read by ``attention``; 0:
    row slots) after a short call of each of ``functions`` for ``batch`` rows on the
    CPU: a prefill and a two-token step call, and for the others a fork of each row,
    the child's prompt continued and a two-step trie after it."""
    cfg = model.config
    max_len = 256
    rows = batch if set(functions) <= {"sample_step"} else 3 * batch
    paging = None if not page_size else Paging(
        page_size=page_size, num_pages=rows * -(-max_len // page_size), attention=attention)
    # Gathering rows' windows, as a GPU or TPU runs the step loop ("auto" copies them
    # only on a CPU, where these calls run).
    decoder = Decoder(model, num_slots=rows, max_len=max_len,
                      newline_table=np.zeros(cfg.vocab_size, bool), eos_ids=[],
                      layer_weights=layer_weights, paging=paging, row_windows=False)
    prompt = [3, 5, 7, 9] * 8 + [11]  # on 16-token pages the last one partly filled
    slots = decoder.allocate(batch)
    decoder.prefill(slots, [prompt] * batch)
    keys = jax.random.split(jax.random.key(0), batch)
    decoder.sample_steps(slots, problem_keys=keys, node_ids=[0] * batch,
                         params=SamplingParams.make(batch), max_tokens=2)
    if rows > batch:
        children = decoder.allocate(batch)
        decoder.fork(slots, children)
        decoder.prefill(children, [[13, 15]] * batch, starts=decoder.lengths(children))
        decoder.sample_trie(children, [2] * batch, decoder.allocate(batch, near=children),
                            key_table=keys, key_rows=range(batch), group_ids=[1] * batch,
                            params=SamplingParams.make(batch, temperature=1.0),
                            max_tokens=2)
    return decoder


def main() -> None:
    args = parse_args()
    if args.attention == "pallas" and not args.page_size:
        raise SystemExit("--attention pallas reads pages: give --page-size too")
    device = target_device(args.target)
    cfg = ModelConfig.from_hf(RANDOM_LLAMAS[args.random_llama])
    # One model for every setting: each decoder makes its own per-layer copy of it.
    model = LlamaModel(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    cache = f"{args.page_size}-token pages ({args.attention})" if args.page_size else "row slots"
    print(f"random-weight Llama ({args.random_llama}), bfloat16, on {cache}, its "
          f"{', '.join(args.functions)} compiled for {device.device_kind} ({args.target}) "
          f"on this machine: one token's kernels (a call's, for a function without a token "
          f"loop)")
    runs = []
    for layer_weights in args.layer_weights:
        for batch in args.batches:
            decoder = called_decoder(model, layer_weights, batch, args.page_size,
                                     args.attention, tuple(args.functions))
            for function in args.functions:
                runs.append(report(decoder, function, layer_weights, batch, device,
                                   cfg.num_layers, args.top))
    print(json.dumps({"target": args.target, "model": args.random_llama,
                      "page_size": args.page_size, "attention": args.attention,
                      "runs": runs}))
    if any("error" in run for run in runs):
        raise SystemExit(1)


def report(decoder: Decoder, function: str, layer_weights: str, batch: int,
           device: jax.Device, num_layers: int, top: int) -> dict:
    """``function`` of ``decoder`` compiled for ``device`` (traced again for its platform:
    its Pallas kernels where the CPU's calls interpreted them), its kernels printed and
    returned as a run's figures, or the error that stopped it."""
    name = f"{function}, {layer_weights}, batch {batch}"
    try:
        with tracing_for(device):  # the abstract mesh is part of jit's trace context
            compiled = decoder.compiled(function, device)
    except Exception as error:  # XLA's or Triton's: reported, the other runs go on
        message = f"{type(error).__name__}: {error}"
        print(f"{name}: DOES NOT COMPILE: {message[:2000]}")
        return {"function": function, "layer_weights": layer_weights, "batch": batch,
                "error": message[:2000]}
    per_token = function in TOKEN_LOOPS
    figures = analyse(compiled.as_text(), num_layers, per_token)
    kinds = dict(list(figures.pop("kinds").items())[:top])
    code = machine_code(compiled)
    unit = "a token" if per_token else "a call"
    print(f"{name}: {figures['kernels_per_token']} kernels {unit} "
          f"({figures['kernels_per_layer']} a layer), products written "
          f"{figures['products_written_mb_per_token']} MB {unit}, copies "
          f"{figures['copies_written_mb_per_token']} MB; executable "
          + (f"{code['bytes'] / 1e6:.1f} MB, GPU code for "
             f"{', '.join(code['gpu_code_for']) or 'none'}" if code["bytes"]
             else f"not serialized ({code['error']})"))
    print(f"  custom calls {unit}: " + (", ".join(
        f"{count}x {target}" for target, count in figures["custom_calls"].items()) or "none"))
    for kind, count in kinds.items():
        print(f"  {count:5d}x {kind[:200]}")
    return {"function": function, "layer_weights": layer_weights, "batch": batch, **figures,
            "machine_code": code, "kinds": kinds}


if __name__ == "__main__":
    main()
