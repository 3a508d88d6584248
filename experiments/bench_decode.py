"""Decode throughput: our Decoder against transformers ``generate`` on the same weights.

SmolLM2-135M-Instruct (GGUF, dequantized by both sides), CPU, a 64-token prompt and 64
greedy new tokens per row (no step boundary, no EOS stop), at several batch sizes. Both
sides get the same CPUs: the process is pinned to ``--threads`` cores before JAX or
torch start, and torch uses that many threads. Timings include the prompt's prefill.

    python experiments/bench_decode.py [--batches 1 8 32] [--reps 5] [--threads N]

Prints a table, the memory-bandwidth floor at batch 1, and as its last line JSON:
{"batch": [...], "jax_tok_s": [...], "hf_tok_s": [...], "ratio": [...]} (ratio = ours / HF).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

PROMPT_TOKENS = 64
NEW_TOKENS = 64
PROMPT_TEXT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
               "clips in May. How many clips did Natalia sell altogether in April and May? ")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions after warm-up")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="a packaged alias or a .gguf file")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="CPU cores for both sides (default: all this process may use)")
    return parser.parse_args()


def median_seconds(run, reps: int) -> float:
    run()  # warm-up: compiles, allocator growth
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(nbytes: int = 1 << 29) -> float:
    """Bytes per second that a large numpy copy moves (read + write)."""
    import numpy as np
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    seconds = median_seconds(lambda: np.copyto(dst, src), 5)
    return 2 * nbytes / seconds


def main() -> None:
    args = parse_args()
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    # Imported only now, so that both thread pools size themselves to the pinned cores.
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers
    from flax import nnx

    from qstar_jax.decoding.engine import Decoder
    from qstar_jax.decoding.sampling import SamplingParams
    from qstar_jax.models.loading import PACKAGED_MODELS, load_model, resolve_alias

    torch.set_num_threads(args.threads)
    gguf_path = resolve_alias(args.model) if args.model in PACKAGED_MODELS else args.model
    loaded = load_model(gguf_path, dtype=jnp.dtype(args.dtype))
    cfg = loaded.config
    prompt = loaded.tokenizer.encode(PROMPT_TEXT * 8)[:PROMPT_TOKENS]
    decoder = Decoder(loaded.model, num_slots=max(args.batches),
                      max_len=PROMPT_TOKENS + NEW_TOKENS,
                      newline_table=np.zeros(cfg.vocab_size, bool), eos_ids=[])
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=getattr(torch, args.dtype)).eval()

    def ours(batch):
        slots = decoder.allocate(batch)
        decoder.prefill(slots, [prompt] * batch)
        step = decoder.sample_steps(slots, problem_keys=jax.random.split(jax.random.key(0), batch),
                                    node_ids=[0] * batch, params=SamplingParams.make(batch),
                                    max_tokens=NEW_TOKENS)
        decoder.free(slots)
        return step.tokens

    # No EOS, like our decoder here: generation neither stops nor has its logits altered.
    # The model's own generation config must lose its EOS too, or generate merges it back in.
    hf_model.generation_config.eos_token_id = None
    greedy_no_eos = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None,
        pad_token_id=loaded.tokenizer.pad_id)

    def theirs(batch):
        with torch.inference_mode():
            out = hf_model.generate(torch.tensor([prompt] * batch), generation_config=greedy_no_eos,
                                    attention_mask=torch.ones(batch, PROMPT_TOKENS,
                                                              dtype=torch.long))
        return out[:, PROMPT_TOKENS:].numpy()

    agree = int(np.cumprod(ours(1)[0] == theirs(1)[0]).sum())
    print(f"{args.model}, {args.dtype}, {args.threads} threads; greedy tokens agreeing with "
          f"transformers before the first difference: {agree}/{NEW_TOKENS}")
    jax_tok_s, hf_tok_s = [], []
    print(f"{'batch':>5} {'ours tok/s':>11} {'HF tok/s':>9} {'ratio':>6}")
    for batch in args.batches:
        tokens = batch * NEW_TOKENS
        jax_tok_s.append(tokens / median_seconds(lambda: ours(batch), args.reps))
        hf_tok_s.append(tokens / median_seconds(lambda: theirs(batch), args.reps))
        print(f"{batch:>5} {jax_tok_s[-1]:>11.1f} {hf_tok_s[-1]:>9.1f} "
              f"{jax_tok_s[-1] / hf_tok_s[-1]:>6.2f}", flush=True)

    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(loaded.model)))
    bandwidth = copy_bandwidth()
    print(f"batch-1 memory-bandwidth floor: {weight_bytes / 1e6:.0f} MB of weights per token at "
          f"{bandwidth / 1e9:.1f} GB/s copy bandwidth = {weight_bytes / bandwidth * 1e3:.1f} ms "
          f"per token, at most {bandwidth / weight_bytes:.0f} tok/s")
    print(json.dumps({"batch": args.batches, "jax_tok_s": [round(x, 1) for x in jax_tok_s],
                      "hf_tok_s": [round(x, 1) for x in hf_tok_s],
                      "ratio": [round(a / b, 3) for a, b in zip(jax_tok_s, hf_tok_s)]}))


if __name__ == "__main__":
    main()
