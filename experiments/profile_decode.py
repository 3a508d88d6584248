"""Where the step sampler's time goes on SmolLM2-135M-Instruct, CPU, in collect's setting.

The collect stage steps rollouts through ``PolicyRuntime``: prompts prefilled into slots
(``Decoder.prefill``), then one reasoning step at a time for every live row
(``Decoder.sample_steps``) over a slot pool of ``decode.slots`` slots of
``decode.max_len`` tokens. This makes the same calls on the real model and times them
for each (slots, max_len) setting asked for: ``--rows`` rows with prompts of about
``--prompt-tokens`` tokens (lengths spread by +-10%, as real prompts are), then
``--steps`` consecutive steps of ``--step-tokens`` tokens each (no newline or EOS stops,
so every row makes exactly that many; sampled at temperature 0.9 with seeded keys).

What scales with what says where the time goes: a per-token time that grows with
``max_len`` at a fixed row content means the sampler touches whole cache rows (the
gather and attention over every position), one that grows with ``slots`` means it
copies the pool. The sampled tokens of every setting are hashed: equal hashes mean the
settings sample the same tokens (they must), equal logprob hashes the same bits.
``--chunks``: the decoder's ``step_chunk`` values to time (0: a step in one call).

    python experiments/profile_decode.py [--rows 16] [--slots 64 256] [--max-lens 256 768]
        [--prompt-tokens 200] [--step-tokens 48] [--steps 1] [--reps 2]
        [--temperature 0.9] [--full-window] [--chunks 0] [--threads N]

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
        [--chunks 0 8 16 32]

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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--slots", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--max-lens", type=int, nargs="+", default=[256, 768])
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--step-tokens", type=int, default=48)
    parser.add_argument("--steps", type=int, default=1, help="step calls per repetition")
    parser.add_argument("--reps", type=int, default=2, help="timed repetitions after warm-up")
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--full-window", action="store_true",
                        help="attend over whole max_len rows (min_window_bucket = max_len)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--chunks", type=int, nargs="+", default=[0],
                        help="Decoder step_chunk values to time (0: a step in one call)")
    parser.add_argument("--collect", metavar="CONFIG",
                        help="time collect-like rollouts of this run config's task")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    if args.collect:
        profile_collect(args)
        return
    import jax
    import jax.numpy as jnp
    import numpy as np

    from qstar_jax.decoding.engine import Decoder
    from qstar_jax.decoding.sampling import SamplingParams
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
        decoder = Decoder(loaded.model, num_slots=num_slots, max_len=max_len,
                          newline_table=np.zeros(cfg.vocab_size, bool), eos_ids=[],
                          step_chunk=chunk, **options)
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
                          threads=args.threads, device=jax.devices()[0].device_kind)))


def profile_collect(args: argparse.Namespace) -> None:
    """Collect's rollouts per ``--chunks`` value; prints a line per pass and JSON last."""
    import tempfile
    from pathlib import Path

    import jax

    from qstar_jax.config import load_config
    from qstar_jax.decoding.engine import Decoder
    from qstar_jax.policy.rollouts import DecoderRolloutSampler
    from qstar_jax.policy.runtime import PolicyRuntime
    from qstar_jax.stages.context import RunContext

    config = load_config(args.collect)
    ctx = RunContext(config=config, out=Path(tempfile.mkdtemp()))
    problems = ctx.problems(config.task.train_split, args.problems)
    prompts = ctx.prompts(problems)
    policy, tokenizer = ctx.policy, ctx.policy.tokenizer
    prompt_tokens = [len(tokenizer.encode(p)) for p in prompts]
    settings = []
    for chunk in args.chunks:
        decoder = Decoder(policy.model, num_slots=len(problems) * (args.rollouts + 1),
                          max_len=config.decode.max_len,
                          newline_table=tokenizer.newline_table(policy.config.vocab_size),
                          eos_ids=tokenizer.eos_ids, step_chunk=chunk)
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
                          threads=args.threads, max_len=config.decode.max_len,
                          device=jax.devices()[0].device_kind)))


if __name__ == "__main__":
    main()
