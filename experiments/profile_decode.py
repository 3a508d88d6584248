"""Where the step sampler's time goes on SmolLM2-135M-Instruct, CPU, in collect's setting.

The collect stage steps rollouts through ``PolicyRuntime``: prompts prefilled into slots
(``Decoder.prefill``), then one reasoning step at a time for every live row
(``Decoder.sample_steps``) over a slot pool of ``decode.slots`` slots of
``decode.max_len`` tokens (``--page-size N``: a paged cache of N-token pages, ``--pages``
of them, as a config with ``decode.page_size`` runs). This makes the same calls on the
real model and times them for each (slots, max_len) setting asked for: ``--rows`` rows
with prompts of about ``--prompt-tokens`` tokens (lengths spread by +-10%, as real
prompts are), then ``--steps`` consecutive steps of ``--step-tokens`` tokens each (no
newline or EOS stops, so every row makes exactly that many; sampled at temperature 0.9
with seeded keys).

What scales with what says where the time goes: a per-token time that grows with
``max_len`` at a fixed row content means the sampler touches whole cache rows (the
gather and attention over every position), one that grows with ``slots`` means it
copies the pool. The sampled tokens of every setting are hashed: equal hashes mean the
settings sample the same tokens (they must), equal logprob hashes the same bits.
``--chunks``: the decoder's ``step_chunk`` values to time (0: a step in one call).

    python experiments/profile_decode.py [--rows 16] [--slots 64 256] [--max-lens 256 768]
        [--prompt-tokens 200] [--step-tokens 48] [--steps 1] [--reps 2]
        [--temperature 0.9] [--full-window] [--chunks 0] [--threads N]
        [--page-size 16 [--pages N]]

``--collect CONFIG`` times collect itself instead: ``--problems`` training problems of
the config's task, prompted as the run prompts them, ``--rollouts`` rollouts each
(``DecoderRolloutSampler``: a row leaves when its trace ends) for up to ``--steps``
steps of at most ``--step-tokens`` tokens, with the tokenizer's newline table and EOS
ids, so rows end their steps where the model ends them. Per ``--chunks`` value, back
to back in one process: the first pass (it compiles) and ``--reps`` timed passes, each
step call's wall-clock, and the decoder's ``step_work`` (row-tokens computed against
tokens sampled):

    python experiments/profile_decode.py --collect configs/smollm2_gsm_symbolic.yaml
        [--problems 16] [--rollouts 4] [--steps 2] [--step-tokens 48] [--reps 1]
        [--chunks 0 8 16 32] [--row-windows gather|copy] [--run-mesh]
        [--page-size 16 [--pages N]]

(``--run-mesh``: the policy and decoder on the mesh a run builds from the config, a 1x1
mesh on one device, as ``python -m qstar_jax.run`` runs them; without it, no mesh.
``--page-size``: a paged cache, as the config's ``decode.page_size`` builds one; without
it, row slots.)

``--trie CONFIG`` times the trie sampler (``Decoder.sample_trie``, as a search expands
nodes with ``eval.prefix_sharing``): ``--problems`` eval problems of the config's task,
prompted as the run prompts them, each a group of ``--samples`` steps of at most
``--step-tokens`` tokens at ``--temperature`` (steps end at a newline or EOS, as the
tokenizer says), on a paged cache of the config's page size: ``--steps`` tries in a
row, each group going on from its most drawn step (the first of equals) until a step
ends at EOS, as a chain of best-of-N or a search's deepest path do. With
``--whole-steps`` only EOS and the cap end a step (long tries: most steps run all
``--step-tokens``).
Per ``--spare-rules`` value (``new``: ``ChunkedTrie``'s bounded spares; ``old``: every
split the going rows could make, the rule before; ``F:S``: the bounded rule with
``spare_floor`` F and ``spare_share`` S) and ``--chunks`` value, in one process (and the
persistent compile cache on), the settings taking turns pass by pass (so that a busy
machine slows each alike): the first pass (it compiles) and ``--reps`` timed passes,
each the wall-clock of the trie calls (the prefill before them finished first) and the
decoder's ``trie_work`` (padded row-rounds, calls, starved
calls, compiled variants), and each chunk's padded rows and rounds run. Every pass
samples the same tries (a hash of their steps says so):

    python experiments/profile_decode.py --trie configs/smollm2_humaneval.yaml
        [--problems 32] [--samples 4] [--steps 1] [--step-tokens 48] [--temperature 0.2]
        [--reps 1] [--whole-steps]
        [--chunks 16 (default: the config's)] [--spare-rules old new]

Prints a line per setting and, as its last line, JSON: {"settings": [{"slots", "max_len",
"chunk", "compile_s", "prefill_ms", "ms_per_token", "ms_per_row_token", "windows", "tokens_hash",
"logprobs_hash", "logprobs" (a few, to read differences)},
...], "rows": ..., ...}. ms_per_token: one token for every row (one loop iteration);
windows: the cache positions the step calls attend over (``Decoder.attention_window``;
max_len before it existed, or with ``--full-window``).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import statistics
import time

# Sibling modules, the argument types and --trie's profile (this script's folder is on
# sys.path when it runs as ``python experiments/profile_decode.py``).
from cli_args import cpu_threads, positive_int
from profile_trie import profile_trie


def spare_rule(text: str) -> str:
    """An argparse type: old, new or FLOOR:SHARE, two numbers (profile_trie reads it)."""
    if text in ("old", "new"):
        return text
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        for part in parts:
            float(part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give old, new or FLOOR:SHARE (two numbers), got "
                                         f"{text!r}") from None
    return text


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=positive_int, default=16)
    parser.add_argument("--slots", type=positive_int, nargs="+", default=[64, 256])
    parser.add_argument("--max-lens", type=positive_int, nargs="+", default=[256, 768])
    parser.add_argument("--prompt-tokens", type=positive_int, default=200)
    parser.add_argument("--step-tokens", type=positive_int, default=48)
    parser.add_argument("--steps", type=positive_int, default=1, help="step calls per repetition")
    parser.add_argument("--reps", type=positive_int, default=2,
                        help="timed repetitions after warm-up")
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--page-size", type=int, default=0,
                        help="a paged cache of pages of this many tokens (0: the slot pool)")
    parser.add_argument("--pages", type=int, default=0,
                        help="--page-size: the pool's pages (default, as decode.pages: a full "
                        "max_len row for every slot)")
    parser.add_argument("--full-window", action="store_true",
                        help="attend over whole max_len rows (min_window_bucket = max_len)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--chunks", type=positive_int, nargs="+",
                        help="Decoder step_chunk values to time (0: a step in one call; "
                        "default 0, with --trie the config's decode.step_chunk)")
    parser.add_argument("--collect", metavar="CONFIG",
                        help="time collect-like rollouts of this run config's task")
    parser.add_argument("--problems", type=positive_int, default=16)
    parser.add_argument("--rollouts", type=positive_int, default=4)
    parser.add_argument("--trie", metavar="CONFIG",
                        help="time tries of this run config's eval prompts")
    parser.add_argument("--samples", type=positive_int, default=4, help="--trie: steps per group")
    parser.add_argument("--whole-steps", action="store_true",
                        help="--trie: no newline ends a step (EOS and the cap do)")
    parser.add_argument("--spare-rules", type=spare_rule, nargs="+", default=["old", "new"],
                        help="--trie: ChunkedTrie's spare rules: old, new or FLOOR:SHARE")
    parser.add_argument("--row-windows", choices=["auto", "gather", "copy"], default="auto",
                        help="copy: the step loop over a copy of its rows' cache windows "
                             "(Decoder's row_windows; auto: on a CPU where it can); copy not "
                             "with --trie, whose trie sampler has none")
    parser.add_argument("--run-mesh", action="store_true",
                        help="--collect: load the policy and build the decoder on the mesh "
                             "a run builds from the config (on one device, 1x1), as "
                             "python -m qstar_jax.run does")
    parser.add_argument("--threads", type=cpu_threads, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    if args.page_size < 0 or args.pages < 0:
        parser.error("--page-size and --pages must be >= 0")
    if args.pages and not args.page_size:
        parser.error("--pages sizes a paged cache: give --page-size too")
    if args.page_size and args.trie:
        parser.error("--page-size and --pages set the step and collect timings' cache; "
                     "--trie pages its cache as its config says")
    if args.run_mesh and not args.collect:
        parser.error("--run-mesh times --collect on a run's mesh: give --collect")
    if args.row_windows == "copy" and args.trie:
        parser.error("--row-windows copy runs the step sampler over row windows: --trie "
                     "times the trie sampler, which has none")
    return args


def main() -> None:
    args = parse_args()
    if args.trie:
        profile_trie(args)
        return
    args.chunks = args.chunks or [0]
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    if args.collect:
        profile_collect(args)
        return
    import jax
    import jax.numpy as jnp
    import numpy as np

    from qstar_jax.decoding.engine import Decoder
    from qstar_jax.decoding.sampling import SamplingParams
    from qstar_jax.decoding.step_sampler import ROW_WINDOWS
    from qstar_jax.models.loading import load_model

    loaded = load_model(args.model, dtype=jnp.float32)
    cfg = loaded.config
    rng = np.random.default_rng(0)
    spread = max(1, args.prompt_tokens // 10)
    lengths = rng.integers(args.prompt_tokens - spread, args.prompt_tokens + spread + 1,
                           args.rows)
    text = ("Natalia sold clips to 48 of her friends in April, and then she sold half as "
            "many clips in May. How many clips did Natalia sell altogether? ")
    pattern = loaded.tokenizer.encode(text * 20)
    prompts = [[int(t) for t in pattern[i:i + n]] for i, n in enumerate(lengths)]
    keys = jax.random.split(jax.random.key(0), args.rows)
    params = SamplingParams.make(args.rows, temperature=args.temperature)
    settings = []
    for num_slots, max_len, chunk in itertools.product(args.slots, args.max_lens, args.chunks):
        if max(lengths) + args.steps * args.step_tokens > max_len:
            print(f"skip slots={num_slots} max_len={max_len}: the rows do not fit")
            continue
        options = dict(min_window_bucket=max_len) if args.full_window else {}
        if args.page_size:
            options["paging"] = requested_paging(args, num_slots, max_len)
        decoder = Decoder(loaded.model, num_slots=num_slots, max_len=max_len,
                          newline_table=np.zeros(cfg.vocab_size, bool), eos_ids=[],
                          step_chunk=chunk,
                          row_windows=ROW_WINDOWS[args.row_windows], **options)
        windows = []

        def run(decoder: Decoder):
            slots = decoder.allocate(args.rows)
            start = time.perf_counter()
            decoder.prefill(slots, prompts)
            jax.block_until_ready(decoder.cache)
            prefill_s = time.perf_counter() - start
            step_s, tokens, logprobs = [], [], []
            for step in range(args.steps):
                if hasattr(decoder, "attention_window"):  # absent before windows
                    windows.append(decoder.attention_window(slots, args.step_tokens))
                start = time.perf_counter()
                batch = decoder.sample_steps(slots, problem_keys=keys,
                                             node_ids=[step] * args.rows, params=params,
                                             max_tokens=args.step_tokens)
                step_s.append(time.perf_counter() - start)
                assert np.all(batch.num_tokens == args.step_tokens), batch.num_tokens
                tokens.append(batch.tokens)
                logprobs.append(batch.logprobs)
            decoder.free(slots)
            return prefill_s, sum(step_s), np.stack(tokens), np.stack(logprobs)

        start = time.perf_counter()
        _, _, tokens, logprobs = run(decoder)  # compiles prefill and sample_step
        compile_s = time.perf_counter() - start
        timed = [run(decoder) for _ in range(args.reps)]
        assert all(np.array_equal(t, tokens) for _, _, t, _ in timed), "tokens differ"
        prefill_s = statistics.median(p for p, _, _, _ in timed)
        step_s = statistics.median(s for _, s, _, _ in timed)
        per_token_ms = 1e3 * step_s / (args.steps * args.step_tokens)
        window = sorted(set(windows)) or [max_len]
        setting = dict(slots=num_slots, max_len=max_len, chunk=chunk,
                       compile_s=round(compile_s, 2),
                       prefill_ms=round(1e3 * prefill_s, 1),
                       ms_per_token=round(per_token_ms, 2),
                       ms_per_row_token=round(per_token_ms / args.rows, 3),
                       windows=window,
                       tokens_hash=hashlib.sha256(tokens.tobytes()).hexdigest()[:12],
                       logprobs_hash=hashlib.sha256(logprobs.tobytes()).hexdigest()[:12],
                       logprobs=logprobs[0, :2, :4].tolist())
        print(f"slots={num_slots:4d} max_len={max_len:4d} chunk={chunk:3d} windows={window}: "
              f"first call (compiles) {compile_s:6.1f} s, prefill {1e3 * prefill_s:7.1f} ms, "
              f"{per_token_ms:7.1f} ms a token step ({args.rows} rows), "
              f"tokens {setting['tokens_hash']}, logprobs {setting['logprobs_hash']}",
              flush=True)
        settings.append(setting)
        del decoder
    print(json.dumps(dict(settings=settings, rows=args.rows, prompt_tokens=args.prompt_tokens,
                          step_tokens=args.step_tokens, steps=args.steps, reps=args.reps,
                          temperature=args.temperature, full_window=args.full_window,
                          page_size=args.page_size,
                          threads=args.threads, device=jax.devices()[0].device_kind)))


def requested_paging(args: argparse.Namespace, num_slots: int, max_len: int):
    """The paged cache ``--page-size`` and ``--pages`` ask for, sized as decode.pages sizes
    one (``--pages`` 0: a full max_len row for every slot)."""
    from qstar_jax.config import DecodeConfig
    from qstar_jax.decoding.paged_cache import Paging

    pages = DecodeConfig(slots=num_slots, max_len=max_len, page_size=args.page_size,
                         pages=args.pages).num_pages
    return Paging(page_size=args.page_size, num_pages=pages)


def profile_collect(args: argparse.Namespace) -> None:
    """Collect's rollouts per ``--chunks`` value; prints a line per pass and JSON last."""
    import tempfile
    from pathlib import Path

    import jax

    from qstar_jax.config_loading import load_config
    from qstar_jax.decoding.engine import Decoder
    from qstar_jax.decoding.step_sampler import ROW_WINDOWS
    from qstar_jax.parallel import make_mesh
    from qstar_jax.policy.rollouts import DecoderRolloutSampler
    from qstar_jax.policy.runtime import PolicyRuntime
    from qstar_jax.stages.context import RunContext

    config = load_config(args.collect)
    mesh = make_mesh(config.mesh.data, config.mesh.model) if args.run_mesh else None
    ctx = RunContext(config=config, out=Path(tempfile.mkdtemp()), mesh=mesh)
    problems = ctx.problems(config.task.train_split, args.problems)
    prompts = ctx.prompts(problems)
    policy, tokenizer = ctx.policy, ctx.policy.tokenizer
    prompt_tokens = [len(tokenizer.encode(p)) for p in prompts]
    settings = []
    num_slots, max_len = len(problems) * (args.rollouts + 1), config.decode.max_len
    paging = requested_paging(args, num_slots, max_len) if args.page_size else None
    for chunk in args.chunks:
        decoder = Decoder(policy.model, num_slots=num_slots, max_len=max_len,
                          newline_table=tokenizer.newline_table(policy.config.vocab_size),
                          eos_ids=tokenizer.eos_ids, step_chunk=chunk,
                          row_windows=ROW_WINDOWS[args.row_windows], mesh=mesh,
                          paging=paging)
        calls = []  # per step call: (seconds, rows, tokens sampled)
        sample_steps = decoder.sample_steps

        def timed_sample_steps(slots, **kwargs):
            start = time.perf_counter()
            batch = sample_steps(slots, **kwargs)
            calls.append((time.perf_counter() - start, len(slots), int(batch.num_tokens.sum())))
            return batch

        decoder.sample_steps = timed_sample_steps
        runtime = PolicyRuntime(decoder, tokenizer, ctx.task, problems, prompts,
                                seed=config.seed, step_token_cap=args.step_tokens)
        sampler = DecoderRolloutSampler(runtime, max_steps=args.steps)
        passes = []
        for rep in range(1 + args.reps):
            calls.clear()
            work, traces = dict(decoder.step_work), dict(decoder.trace_counts)
            start = time.perf_counter()
            rollouts = sampler.continue_from([(i, ()) for i in range(len(problems))],
                                             args.rollouts, args.temperature)
            wall = time.perf_counter() - start
            work = {k: decoder.step_work[k] - work.get(k, 0) for k in decoder.step_work}
            step_s = sum(s for s, _, _ in calls)
            tokens = sum(t for _, _, t in calls)
            one = dict(
                chunk=chunk, compiles=rep == 0, wall_s=round(wall, 2), step_s=round(step_s, 2),
                step_call_s=[round(s, 2) for s, _, _ in calls],
                rows=[r for _, r, _ in calls], tokens=tokens,
                ms_per_row_token=round(1e3 * step_s / tokens, 2),
                computed_row_tokens=work["row_tokens"], jitted_calls=work["calls"],
                row_windows=decoder.row_windows,
                row_window_calls=work["row_window_calls"],
                useful=round(work["sampled_tokens"] / work["row_tokens"], 3),
                new_step_variants=decoder.trace_counts["sample_step"]
                - traces.get("sample_step", 0),
                text_hash=hashlib.sha256(json.dumps(rollouts).encode()).hexdigest()[:12])
            print(f"chunk={chunk:3d} {'first' if rep == 0 else 'timed'}: {wall:6.1f} s, "
                  f"step calls {step_s:6.1f} s {one['step_call_s']} over rows {one['rows']}, "
                  f"{one['ms_per_row_token']:6.2f} ms a sampled row-token, "
                  f"useful {one['useful']:.3f} of {work['row_tokens']} row-tokens in "
                  f"{work['calls']} jitted calls, {one['new_step_variants']} new variants, "
                  f"text {one['text_hash']}", flush=True)
            passes.append(one)
        settings.append(passes)
        del decoder, runtime, sampler
    print(json.dumps(dict(settings=settings, config=args.collect, problems=len(problems),
                          rollouts=args.rollouts, steps=args.steps,
                          step_tokens=args.step_tokens, temperature=args.temperature,
                          prompt_tokens=[min(prompt_tokens), max(prompt_tokens)],
                          threads=args.threads, max_len=max_len, page_size=args.page_size,
                          pages=None if paging is None else paging.num_pages,
                          mesh=None if mesh is None else dict(mesh.shape),
                          device=jax.devices()[0].device_kind)))


if __name__ == "__main__":
    main()
