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

    python experiments/profile_decode.py [--rows 16] [--slots 64 256] [--max-lens 256 768]
        [--prompt-tokens 200] [--step-tokens 48] [--steps 1] [--reps 2]
        [--temperature 0.9] [--full-window] [--threads N]

Prints a line per setting and, as its last line, JSON: {"settings": [{"slots", "max_len",
"compile_s", "prefill_ms", "ms_per_token", "ms_per_row_token", "windows", "tokens_hash",
"logprobs_hash", "logprobs" (a few, to read differences)},
...], "rows": ..., ...}. ms_per_token: one token for every row (one loop iteration);
windows: the cache positions the step calls attend over (``Decoder.attention_window``;
max_len before it existed, or with ``--full-window``).
"""

from __future__ import annotations

import argparse
import hashlib
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
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
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
    for num_slots in args.slots:
        for max_len in args.max_lens:
            if max(lengths) + args.steps * args.step_tokens > max_len:
                print(f"skip slots={num_slots} max_len={max_len}: the rows do not fit")
                continue
            options = dict(min_window_bucket=max_len) if args.full_window else {}
            decoder = Decoder(loaded.model, num_slots=num_slots, max_len=max_len,
                              newline_table=np.zeros(cfg.vocab_size, bool), eos_ids=[],
                              **options)
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
            setting = dict(slots=num_slots, max_len=max_len, compile_s=round(compile_s, 2),
                           prefill_ms=round(1e3 * prefill_s, 1),
                           ms_per_token=round(per_token_ms, 2),
                           ms_per_row_token=round(per_token_ms / args.rows, 3),
                           windows=window,
                           tokens_hash=hashlib.sha256(tokens.tobytes()).hexdigest()[:12],
                           logprobs_hash=hashlib.sha256(logprobs.tobytes()).hexdigest()[:12],
                           logprobs=logprobs[0, :2, :4].tolist())
            print(f"slots={num_slots:4d} max_len={max_len:4d} windows={window}: "
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


if __name__ == "__main__":
    main()
