"""What a run needs in memory, and whether it fits: size a run before renting.

``python -m qstar_jax.memory_plan [CONFIG.yaml] [key=value ...] --memory 80GB
[--model-config config.json] [--prm-config config.json] [--q-config config.json]
[--page-size 16] [--prompt-tokens 768] [--devices 8]`` prints the weights of every model
the evaluate stage holds on the device (the policy; a Math-Shepherd PRM for
``search.utility=prm``; Q̂'s own model, ``q_train.separate_model`` or a
``q_train.second_opinion`` checkpoint), the policy's KV bytes per token, the cache the
config reserves, and, for a paged cache over the memory left, the pages available, the
rows of full ``max_len`` they hold, the pages one search peaks at and the searches
(problems in flight) they hold. A model whose checkpoint is not on this machine needs
its HF ``config.json`` (``--model-config`` for the policy, ``--prm-config``,
``--q-config``); configs/architectures/ ships those of the paper configs' models.
``run`` calls ``check_memory`` before any stage and refuses a config that does not fit,
with these figures and the largest ``decode.slots`` (or, on pages, ``decode.pages``)
that would.

Counted: the models' weights (the policy's, and a second opinion's, which also decodes,
its layers twice where the decoder also keeps them one array per layer:
``decode.layer_weights``, by default on CPU and GPU), the KV cache, and the second
policy's own cache where evaluate decodes it greedy (one batch of greedy's rows,
``evaluate.greedy_rows``), per
device (weights split over ``mesh.model``, the cache over both axes; heads, kv heads, a
vocabulary or an MLP width the model axis does not divide are held whole, as
``ShardingRules.for_model`` replicates them, and so are the norms). Not counted:
activations, the PRM's scoring pass (a [rows, text length] cache of its own per call),
the learned PRM's and Q̂'s small heads, the copy of its rows' cache windows a step call
holds over row windows (``decode.row_windows``; on row slots at most those rows' slots,
on pages at most a sixteenth of the pages, ``PAGED_WINDOWS_SHARE``), XLA's scratch;
hence HEADROOM. The label stage's ``label.stronger_model`` is not counted
either (it is not loaded beside the evaluate stage's models).

A search's peak pages (``search_pages``), the largest over the config's step methods, with
S = page_size, P = prompt tokens (``--prompt-tokens``, below ``decode.max_len``; the
default, 768, covers the paper configs' prompts: GSM8K's 4-shot prompt and question
measure about 450-540 tokens, MBPP's about 310, HumanEval's up to 360, MATH's zero-shot
question about 70; for a config whose rows are shorter, the longest prompt that leaves
its rows room for one step, ``max_len - C``), C =
decode.step_token_cap, a step of at most C + 1 tokens (a line cut at the cap holds the line
break written after it) and a path of at most min(decode.max_steps x (C + 1), max_len - P)
tokens:

    ceil(P / S)            the prompt, shared by the whole tree
  + ceil(tokens / S)       the tokens the search writes
  + leaves                 at most one partly filled page per leaf
  + rows x ceil(C / S)     the most a sampler call reserves or lends for its rows

with (tokens, leaves, rows) = (E·k·(C + 1), E·k, k) for qstar (E = search.max_expansions,
k = search.k: the tree A* grows), (N·path, N, N) for the chain methods (N = eval.samples
chains), (W·path + W·K·(C + 1), W + W·K, W·K) for beam (W beams, K children each) and
(path, 1, 1) for greedy. A method without a formula here (Tree of Thoughts, MCTSr)
counts every slot it holds (``slots_per_problem``) as a full max_len row.
``searches_in_flight`` is the pages available over that; ``pool_searches`` the same for
the config's own ``decode.pages``. Set ``eval.problems_per_batch`` at or below it and
``decode.slots`` to at least ``problems_per_batch x slots_per_search`` (evaluate runs
``decode.slots // slots_per_search`` searches at once at most). Searches rarely all peak
at once: above it, a search round that finds the pages short waits for others to release
theirs, or a search begins again to make room (``search/room.py``), with the same
results but more wall-clock (eight SmolLM2 searches begun at once in a search's worth of
row slots took some 20% longer than one at a time: docs/paged_cache.md), and only a
search that does not fit alone stops the run. On a mesh the pages,
rows, slots and searches are those of every ``mesh.data`` shard together, each shard's
share whole (a search stays on its shard), so the pages and slots printed are settings
``run`` accepts.
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

from qstar_jax.architectures import context_warning, evaluate_models, policy_architecture
from qstar_jax.config import CHAIN_METHODS, REASONER_METHODS, ConfigError, RunConfig
from qstar_jax.config_loading import load_config
from qstar_jax.decoding.weights import COPYING_LAYER_WEIGHTS, resolve_layer_weights
from qstar_jax.models.config import ModelConfig, UnsupportedConfigError
from qstar_jax.models.weights import CheckpointError
from qstar_jax.parallel import MeshError, check_cache_split, mesh_shape

HEADROOM = 0.9  # the share of memory the weights and the cache may take
DEFAULT_PROMPT_TOKENS = 768  # see the module docstring
UNITS = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20,
         "GIB": 2**30, "TIB": 2**40}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemoryPlan:
    memory_bytes: int
    weight_bytes: int  # per device, every model's (model_bytes summed)
    model_bytes: dict[str, int]  # per model: policy, prm, q_backbone, second_opinion
    kv_bytes_per_token: int  # per device
    slot_pool_bytes: int  # the config's cache: slots x max_len tokens, or its pages
    # The second policy's own cache, where greedy_second_policy decodes in it (greedy_rows)
    second_cache_bytes: int
    paged: bool  # whether the config pages its cache (decode.page_size)
    page_size: int
    # Over all mesh.data shards, each a whole multiple of them (what run accepts):
    pages: int  # pages of page_size tokens that fit beside the weights
    rows_at_max_len: int  # rows of max_len tokens those pages hold, no sharing
    largest_slots: int  # the most decode.slots at this max_len that fit
    prompt_tokens: int
    search_pages: int  # the pages one search peaks at (module docstring)
    searches_in_flight: int  # searches the available pages hold at their peak
    pool_searches: int  # searches the config's decode.pages hold (0 without paging)
    slots_per_search: int  # page-table rows (slots) one search holds at most

    @property
    def fits(self) -> bool:
        return (self.weight_bytes + self.second_cache_bytes + self.slot_pool_bytes
                <= HEADROOM * self.memory_bytes)

    @property
    def weights_fit(self) -> bool:
        """Whether the weights alone fit, leaving any room for a cache."""
        return self.weight_bytes < HEADROOM * self.memory_bytes

    def describe(self) -> str:
        gb = 1e9
        models = ", ".join(f"{name} {size / gb:.2f}" for name, size in self.model_bytes.items())
        pool = (f"; the config's pages hold {self.pool_searches} searches"
                if self.pool_searches else "")
        second = (f", the second policy's greedy cache {self.second_cache_bytes / gb:.2f} GB"
                  if self.second_cache_bytes else "")
        largest = ("" if self.paged else
                   f"; the largest decode.slots that fits: {self.largest_slots}")
        return (f"memory {self.memory_bytes / gb:.1f} GB (using {HEADROOM:.0%}): weights "
                f"{self.weight_bytes / gb:.2f} GB ({models}), KV "
                f"{self.kv_bytes_per_token / 1e3:.1f} KB per token, the config's cache "
                f"{self.slot_pool_bytes / gb:.2f} GB{second}; a paged cache gets {self.pages} "
                f"pages of {self.page_size} tokens = {self.rows_at_max_len} rows at full "
                f"max_len{largest}; a search "
                f"(prompt {self.prompt_tokens} tokens) peaks at {self.search_pages} pages "
                f"and holds up to {self.slots_per_search} slots: searches_in_flight "
                f"{self.searches_in_flight}{pool}"
                + ("" if self.weights_fit else "; the weights alone do not fit: split them "
                   "over devices with mesh.model, or use a device with more memory"))


def parameter_count(cfg: ModelConfig, model_axis: int = 1) -> int:
    """The model's parameters, or those one device holds with ``model_axis`` devices on
    the mesh's model axis (``_split``)."""
    embeddings = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
    return (layer_parameter_count(cfg, model_axis)
            + embeddings // _split(cfg.vocab_size, model_axis) + cfg.hidden_size)


def layer_parameter_count(cfg: ModelConfig, model_axis: int = 1, *,
                          layout: str = "per-layer") -> int:
    """The decoder layers' parameters (what a per-layer copy holds again), or one device's
    share of them (``_split``), as ``layout`` (a resolved ``decode.layer_weights``) holds
    them: fused rows are never split (``parallel._WEIGHT_AXES``), q, k and v as one in
    "per-layer-transposed" and "per-layer-kernels", and the latter's MLP rows too."""
    e, d, f = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    fused_qkv = layout in ("per-layer-transposed", "per-layer-kernels")
    q = d * cfg.num_heads * (e + cfg.attention_bias)
    k_and_v = 2 * d * cfg.num_kv_heads * (e + cfg.attention_bias)
    attention = (q + k_and_v if fused_qkv else
                 q // _split(cfg.num_heads, model_axis)
                 + k_and_v // _split(cfg.num_kv_heads, model_axis))
    attention += d * cfg.num_heads * e // _split(cfg.num_heads, model_axis)  # o
    mlp_split = 1 if layout == "per-layer-kernels" else _split(f, model_axis)
    mlp = (3 * e * f + 2 * f * cfg.mlp_bias) // mlp_split + e * cfg.mlp_bias  # down's bias whole
    return cfg.num_layers * (attention + e * cfg.attention_out_bias + mlp + 2 * e)


def _split(size: int, model_axis: int) -> int:
    """How many ways a model axis of ``model_axis`` devices splits a logical axis of
    ``size`` (vocabulary, heads, kv heads, MLP width): all of them, or none where it does
    not divide ``size``, which ``ShardingRules.for_model`` then replicates (norms are
    never split)."""
    return model_axis if size % model_axis == 0 else 1


def kv_bytes_per_token(cfg: ModelConfig, dtype_bytes: int, model_axis: int = 1) -> int:
    """One token's keys and values over every layer, on one device of the model axis."""
    return (2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * dtype_bytes
            // _split(cfg.num_kv_heads, model_axis))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def slots_per_search(run: RunConfig) -> int:
    """The most slots one search of the config's methods holds (evaluate's count)."""
    from qstar_jax.stages.context import RunContext
    from qstar_jax.stages.evaluate import slots_per_problem

    ctx = RunContext(config=run, out=Path(run.out_dir))
    # no methods: a run without evaluate, whose stages hold a row or two a problem
    return max((slots_per_problem(ctx, method) for method in run.eval.methods), default=1)


def search_pages(run: RunConfig, *, page_size: int, prompt_tokens: int) -> int:
    """The pages one evaluate search peaks at, the largest over ``eval.methods`` (the
    formula in the module docstring)."""
    s, e, d = run.search, run.eval, run.decode
    cap = d.step_token_cap
    step = cap + 1  # a step cut at the cap also holds the line break written after it
    path = max(min(d.max_steps * step, d.max_len - prompt_tokens), 0)
    peaks = []
    for method in e.methods:
        if method in ("qstar", "qstar_no_q"):
            expansions = min(s.max_expansions, s.max_generated_tokens // s.k + 1)
            tokens, leaves, rows = expansions * s.k * step, expansions * s.k, s.k
        elif method in CHAIN_METHODS:
            tokens, leaves, rows = e.samples * path, e.samples, e.samples
        elif method == "beam":
            rows = e.beam_width * e.beam_k
            tokens, leaves = e.beam_width * path + rows * step, e.beam_width + rows
        elif method == "greedy":
            tokens, leaves, rows = path, 1, 1
        else:  # Tree of Thoughts, MCTSr: every slot a full row
            from qstar_jax.stages.context import RunContext
            from qstar_jax.stages.reasoners import reasoner_slots

            assert method in REASONER_METHODS, method
            slots = reasoner_slots(RunContext(config=run, out=Path(run.out_dir)), method)
            peaks.append(slots * _cdiv(d.max_len, page_size))
            continue
        peaks.append(_cdiv(prompt_tokens, page_size) + _cdiv(tokens, page_size) + leaves
                     + rows * _cdiv(cap, page_size))
    return max(peaks, default=1)  # no methods: no evaluate search


def plan(cfg: ModelConfig, run: RunConfig, *, memory_bytes: int, backend: str,
         page_size: int | None = None, devices: int = 1,
         others: dict[str, ModelConfig] | None = None,
         prompt_tokens: int | None = None) -> MemoryPlan:
    """The figures for ``run`` over the policy ``cfg`` and the ``others`` the evaluate
    stage loads beside it (``evaluate_models``), on ``devices`` devices of
    ``memory_bytes`` each (the mesh's -1 axis takes what the other leaves), on
    ``backend`` ("cpu", "gpu" or "tpu": where ``decode.layer_weights`` "auto" resolves).
    page_size: the paged cache's (default: decode.page_size, or 16 without paging);
    prompt_tokens: a prompt's, for a search's peak pages (default: default_prompt_tokens).
    ConfigError for a ``decode.layer_weights`` the mesh cannot hold, as run refuses it."""
    decode = run.decode
    if prompt_tokens is None:
        prompt_tokens = default_prompt_tokens(run)
    page_size = page_size or decode.page_size or 16
    dtype_bytes = np.dtype(run.policy.dtype).itemsize
    model_axis = max(run.mesh.model, 1)
    data_axis = run.mesh.data if run.mesh.data > 0 else max(devices // model_axis, 1)
    models = {"policy": cfg, **(others or {})}
    model_bytes = {name: (parameter_count(c, model_axis)
                          + _decoder_copy(c, name, decode.layer_weights, backend, model_axis))
                   * dtype_bytes for name, c in models.items()}
    weights = sum(model_bytes.values())
    per_token = kv_bytes_per_token(cfg, dtype_bytes, model_axis)
    held = decode.num_pages * decode.page_size or decode.slots * decode.max_len  # tokens
    pool = held * per_token // data_axis
    second = _second_cache_bytes(run, models.get("second_opinion"), dtype_bytes, model_axis,
                                 data_axis)
    left = max(int(HEADROOM * memory_bytes) - weights - second, 0)  # on each device
    # What one data shard's devices hold, times the shards: the pool's slots and pages
    # split evenly over them and a search's tree stays on one, so these are settings
    # run accepts (decode.pages, decode.slots) and searches their pools hold.
    shard_pages = left // (page_size * per_token)
    peak = search_pages(run, page_size=page_size, prompt_tokens=prompt_tokens)
    pool_peak = (search_pages(run, page_size=decode.page_size, prompt_tokens=prompt_tokens)
                 if decode.page_size else 0)
    return MemoryPlan(memory_bytes=memory_bytes, weight_bytes=weights,
                      model_bytes=model_bytes, kv_bytes_per_token=per_token,
                      slot_pool_bytes=pool, second_cache_bytes=second,
                      paged=bool(decode.page_size), page_size=page_size,
                      pages=shard_pages * data_axis,
                      rows_at_max_len=shard_pages * page_size // decode.max_len * data_axis,
                      largest_slots=left // (decode.max_len * per_token) * data_axis,
                      prompt_tokens=prompt_tokens, search_pages=peak,
                      searches_in_flight=shard_pages // peak * data_axis,
                      pool_searches=(decode.num_pages // data_axis // pool_peak * data_axis
                                     if pool_peak else 0),
                      slots_per_search=slots_per_search(run))


def _second_cache_bytes(run: RunConfig, second: ModelConfig | None, dtype_bytes: int,
                        model_axis: int, data_axis: int) -> int:
    """What one device holds of the cache the second policy decodes greedy in
    (``greedy_rows`` max_len rows), where evaluate runs greedy with a second opinion."""
    from qstar_jax.stages.evaluate import greedy_rows

    if second is None or "greedy" not in run.eval.methods:
        return 0
    rows = greedy_rows(run, data_axis)
    return (rows * run.decode.max_len * kv_bytes_per_token(second, dtype_bytes, model_axis)
            // data_axis)


def _decoder_copy(cfg: ModelConfig, name: str, layer_weights: str, backend: str,
                  model_axis: int) -> int:
    """The parameters one device holds again in the decoder's copy of the layers, one
    array per layer (``decode.layer_weights``), of a model that decodes (the policy, a
    second opinion): 0 where the layout holds none."""
    if name not in ("policy", "second_opinion"):
        return 0
    try:
        layout = resolve_layer_weights(layer_weights, backend,
                                       heads_split=_split(cfg.num_heads, model_axis) > 1)
    except ValueError as error:  # per-layer-kernels on a mesh that splits the heads
        raise ConfigError(f"decode.{error}") from None
    if layout not in COPYING_LAYER_WEIGHTS:
        return 0
    return layer_parameter_count(cfg, model_axis, layout=layout)


def available_memory() -> tuple[int, str]:
    """(bytes one device can hold, its platform: "gpu", "tpu", or "cpu" for the host's
    memory)."""
    device = jax.local_devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]), device.platform
    meminfo = Path("/proc/meminfo")
    available = re.search(r"MemAvailable:\s+(\d+) kB", meminfo.read_text()) \
        if meminfo.is_file() else None
    limits = [int(available.group(1)) * 1024 if available
              else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
    cgroup = Path("/sys/fs/cgroup/memory.max")
    if cgroup.is_file() and cgroup.read_text().strip().isdigit():
        limits.append(int(cgroup.read_text()))
    return min(limits), "cpu"


def check_memory(run: RunConfig) -> MemoryPlan:
    """Raise ConfigError, with the figures and the largest decode.slots that fits, unless
    the weights of every model the run loads together (``evaluate_models``) and the
    config's cache fit the memory the run will have."""
    memory, backend = available_memory()
    figures = plan(policy_architecture(run), run, memory_bytes=memory, backend=backend,
                   devices=jax.device_count(), others=evaluate_models(run))
    if not figures.fits:
        where = "free host memory" if backend == "cpu" else "device memory"
        d = run.decode
        cache = (f"decode.pages={d.num_pages} x decode.page_size={d.page_size}" if d.page_size
                 else f"decode.slots={d.slots} x decode.max_len={d.max_len}")
        what = f"{cache} does" if figures.weights_fit else "the models' weights alone do"
        raise ConfigError(f"{what} not fit the {where}: {figures.describe()}")
    return figures


def default_prompt_tokens(run: RunConfig) -> int:
    """DEFAULT_PROMPT_TOKENS, or the longest prompt that leaves a row of the config room
    for one step where that is shorter."""
    return max(min(DEFAULT_PROMPT_TOKENS, run.decode.max_len - run.decode.step_token_cap), 1)


def parse_memory(text: str) -> int:
    """'80GB', '141 GiB', '2e9' -> bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    try:
        number = float(match.group(1)) if match else None
    except ValueError:  # the pattern admits 'e' or '1.2.3', which are no number
        number = None
    if number is None or (unit not in UNITS and unit not in ("", "B")):
        raise ValueError(f"memory {text!r}: give a number with one of {sorted(UNITS)}")
    if int(number * UNITS.get(unit, 1)) < 1:
        raise ValueError(f"memory {text!r}: must be at least one byte, e.g. 80GB")
    return int(number * UNITS.get(unit, 1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--memory", required=True, type=_memory_argument,
                        help="one device's memory, e.g. 80GB")
    parser.add_argument("--model-config", help="the policy's HF config.json, when its "
                        "checkpoint is not on this machine (configs/architectures/)")
    parser.add_argument("--prm-config", help="the PRM's (search.prm_model) HF config.json, "
                        "when its checkpoint is not on this machine")
    parser.add_argument("--q-config", help="the HF config.json of Q-hat's own model "
                        "(q_train.separate_model or q_train.second_opinion), when its "
                        "checkpoint is not on this machine")
    parser.add_argument("--page-size", type=_positive_int, default=None,
                        help="the paged cache's page size (default: decode.page_size, or 16)")
    parser.add_argument("--prompt-tokens", type=_positive_int, default=None,
                        help="a prompt's tokens, for a search's peak pages (default "
                        f"{DEFAULT_PROMPT_TOKENS}, or decode.max_len less one step where "
                        "that is shorter)")
    parser.add_argument("--devices", type=_positive_int, default=None,
                        help="the devices the run will have, all hosts together, which "
                        "mesh.data=-1 spreads the cache over and the mesh must fit "
                        "(default: one, not checked against the mesh)")
    parser.add_argument("--backend", choices=["gpu", "tpu", "cpu"], default="gpu",
                        help="the device the run will use (decode.layer_weights=auto holds "
                        "the layers twice on gpu and cpu; default gpu)")
    # Overrides may follow the options, as in run's command line.
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    if args.config and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None
    try:
        run = load_config(args.config, args.overrides)
        policy = policy_architecture(run, args.model_config)
        others = evaluate_models(run, prm_config=args.prm_config, q_config=args.q_config)
        if args.devices is not None:  # as run builds its mesh and splits its cache
            data_shards, _ = mesh_shape(run.mesh.data, run.mesh.model, args.devices)
            check_cache_split(data_shards, slots=run.decode.slots, pages=run.decode.num_pages)
        if args.page_size is not None and run.decode.max_len % args.page_size:
            raise ConfigError(f"--page-size {args.page_size}: decode.max_len="
                              f"{run.decode.max_len} must be a multiple of it, as run "
                              "requires of decode.page_size")
        if args.prompt_tokens is not None and args.prompt_tokens >= run.decode.max_len:
            raise ConfigError(f"--prompt-tokens {args.prompt_tokens} leaves no room in a row "
                              f"of decode.max_len={run.decode.max_len} tokens")
        figures = plan(policy, run, memory_bytes=args.memory, backend=args.backend,
                       page_size=args.page_size, devices=args.devices or 1, others=others,
                       prompt_tokens=args.prompt_tokens)
    except (ConfigError, CheckpointError, UnsupportedConfigError, MeshError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    warning = context_warning(run, policy)
    if warning:
        print(warning, file=sys.stderr)
    print(figures.describe())
    print(json.dumps(dataclasses.asdict(figures) | {"fits": figures.fits}))
    return 0 if figures.fits else 1


def _memory_argument(text: str) -> int:
    try:
        return parse_memory(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


if __name__ == "__main__":
    sys.exit(main())
