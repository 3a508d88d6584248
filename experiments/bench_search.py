"""Q* search wall-clock: our batched decoder against re-encoding every node for ``generate``.

The same Q* searches on SmolLM2-135M-Instruct (GGUF, float32, the real-model config's chat
template, ``configs/smollm2_gsm_symbolic.yaml``) over the first ``--problems`` GSM-style
problems of ``experiments/fixtures/gsm_symbolic_16.jsonl`` (reasoning-gym's GSM-Symbolic,
split_seed 0: the first 16 test problems of that config, in GSM8K's layout, read as the
``gsm8k`` task from local files, zero-shot), run four ways:

(a) our engine as the search driver runs it (``run_search``, ``DecoderExpander``): every
    problem's expansions batched into one decoder call a round, on the paged cache
    (``decode.page_size`` of the config, children sampled as tries when the config's
    ``eval.prefix_sharing`` is on, steps in ``decode.step_chunk`` chunks);
(b) the same on the row-slot cache (``decode.page_size=0``: one max_len row per slot, a
    fork copies the row);
(c) the peer style, as LLM Reasoners' and MCTSr's HF backends expand a node: one problem
    at a time, each expansion's text (prompt and steps) rebuilt, re-encoded and handed to
    ``transformers`` ``generate`` (``num_return_sequences=K``, sampling at the same
    temperature without top-k/top-p, at most the step cap of new tokens, stopping at a
    token holding a newline or at EOS) on the same dequantized weights, torch pinned to
    the same cores (its OpenMP threads waiting passively, ``OMP_WAIT_POLICY=PASSIVE``
    unless the environment sets it: spinning threads ran 25x slower on a loaded host;
    ``experiments/peer_expansion.py``);
(d) our engine one problem at a time (a ``run_search`` per problem, paged as (a)): (a)
    against (d) is what batching across problems gives, (d) against (c) what keeping the
    cache (no re-prefill) and our decoder give;
(e) (b) in the KV bytes (a) peaked at: as many max_len rows as fit (a)'s peak, and the
    problems in waves of as many as those rows hold on average ((b)'s peak slots per
    problem; a ``run_search`` per wave, whose searches wait for rows where they outgrow
    them and begin again where waiting cannot help: ``search/room.py``). (e) against (a)
    is what pages buy a batched search at equal memory; (b) against (a) at equal
    settings. ``--e-wave N`` sets the wave (``--e-wave`` of all the problems: every
    search begun at once in the rows, as ``run`` begins a batch too large for its cache,
    which times the waiting).

Every run drives the same planner (``AStarPlanner``) with Q̂ ≡ 0 and a zero process
utility (λ = 0, so f = 0 everywhere and the frontier's tie-break, deepest then oldest,
orders it: a depth-first dive; nothing reads an answer, nothing is trained). By default
``--n-complete 0`` keeps a search going past complete trajectories until its
``--expansions`` are spent, so every problem costs the same expansions. Our runs draw
their random numbers from (problem, node, child), so (a), (b) and (d) grow the same
trees in float32 ("same_trees" checks it on the tree dumps; in bfloat16 a batch of another
shape rounds the logits otherwise, and a random model's near-uniform ones then sample other
tokens, so (d) can differ from (a) there while costing the same). (c) samples with torch's
generator, seeded per expansion: its trees differ, with the same expansions, K and step
cap; the token counts show the work is comparable.

Warm-up: each of our runs searches twice; the first pass compiles (reported as
"first pass s") and the second is timed (its line says how many decoder functions it
traced and how many programs XLA compiled: none of either in steady state). (c) is timed
after one short ``generate``. ``--trace DIR`` profiles a third pass of each of our runs
(``device_trace``).

Counted, per run: wall-clock of the timed pass; prefilled tokens (ours: each prompt once,
children are forks; (c): K copies of the whole node text per expansion, as ``generate``
expands the input before its prefill); generated tokens (what the decoder computed for
the attempts that finished: a trie computes a prefix its samples share once); step
tokens (the tokens of every step handed to the search, copies and given-up attempts'
included); peak KV bytes: (a), (d) the most pages out of the pool at once
(``PageTable.peak_pages_in_use``: held, reserved for a write, or lent to a trie call) x
page bytes; (b), (e) the most slots allocated at once x a max_len row's bytes; (c) the
largest ``generate`` call's K x (prompt + new tokens) x per-token bytes; the calls that
found the cache full ("refused_calls": ``--pages`` below what (a) peaks at makes its
searches wait for others' pages, ``search/room.py``, growing the same trees); the
searches begun again where waiting could not help ("begun_again") and the tokens their
given-up attempts generated ("given_up_tokens": a search is counted for the attempt that
finished, so these show in wall-clock and here alone).

z ("kv_bytes_vs_distinct_tokens", ``experiments/metered_runtime.py``): (a)'s peak KV
bytes over the bytes of the distinct tokens the live trees hold right after the decoder
call that reached the peak: for each problem the token trie of every live slot's
sequence (prompt and steps), summed over problems; a cache that held each distinct token
once with nothing spare would give 1. Unfilled page ends, pages lent to a trie chunk that
its rows did not reach (the peak is reached inside a call: a chunk's loan is what its
rows could reach in its rounds), and copies of a forked slot's partly filled page count
against it; smaller pages (``--page-size``) leave less of each unfilled. "z_held": the
same at the most pages held between calls (loans taken back); "held_places" splits
those pages' token places into the distinct tokens, tokens held twice or more (a forked
slot's copy of a partly filled page it shared, or equal tokens sampled apart) and places
no token fills (page ends: each live slot's last page, at most), with the live slots.

    python experiments/bench_search.py [--problems 8] [--k 4] [--expansions 4]
        [--step-tokens 48] [--temperature 0.9] [--n-complete 0] [--threads N]
        [--config configs/smollm2_gsm_symbolic.yaml] [--model SOURCE] [--dtype D]
        [--fixture FILE] [--shared-prefix] [--runs abcde] [--e-wave N] [--page-size N]
        [--pages N] [--attention auto|pallas|jnp] [--row-windows auto|gather|copy]
        [--trace DIR]

On a GPU both sides run there (torch on CUDA where it sees one). A machine that cannot
carry the GGUF runs SmolLM2's shape with random weights (``--model`` a directory
``experiments/random_checkpoint.py`` wrote, ``--dtype bfloat16``): a random model's steps
run to their cap, so its trees and token counts are not the real model's.

Prints a line per pass, a table, and as its last line JSON: {"speedup_vs_reprefill":
wall(c)/wall(a), "speedup_one_at_a_time": wall(c)/wall(d), "speedup_vs_slot_copy":
wall(b)/wall(a), "speedup_vs_slot_copy_equal_kv": wall(e)/wall(a) (null when (e)'s rows,
"settings"' "equal_kv_rows", do not hold one problem's search),
"kv_bytes_vs_distinct_tokens": z, "z_held": ..., "held_places": {"distinct",
"held_twice", "unfilled", "slots"}, "same_trees": ..., "runs":
{"a"|"b"|"c"|"d"|"e": {"wall_s", "first_pass_s", "expansions", "prefilled_tokens",
"generated_tokens", "step_tokens", "peak_kv_bytes", "refused_calls", "begun_again",
"given_up_tokens"}}, "settings": {...}}. Speedups are
ratios of speed (greater: the first-named run is faster). Targets on 2 CPU cores:
a/c >= 5, d/c >= 1.3, a/b >= 1.3, z <= 1.25.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

# The sibling modules: the decode benchmark's loaders, the profiler summary, the metered
# runtime, the peer's expander and the search passes (this script's folder is on
# sys.path when it runs as ``python experiments/bench_search.py``).
from bench_decode import kv_token_bytes, transformers_model
from cli_args import cpu_threads, positive_int
from device_trace import traced
from metered_runtime import metered_runtime_class
from peer_expansion import TransformersExpander
from search_passes import RunFigures, search

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"a": "ours, problems batched, paged cache",
        "b": "ours, problems batched, row slots",
        "c": "peer: re-encode + HF generate, one problem at a time",
        "d": "ours, one problem at a time, paged cache",
        "e": "ours, row slots in (a)'s peak KV, problems in waves"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=positive_int, default=8, help="first N fixture problems")
    parser.add_argument("--k", type=int, default=4, help="children per expansion (K)")
    parser.add_argument("--expansions", type=positive_int, default=4, help="expansions per problem")
    parser.add_argument("--step-tokens", type=positive_int, default=48, help="step token cap")
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--n-complete", type=int, default=0,
                        help="stop a search after this many complete trajectories (0: never; "
                             "every search spends its expansions)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/smollm2_gsm_symbolic.yaml",
                        help="the run config whose policy, chat template, seed and decode "
                             "settings (page size, step chunk, prefix sharing) are used")
    parser.add_argument("--model", default=None,
                        help="the policy: an alias, a .gguf or an HF directory (default: the "
                             "config's; experiments/random_checkpoint.py makes a random one of "
                             "SmolLM2's shape for a machine that cannot carry the GGUF)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="both sides' weights and cache (default: the config's)")
    parser.add_argument("--fixture", type=Path,
                        default=ROOT / "experiments/fixtures/gsm_symbolic_16.jsonl",
                        help="GSM8K-layout JSONL (question, answer ending '#### N')")
    parser.add_argument("--shared-prefix", action="store_true",
                        help="our runs' tries attend to each group's prefix once "
                             "(Decoder(shared_prefix=True), cascade attention)")
    parser.add_argument("--row-windows", choices=["auto", "gather", "copy"], default="auto",
                        help="our runs' step calls over a copy of their rows' cache "
                             "windows (Decoder's row_windows; auto: on a CPU where it can, "
                             "on pages where the copies fit their share of the pool); the "
                             "tries gather")
    parser.add_argument("--runs", default="abcde",
                        help="which of the runs (a)-(e) to make (default all; (b) takes the "
                             "slots (a) peaked at, or as many as (a) is given without it; "
                             "(e) needs (a))")
    parser.add_argument("--e-wave", type=positive_int, default=None,
                        help="(e)'s problems side by side (default: as many as its rows "
                             "hold at (b)'s peak slots per problem)")
    parser.add_argument("--page-size", type=int, default=None,
                        help="tokens per page of the paged runs (default: the config's)")
    parser.add_argument("--pages", type=int, default=None,
                        help="the paged runs' pool (default: room for every tree at once); "
                             "fewer make searches wait for others' pages (the same trees)")
    parser.add_argument("--attention", choices=["auto", "pallas", "jnp"], default="auto",
                        help="the paged runs' decode attention (auto: the Pallas kernel on a "
                             "GPU or TPU, jnp on a CPU)")
    parser.add_argument("--threads", type=cpu_threads, default=len(os.sched_getaffinity(0)),
                        help="CPU cores for both sides (default: all this process may use)")
    parser.add_argument("--trace", type=Path, default=None,
                        help="after each of our runs' timed pass, one more under the profiler: "
                             "its trace saved in this directory and its busiest kernels "
                             "printed (experiments/device_trace.py)")
    return parser.parse_args()


def compile_counter():
    """A function returning how many programs XLA has compiled (or read from the
    persistent cache) since this was called: a timed pass should compile none."""
    import jax

    count = [0]

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    return lambda: count[0]


def peer_run(args, config, tokenizer, task, problems, prompts, make_planner, *, cap: int,
             token_bytes: int) -> RunFigures:
    """(c): the searches one problem at a time through ``TransformersExpander``."""
    from qstar_jax.models.loading import source_path
    model = transformers_model(source_path(args.model), args.dtype, args.threads)
    peer = TransformersExpander(model, tokenizer, task, problems, prompts,
                                step_token_cap=cap, kv_token_bytes=token_bytes)
    import torch
    with torch.inference_mode():  # warm-up: torch's first call sets up its kernels
        model.generate(torch.tensor([tokenizer.encode(prompts[0])], device=model.device),
                       max_new_tokens=4,
                       do_sample=False, pad_token_id=tokenizer.pad_id)
    timed = search(peer, make_planner, len(problems), wave=1)
    print(f"(c) timed pass {timed.wall_s:7.1f} s", flush=True)
    return timed.figures(first_pass_s=None, peak_kv_bytes=peer.peak_kv_bytes)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def main() -> None:
    args = parse_args()
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    # torch's OpenMP threads spin at every barrier by default; on a shared host a thread
    # descheduled there stalls the rest: 2-thread generate ran 25x slower than 1-thread
    # under load. Waiting passively removes that (and favours the peer, if anything).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Imported only now, so that both thread pools size themselves to the pinned cores.
    import jax

    from qstar_jax.config_loading import load_config
    from qstar_jax.decoding.engine import Decoder
    from qstar_jax.decoding.kv_cache import SlotPoolExhausted
    from qstar_jax.decoding.paged_cache import Paging
    from qstar_jax.decoding.step_sampler import ROW_WINDOWS
    from qstar_jax.models.loading import load_model
    from qstar_jax.policy.expander import DecoderExpander
    from qstar_jax.policy.runtime import PolicyRuntime
    from qstar_jax.search.astar import AStarConfig, AStarPlanner, Budget
    from qstar_jax.stages.context import DTYPES
    from qstar_jax.tasks.gsm8k import Gsm8kTask
    from qstar_kernels import resolve_implementation

    compiles = compile_counter()
    config = load_config(args.config)
    n, k, expansions, cap = args.problems, args.k, args.expansions, args.step_tokens
    args.model = args.model or config.policy.source
    args.dtype = args.dtype or config.policy.dtype
    loaded = load_model(args.model, dtype=DTYPES[args.dtype])
    tokenizer = loaded.tokenizer
    task = Gsm8kTask(data_files=str(args.fixture), n_shot=0)
    problems = task.load("test")[:n]
    if len(problems) < n:
        raise SystemExit(f"{args.fixture} holds {len(problems)} problems, fewer than {n}")
    chat = tokenizer.apply_chat_template if config.policy.chat_template else None
    prompts = [task.prompt(p, chat) for p in problems]
    prompt_tokens = [len(tokenizer.encode(p)) for p in prompts]
    planner = AStarConfig(k=k, n_complete=args.n_complete or k * expansions + 1, lam=0.0,
                          agg=config.search.agg, temperature=args.temperature,
                          budget=Budget(max_expansions=expansions))

    def make_planner(i):
        return AStarPlanner(i, planner)

    runs_wanted = set(args.runs)
    if not runs_wanted or not runs_wanted <= set(RUNS):
        raise SystemExit(f"--runs takes letters of 'abcde', not {args.runs!r}")
    if "e" in runs_wanted and "a" not in runs_wanted:
        raise SystemExit("--runs: (e) takes the KV bytes (a) peaked at; ask for (a) too")
    page_size = args.page_size or config.decode.page_size or 16
    # A node's tokens never pass the prompt and one capped step per expansion above it.
    max_len = page_size * cdiv(max(prompt_tokens) + expansions * cap, page_size)
    nodes = k * expansions + 2  # per problem: the tree's nodes, and the root's prefill
    slots = n * nodes
    # Each node's own pages (its step, one page more where it starts mid-page), the
    # prompt's, and what a trie call borrows for its splits.
    pages = args.pages or n * (cdiv(max(prompt_tokens), page_size)
                               + (nodes + k) * (cdiv(cap, page_size) + 1))
    token_bytes = kv_token_bytes(loaded.config, DTYPES[args.dtype])
    prefix_sharing, step_chunk = config.eval.prefix_sharing, config.decode.step_chunk
    print(f"{args.model} ({args.dtype}), {jax.devices()[0].device_kind}, "
          f"{args.threads} threads; {n} problems (prompts {min(prompt_tokens)}-"
          f"{max(prompt_tokens)} tokens), K={k}, {expansions} expansions, {cap}-token steps, "
          f"temperature {args.temperature}; max_len {max_len}, {page_size}-token pages, "
          f"step_chunk {step_chunk}, prefix_sharing {prefix_sharing}", flush=True)

    def decoder(paged: bool, num_slots: int) -> Decoder:
        return Decoder(loaded.model, num_slots=num_slots, max_len=max_len,
                       newline_table=tokenizer.newline_table(loaded.config.vocab_size),
                       eos_ids=tokenizer.eos_ids, step_chunk=step_chunk,
                       paging=Paging(page_size=page_size, num_pages=pages,
                                     attention=args.attention) if paged else None,
                       shared_prefix=args.shared_prefix,
                       row_windows=ROW_WINDOWS[args.row_windows])

    def our_run(name: str, dec: Decoder, wave: int):
        """Two passes on ``dec``: the first (metered on a paged cache) compiles, the second
        is timed. Returns (the timed pass, first pass seconds, the metered runtime)."""
        def one_pass(runtime_class):
            runtime = runtime_class(dec, tokenizer, task, problems, prompts, seed=config.seed,
                                    step_token_cap=cap)
            expander = DecoderExpander(runtime, prefix_sharing=prefix_sharing)
            return search(expander, make_planner, n, wave=wave), runtime

        first_runtime_class = metered_runtime_class() if dec.pages is not None else PolicyRuntime
        passes, runtimes = [], []
        for runtime_class in (first_runtime_class, PolicyRuntime):
            traced_before, compiled_before = sum(dec.trace_counts.values()), compiles()
            one, runtime = one_pass(runtime_class)
            passes.append(one)
            runtimes.append(runtime)
            print(f"({name}) {'first' if len(passes) == 1 else 'timed'} pass "
                  f"{one.wall_s:7.1f} s, trees {one.trees_hash}, "
                  f"{sum(dec.trace_counts.values()) - traced_before} decoder functions traced, "
                  f"{compiles() - compiled_before} programs compiled, {one.refused_calls} "
                  f"calls found the cache full, {one.begun_again} searches begun again "
                  f"({one.given_up_tokens} tokens given up)", flush=True)
        assert passes[0].trees_hash == passes[1].trees_hash, "a rerun grew other trees"
        if args.trace is not None:  # not timed: the profiler slows the host
            with traced(args.trace, f"search_{name}"):
                one_pass(PolicyRuntime)
        return passes[1], passes[0].wall_s, runtimes[0]

    runs: dict[str, RunFigures] = {}
    trees: dict[str, str] = {}
    paged = decoder(True, slots)
    peak_slots, at_peak, at_held_peak = slots, None, None
    for name, wave in (("a", n), ("d", 1)):
        if name not in runs_wanted:
            continue
        paged.pages.reset_peak()
        paged.pool.reset_peak()
        timed, first_s, metered = our_run(name, paged, wave)
        runs[name] = timed.figures(first_pass_s=first_s, peak_kv_bytes=paged.pages.peak_pages_in_use
                                   * page_size * token_bytes)
        trees[name] = timed.trees_hash
        if name == "a":
            peak_slots, at_peak, at_held_peak = (paged.pool.peak_allocated, metered.at_peak,
                                                 metered.at_held_peak)
    del paged

    def row_slot_run(name: str, num_slots: int, wave: int) -> None:
        """``our_run`` on a row-slot decoder of ``num_slots`` slots, into ``runs``."""
        rows = decoder(False, num_slots)
        timed, first_s, _ = our_run(name, rows, wave)
        runs[name] = timed.figures(first_pass_s=first_s, peak_kv_bytes=(
            rows.pool.peak_allocated * max_len * token_bytes))
        trees[name] = timed.trees_hash

    if "b" in runs_wanted:
        row_slot_run("b", peak_slots, n)  # the same trees take the same slots
    equal_kv_rows = e_wave = None
    if "e" in runs_wanted:
        equal_kv_rows = runs["a"].peak_kv_bytes // (max_len * token_bytes)
        e_wave = min(n, args.e_wave or max(1, equal_kv_rows // cdiv(peak_slots, n)))
        print(f"(e) {equal_kv_rows} max_len rows in (a)'s peak KV, {peak_slots / n:.1f} slots a "
              f"problem at (a)'s peak: waves of {e_wave}", flush=True)
        try:
            row_slot_run("e", equal_kv_rows, e_wave)
        except SlotPoolExhausted as error:  # a search alone outgrew the rows
            print(f"(e) {equal_kv_rows} max_len rows do not hold one problem's search: "
                  f"{error}", flush=True)

    if "c" in runs_wanted:
        runs["c"] = peer_run(args, config, tokenizer, task, problems, prompts, make_planner,
                             cap=cap, token_bytes=token_bytes)

    z = None if at_peak is None else at_peak[0] * page_size / at_peak[1]
    z_held = (None if at_held_peak is None
              else at_held_peak.pages * page_size / at_held_peak.distinct)
    places = None if at_held_peak is None else at_held_peak.places(page_size)
    print(f"\nwall-clock of the timed pass (ours after a compiling pass); peak KV at "
          f"{token_bytes / 1e3:.1f} kB a token")
    print(f"{'run':<4}{'':<54}{'wall s':>8}{'first pass s':>13}{'expansions':>11}"
          f"{'prefilled':>10}{'generated':>10}{'step tokens':>12}{'peak KV MB':>11}")
    for name in sorted(runs):
        r = runs[name]
        first = "" if r.first_pass_s is None else f"{r.first_pass_s:.1f}"
        print(f"({name}) {RUNS[name]:<54}{r.wall_s:>8.1f}{first:>13}{r.expansions:>11}"
              f"{r.prefilled_tokens:>10}{r.generated_tokens:>10}{r.step_tokens:>12}"
              f"{r.peak_kv_bytes / 1e6:>11.1f}")
    if z is not None:
        print(f"z = {at_peak[0]} peak pages x {page_size} / {at_peak[1]} distinct tokens = "
              f"{z:.3f}; held between calls: {at_held_peak.pages} pages / "
              f"{at_held_peak.distinct} tokens = {z_held:.3f}, their "
              f"{at_held_peak.pages * page_size} token places {places['distinct']} distinct "
              f"tokens, {places['held_twice']} held twice or more and {places['unfilled']} "
              f"unfilled, in {places['slots']} live slots")
    print("trees: " + ", ".join(f"({name}) {tree}" for name, tree in sorted(trees.items())))

    def speedup(slower: str, faster: str) -> float | None:
        if slower in runs and faster in runs:
            return round(runs[slower].wall_s / runs[faster].wall_s, 3)
        return None

    print(json.dumps({
        "speedup_vs_reprefill": speedup("c", "a"),
        "speedup_one_at_a_time": speedup("c", "d"),
        "speedup_vs_slot_copy": speedup("b", "a"),
        "speedup_vs_slot_copy_equal_kv": speedup("e", "a"),
        "kv_bytes_vs_distinct_tokens": None if z is None else round(z, 3),
        "z_held": None if z_held is None else round(z_held, 3),
        "held_places": places,
        "same_trees": len(set(trees.values())) <= 1,
        "runs": {name: {key: round(v, 2) if isinstance(v, float) else v
                        for key, v in dataclasses.asdict(runs[name]).items()}
                 for name in sorted(runs)},
        "settings": dict(problems=n, k=k, expansions=expansions, step_tokens=cap,
                         temperature=args.temperature, n_complete=planner.n_complete,
                         model=str(args.model), dtype=args.dtype,
                         attention=resolve_implementation(args.attention),
                         threads=args.threads, max_len=max_len, page_size=page_size,
                         pages=pages,
                         equal_kv_rows=equal_kv_rows, e_wave=e_wave,
                         step_chunk=step_chunk, prefix_sharing=prefix_sharing,
                         shared_prefix_attention=args.shared_prefix,
                         row_windows=args.row_windows,
                         kv_token_bytes=token_bytes,
                         omp_wait_policy=os.environ["OMP_WAIT_POLICY"],
                         warm_up="ours: one compiling pass before the timed one; "
                         "peer: one short generate",
                         device=jax.devices()[0].device_kind)}))


if __name__ == "__main__":
    main()
