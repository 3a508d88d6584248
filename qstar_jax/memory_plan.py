"""What a run's decoder needs in memory, and whether it fits: size a run before renting.

``python -m qstar_jax.memory_plan [CONFIG.yaml] [key=value ...] --memory 80GB
[--model-config config.json] [--page-size 16]`` prints the policy's weights, its KV bytes
per token, the cache the config's slot pool reserves, and, for a paged cache over the
memory left, the pages available and the search rows that fit at full ``max_len``.
``run`` calls ``check_memory`` before any stage and refuses a config that does not fit,
with these figures and the largest ``decode.slots`` that would.

Counted: the policy's weights (twice on CPU, where the decoder also keeps one array per
layer) and the KV cache, per device (weights split over ``mesh.model``, the cache over
both axes). Not counted: activations, Q-hat, a PRM, XLA's scratch; hence HEADROOM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path

import jax
import numpy as np

from qstar_jax.config import SCRATCH, ConfigError, RunConfig, load_config
from qstar_jax.models.config import ModelConfig

HEADROOM = 0.9  # the share of memory the weights and the cache may take
SCRATCH_VOCAB = 256  # a from-scratch policy's character vocabulary is smaller than this
UNITS = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20,
         "GIB": 2**30, "TIB": 2**40}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemoryPlan:
    memory_bytes: int
    weight_bytes: int  # per device, per-layer copy included on CPU
    kv_bytes_per_token: int  # per device
    slot_pool_bytes: int  # the config's slot pool: slots x max_len tokens
    page_size: int
    pages: int  # pages of page_size tokens that fit beside the weights
    rows_at_max_len: int  # rows of max_len tokens those pages hold, no sharing
    largest_slots: int  # the most decode.slots at this max_len that fit

    @property
    def fits(self) -> bool:
        return self.weight_bytes + self.slot_pool_bytes <= HEADROOM * self.memory_bytes

    def describe(self) -> str:
        gb = 1e9
        return (f"memory {self.memory_bytes / gb:.1f} GB (using {HEADROOM:.0%}): weights "
                f"{self.weight_bytes / gb:.2f} GB, KV {self.kv_bytes_per_token / 1e3:.1f} KB "
                f"per token, the slot pool {self.slot_pool_bytes / gb:.2f} GB; a paged cache "
                f"gets {self.pages} pages of {self.page_size} tokens = "
                f"{self.rows_at_max_len} rows at full max_len; the largest decode.slots "
                f"that fits: {self.largest_slots}")


def parameter_count(cfg: ModelConfig) -> int:
    e, d, f = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    attention = e * d * (cfg.num_heads * 2 + cfg.num_kv_heads * 2)
    attention += d * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.attention_bias
    attention += e * cfg.attention_out_bias
    per_layer = attention + 3 * e * f + 2 * e
    embeddings = cfg.vocab_size * e * (1 if cfg.tie_word_embeddings else 2)
    return cfg.num_layers * per_layer + embeddings + e


def plan(cfg: ModelConfig, run: RunConfig, *, memory_bytes: int, on_cpu: bool,
         page_size: int = 16, devices: int = 1) -> MemoryPlan:
    """The figures for ``run``'s decoder over ``cfg`` on ``devices`` devices of
    ``memory_bytes`` each (the mesh's -1 axis takes what the other leaves)."""
    dtype_bytes = np.dtype(run.policy.dtype).itemsize
    model_axis = max(run.mesh.model, 1)
    data_axis = run.mesh.data if run.mesh.data > 0 else max(devices // model_axis, 1)
    weights = parameter_count(cfg) * dtype_bytes * (2 if on_cpu else 1) // model_axis
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * dtype_bytes
    per_token //= model_axis
    decode = run.decode
    held = decode.num_pages * decode.page_size or decode.slots * decode.max_len  # tokens
    pool = held * per_token // data_axis
    left = max(int(HEADROOM * memory_bytes) - weights, 0)
    pages = left // (page_size * per_token)
    return MemoryPlan(memory_bytes=memory_bytes, weight_bytes=weights,
                      kv_bytes_per_token=per_token, slot_pool_bytes=pool, page_size=page_size,
                      pages=pages, rows_at_max_len=pages * page_size // decode.max_len,
                      largest_slots=left * data_axis // (decode.max_len * per_token))


def policy_architecture(run: RunConfig, model_config: str | None = None) -> ModelConfig:
    """The policy's ModelConfig without loading its weights: from ``model_config`` (an HF
    config.json), the checkpoint's config.json or GGUF metadata, or policy_training."""
    from qstar_jax.models.gguf_checkpoint import gguf_config, open_gguf
    from qstar_jax.models.hf_checkpoint import read_hf_config, read_json
    from qstar_jax.models.loading import PACKAGED_MODELS, resolve_alias

    if model_config is not None:
        return ModelConfig.from_hf(read_json(Path(model_config)))
    source = run.policy.source
    if source == SCRATCH:
        pt = run.policy_training
        return ModelConfig(model_type="llama", vocab_size=SCRATCH_VOCAB,
                           hidden_size=pt.hidden_size, intermediate_size=pt.intermediate_size,
                           num_layers=pt.num_layers, num_heads=pt.num_heads,
                           num_kv_heads=pt.num_kv_heads, head_dim=pt.hidden_size // pt.num_heads,
                           tie_word_embeddings=True)
    path = resolve_alias(source) if source in PACKAGED_MODELS else Path(source)
    if path.is_dir():
        return read_hf_config(path)
    return gguf_config(open_gguf(path), path)


def available_memory() -> tuple[int, bool]:
    """(bytes one device can hold, whether it is the host's CPU memory)."""
    device = jax.local_devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]), False
    meminfo = Path("/proc/meminfo")
    available = re.search(r"MemAvailable:\s+(\d+) kB", meminfo.read_text()) \
        if meminfo.is_file() else None
    limits = [int(available.group(1)) * 1024 if available
              else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
    cgroup = Path("/sys/fs/cgroup/memory.max")
    if cgroup.is_file() and cgroup.read_text().strip().isdigit():
        limits.append(int(cgroup.read_text()))
    return min(limits), True


def check_memory(run: RunConfig) -> MemoryPlan:
    """Raise ConfigError, with the figures and the largest decode.slots that fits, unless
    the policy's weights and the slot pool fit the memory the run will have."""
    memory, on_cpu = available_memory()
    figures = plan(policy_architecture(run), run, memory_bytes=memory, on_cpu=on_cpu,
                   devices=jax.device_count())
    if not figures.fits:
        where = "free host memory" if on_cpu else "device memory"
        raise ConfigError(f"decode.slots={run.decode.slots} x decode.max_len="
                          f"{run.decode.max_len} does not fit the {where}: "
                          f"{figures.describe()}")
    return figures


def parse_memory(text: str) -> int:
    """'80GB', '141 GiB', '2e9' -> bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or (unit not in UNITS and unit not in ("", "B")):
        raise ValueError(f"memory {text!r}: give a number with one of {sorted(UNITS)}")
    return int(float(match.group(1)) * UNITS.get(unit, 1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--memory", required=True, help="one device's memory, e.g. 80GB")
    parser.add_argument("--model-config", help="the policy's HF config.json, when its "
                        "checkpoint is not on this machine")
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--cpu", action="store_true", help="size for the CPU backend "
                        "(weights held twice)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.config and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None
    run = load_config(args.config, args.overrides)
    figures = plan(policy_architecture(run, args.model_config), run,
                   memory_bytes=parse_memory(args.memory), on_cpu=args.cpu,
                   page_size=args.page_size)
    print(figures.describe())
    print(json.dumps(dataclasses.asdict(figures) | {"fits": figures.fits}))
    return 0 if figures.fits else 1


if __name__ == "__main__":
    sys.exit(main())
