"""Where a batched decode step's time goes: our decoder on SmolLM2-135M-Instruct, CPU.

``bench_decode.py`` times whole generations (prompt prefill plus new tokens). This splits
them, for one batch size, into parts that can each be read against the matrix-multiply
work they do:

- prefill: the 64-token prompt of every row written into its slot;
- per new token in the step sampler (from two runs that differ only in the token count,
  so the prefill cancels);
- one forward pass of the decoder stack for one token per row, scanned over the stacked
  layer weights (the sampler on CPU loops over per-layer copies instead, see
  ``DecoderWeights``), with the KV cache (slot gather, scatter and attention over the
  slot; cache donated, as the sampler does) and without it (each row attends only to
  itself), and the LM head on its own;
- the same cached forward with the layers unrolled in Python over one cache array per
  layer instead of scanned over the stacked cache: what that layout would buy.

    python experiments/decode_step_breakdown.py [--batch 32] [--reps 5] [--threads N]

Prints a table and, as its last line, JSON: {"batch": B, "prefill_s": ...,
"sampler_ms_per_token": ..., "forward_cached_ms": ..., "forward_uncached_ms": ...,
"forward_unrolled_ms": ..., "lm_head_ms": ..., "gflop_per_token_step": ...}.
"""

from __future__ import annotations

import argparse
import json
import os

# The sibling benchmark's shapes and timer (this script's folder is on sys.path when it
# runs as ``python experiments/decode_step_breakdown.py``).
from bench_decode import NEW_TOKENS, PROMPT_TOKENS, median_seconds
from cli_args import cpu_threads, positive_int


def median_ms(run, reps: int) -> float:
    return 1e3 * median_seconds(run, reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=positive_int, default=32)
    parser.add_argument("--reps", type=positive_int, default=5)
    parser.add_argument("--threads", type=cpu_threads, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from qstar_jax.decoding.engine import Decoder
    from qstar_jax.decoding.sampling import SamplingParams
    from qstar_jax.models.loading import load_model

    loaded = load_model("smollm2-135m-instruct", dtype=jnp.float32)
    cfg, batch = loaded.config, args.batch
    max_len = PROMPT_TOKENS + NEW_TOKENS
    decoder = Decoder(loaded.model, num_slots=batch, max_len=max_len,
                      newline_table=np.zeros(cfg.vocab_size, bool), eos_ids=[])
    prompt = [int(t) % cfg.vocab_size for t in range(1000, 1000 + PROMPT_TOKENS)]

    def generate(new_tokens: int, *, sample: bool = True):
        slots = decoder.allocate(batch)
        decoder.prefill(slots, [prompt] * batch)
        if sample:
            decoder.sample_steps(slots, problem_keys=jax.random.split(jax.random.key(0), batch),
                                 node_ids=[0] * batch, params=SamplingParams.make(batch),
                                 max_tokens=new_tokens)
        jax.block_until_ready(decoder.cache)
        decoder.free(slots)

    prefill_ms = median_ms(lambda: generate(0, sample=False), args.reps)
    half = NEW_TOKENS // 2
    sampler_ms = (median_ms(lambda: generate(NEW_TOKENS), args.reps)
                  - median_ms(lambda: generate(half), args.reps)) / (NEW_TOKENS - half)

    graphdef, state = nnx.split(loaded.model)
    tokens = jnp.zeros((batch, 1), jnp.int32)
    positions = jnp.full((batch, 1), PROMPT_TOKENS, jnp.int32)
    slots = jnp.arange(batch, dtype=jnp.int32)

    def cached(state, k, v):
        return nnx.merge(graphdef, state)(tokens, positions, slots, k, v)

    cached_jit = jax.jit(cached, donate_argnums=(1, 2))
    kv = [jnp.zeros_like(decoder.cache.k), jnp.zeros_like(decoder.cache.v)]

    def run_cached():
        hidden, kv[0], kv[1] = cached_jit(state, kv[0], kv[1])
        jax.block_until_ready(hidden)

    layer_def, stacked = nnx.split(loaded.model.layers)
    per_layer = [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(cfg.num_layers)]

    def unrolled(state, per_layer, ks, vs):
        model = nnx.merge(graphdef, state)
        x, new_k, new_v = model.embed_tokens(tokens), [], []
        for i, layer_state in enumerate(per_layer):
            x, k, v = nnx.merge(layer_def, layer_state)(x, positions, slots, ks[i][None],
                                                        vs[i][None], 0, model.inv_freq[...])
            new_k.append(k[0])
            new_v.append(v[0])
        return model.norm(x), new_k, new_v

    unrolled_jit = jax.jit(unrolled, donate_argnums=(2, 3))
    layer_kv = [[jnp.zeros_like(stacked[0]) for _ in range(cfg.num_layers)]
                for stacked in (decoder.cache.k, decoder.cache.v)]

    def run_unrolled():
        hidden, layer_kv[0], layer_kv[1] = unrolled_jit(state, per_layer, *layer_kv)
        jax.block_until_ready(hidden)

    uncached = jax.jit(lambda state: nnx.merge(graphdef, state).forward_sequence(tokens))
    hidden = uncached(state)
    head = jax.jit(lambda state, h: nnx.merge(graphdef, state).logits(h))
    parts = {
        "forward_cached_ms": median_ms(run_cached, args.reps),
        "forward_uncached_ms": median_ms(lambda: jax.block_until_ready(uncached(state)),
                                         args.reps),
        "forward_unrolled_ms": median_ms(run_unrolled, args.reps),
        "lm_head_ms": median_ms(lambda: jax.block_until_ready(head(state, hidden[:, 0])),
                                args.reps),
    }
    layer_params = sum(x.size for x in jax.tree.leaves(nnx.state(loaded.model.layers)))
    gflop = 2 * batch * (layer_params + cfg.vocab_size * cfg.hidden_size) / 1e9
    print(f"SmolLM2-135M-Instruct, float32, batch {batch}, {args.threads} threads")
    print(f"prefill of {batch} x {PROMPT_TOKENS} tokens: {prefill_ms / 1e3:.2f} s")
    print(f"step sampler, per new token: {sampler_ms:.1f} ms "
          f"({gflop:.1f} GFLOP of layer and LM-head matmuls: "
          f"{gflop / sampler_ms * 1e3:.0f} GFLOP/s)")
    for name, ms in parts.items():
        print(f"  {name.removesuffix('_ms').replace('_', ' ')}: {ms:.1f} ms")
    print(json.dumps({"batch": batch, "prefill_s": round(prefill_ms / 1e3, 3),
                      "sampler_ms_per_token": round(sampler_ms, 1),
                      **{k: round(v, 1) for k, v in parts.items()},
                      "gflop_per_token_step": round(gflop, 2)}))


if __name__ == "__main__":
    main()
