"""Decode throughput: our Decoder against transformers ``generate`` on the same weights.

SmolLM2-135M-Instruct (GGUF, dequantized by both sides), CPU, a 64-token prompt and 64
greedy new tokens per row (no step boundary, no EOS stop), at several batch sizes. Both
sides get the same CPUs: the process is pinned to ``--threads`` cores before JAX or
torch start, and torch uses that many threads. Timings include the prompt's prefill.

    python experiments/bench_decode.py [--batches 1 8 32] [--reps 5] [--threads N]

On an accelerator, ``--random-llama 1b`` times our decoder alone on random weights of
Llama-3.2-1B's shape (no checkpoint, no transformers side), by default in bfloat16:

    python experiments/bench_decode.py --random-llama 1b --batches 1 8 32 128

``--page-size N`` runs our decoder on a paged cache of N-token pages instead of row slots,
its decode attention forced by ``--attention`` (``pallas``: the kernel of
``qstar_kernels``, interpreted on CPU; ``jnp``; ``auto``: the kernel on GPU/TPU, jnp on
CPU), so the kernel and the ``jnp`` path are timed on the same model:

    python experiments/bench_decode.py --random-llama 1b --page-size 16 --attention pallas

``--layer-weights per-layer|per-layer-transposed|per-layer-kernels|stacked|unrolled`` sets
how the step loop reads the layers' weights (one array per layer in a Python loop, with
the attention's projections as loaded or transposed, or every product as rows run by the
row-products kernels, or slices of the stacked arrays under a scan, rolled or unrolled;
the default is the decoder's: ``qstar_jax/decoding/weights``),
``--no-matmul-cap`` skips the matmul cap below (minutes of compiling on a GPU), and
``--trace DIR`` profiles one more generation per batch (``device_trace``), with the step
loop's optimized HLO saved beside its trace and read to say what each busy kernel computes.

Besides the whole-generation rate it times the 64 new tokens alone and reads them
against the memory roofline: a decode step must read every weight and each row's KV
cache once, so at the measured copy bandwidth of the device no decoder can beat
batch / ((weight bytes + KV bytes) / bandwidth) tokens per second.

Where many rows share a step, the matrix products rather than memory set the limit, so
it also times the products alone: every weight product of the generation (prompt and
new tokens), each shape run by XLA as a separate operation, with the weights laid out
and fused as the decoder holds them for the prefill and for the step loop (on a CPU by
default the scan's weights as loaded, then the per-layer copy as rows: ``layer_products``).
Where they take the time (a
real model, not the tiny test one), a decoder built on XLA's products cannot beat
batch x 64 tokens over their sum: the "matmul cap", and its ratio to transformers the
"ratio cap".

Prints a table and as its last line JSON: {"batch": [...], "jax_tok_s": [...],
"hf_tok_s": [...], "ratio": [...], "decode_tok_s": [...], "roofline_tok_s": [...],
"matmul_cap_tok_s": [...], "bandwidth_gb_s": ..., "device": ..., "page_size": ...,
"attention": ..., "layer_weights": ..., "row_windows": ...} (ratio = ours / HF; the HF
lists are null without the transformers side, matmul_cap_tok_s with --no-matmul-cap;
page_size 0 and attention null on row slots, else the attention the pages resolved to;
layer_weights "per-layer", "per-layer-transposed", "per-layer-kernels", "stacked" or
"unrolled", as the step loop read them; row_windows true where it ran over a copy of its
rows' windows).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import statistics
import time
from pathlib import Path

from cli_args import cpu_threads, positive_int
from device_trace import traced

PROMPT_TOKENS = 64
NEW_TOKENS = 64
PROMPT_TEXT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
               "clips in May. How many clips did Natalia sell altogether in April and May? ")
# Random-weight shapes: Llama-3.2-1B, and a tiny one that checks the script runs anywhere.
RANDOM_LLAMAS = {
    "1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
               num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               head_dim=64, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
               max_position_embeddings=131072),
    "tiny": dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=positive_int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--reps", type=positive_int, default=5,
                        help="timed repetitions after warm-up")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"],
                        help="default: float32, bfloat16 with --random-llama")
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="a packaged alias, a .gguf file or an HF directory")
    parser.add_argument("--random-llama", choices=sorted(RANDOM_LLAMAS),
                        help="random weights of this shape instead of --model; ours only")
    parser.add_argument("--page-size", type=int, default=0,
                        help="tokens per page of a paged cache for ours (0: row slots)")
    parser.add_argument("--attention", choices=["auto", "pallas", "jnp"], default="auto",
                        help="the paged cache's decode attention (with --page-size)")
    parser.add_argument("--threads", type=cpu_threads, default=len(os.sched_getaffinity(0)),
                        help="CPU cores for both sides (default: all this process may use)")
    parser.add_argument("--layer-weights", default="auto",
                        help="how the step loop reads the layers' weights: auto, per-layer, "
                             "per-layer-transposed, per-layer-kernels, stacked or unrolled "
                             "(Decoder's layer_weights, qstar_jax/decoding/weights.py)")
    parser.add_argument("--row-windows", choices=["auto", "gather", "copy"], default="auto",
                        help="copy: the step loop over a copy of its rows' cache windows "
                             "(Decoder's row_windows, qstar_jax/models/row_windows.py; "
                             "not with the paged-attention kernel); auto: copy on a CPU "
                             "where it can, on pages while the copies fit a sixteenth of "
                             "the pool")
    parser.add_argument("--no-matmul-cap", dest="matmul_cap", action="store_false",
                        help="skip the matmul cap (it compiles every product shape per batch: "
                             "minutes on a GPU, where the roofline is the bound that matters)")
    parser.add_argument("--trace", type=Path, default=None,
                        help="after each batch's timing, one more generation under the "
                             "profiler: its trace saved in this directory and its busiest "
                             "kernels printed (experiments/device_trace.py)")
    args = parser.parse_args()
    if args.page_size < 0:
        parser.error(f"--page-size must be >= 0, got {args.page_size}")
    if args.dtype is None:
        args.dtype = "bfloat16" if args.random_llama else "float32"
    return args


def timings(run, reps: int) -> list[float]:
    """Seconds of ``reps`` calls of ``run``, after one warm-up call (compilation, page
    faults, allocator growth)."""
    run()
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return seconds


def median_seconds(run, reps: int) -> float:
    return statistics.median(timings(run, reps))


def fastest_seconds(run, reps: int) -> float:
    """The best the hardware gives, for rooflines and caps (a shared host's medians swing)."""
    return min(timings(run, reps))


def copy_bandwidth(reps: int = 10) -> float:
    """Bytes per second a large copy moves (read + write) in the memory the weights live
    in: a numpy copy of 512 MiB on a CPU (multi-threaded, unlike XLA:CPU's), an on-device
    one of 4 GiB else (a call's dispatch, tens of microseconds, is then a few percent of
    it; at 512 MiB an H200 read 2.4-2.8 TB/s). The fastest of ``reps`` copies: on a shared
    host the median can halve from one run to the next, and a roofline should be the best
    the memory gives."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    on_cpu = jax.default_backend() == "cpu"
    nbytes = 1 << (29 if on_cpu else 32)
    if on_cpu:
        src = np.ones(nbytes // 4, np.float32)
        dst = np.empty_like(src)
        copy = functools.partial(np.copyto, dst, src)
    else:
        src = jnp.ones(nbytes // 4, jnp.float32)
        plus_one = jax.jit(lambda x: x + 1.0)

        def copy():
            plus_one(src).block_until_ready()
    return 2 * nbytes / fastest_seconds(copy, reps)


def roofline_tok_s(batch: int, weight_bytes: int, kv_bytes_per_token: int,
                   bandwidth: float) -> float:
    """The most tokens/s a decode step can give at ``bandwidth``: every weight and each
    row's cache (at the mean length over the new tokens) read once per step."""
    mean_length = PROMPT_TOKENS + NEW_TOKENS / 2
    step_bytes = weight_bytes + batch * mean_length * kv_bytes_per_token
    return batch * bandwidth / step_bytes


def kv_token_bytes(cfg, dtype) -> int:
    """Bytes one token's keys and values take in every layer's cache, stored as ``dtype``."""
    import numpy as np
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * np.dtype(dtype).itemsize


def layer_product_shapes(cfg) -> list[tuple[int, int]]:
    """(inputs, outputs) of each weight matrix product one decoder layer applies to a token."""
    e, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_heads * d, cfg.num_kv_heads * d
    return [(e, q), (e, kv), (e, kv), (q, e), (e, f), (e, f), (f, e)]


def layer_products(cfg, layout: str) -> list[tuple[tuple[int, int], bool]]:
    """((inputs, outputs), held as rows) of each weight product one decoder layer applies
    to a token, as ``layout`` (a resolved ``decode.layer_weights``) holds the weights:
    "per-layer-transposed" q, k and v as one product and o, over rows [out, in];
    "per-layer-kernels" those and the MLP's too, gate and up as one
    (``models/llama.unstack_layers``); otherwise ``layer_product_shapes`` as loaded."""
    loaded = [(shape, False) for shape in layer_product_shapes(cfg)]
    if layout not in ("per-layer-transposed", "per-layer-kernels"):
        return loaded
    e, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_heads * d, cfg.num_kv_heads * d
    attention = [((e, q + 2 * kv), True), ((q, e), True)]
    mlp = [((e, 2 * f), True), ((f, e), True)] if layout == "per-layer-kernels" else loaded[4:]
    return attention + mlp


def product_seconds(rows: int, shape: tuple[int, int], copies: int, dtype,
                    as_rows: bool = False, reps: int = 3) -> float:
    """Seconds XLA takes for one [rows, n_in] x [n_in, n_out] product, on ``copies``
    distinct weights (they stream from memory as in a forward pass): one jitted call with
    ``2 * copies`` products less one with ``copies``, so the call's dispatch cancels; each
    call the fastest of ``reps``. ``as_rows``: the weights held [n_out, n_in], each output
    one row's dot product with the input."""
    import jax
    n_in, n_out = shape
    keys = jax.random.split(jax.random.key(0), 2 * copies + 1)
    x = jax.random.normal(keys[0], (rows, n_in), dtype)
    held = (n_out, n_in) if as_rows else shape
    weights = [jax.random.normal(key, held, dtype) for key in keys[1:]]
    contract = 1 if as_rows else 0
    products = jax.jit(lambda x, weights: [
        jax.lax.dot_general(x, w, (((1,), (contract,)), ((), ()))) for w in weights])

    def fastest(weights):
        return fastest_seconds(lambda: jax.block_until_ready(products(x, weights)), reps)

    return max(fastest(weights) - fastest(weights[:copies]), 1e-9) / copies


def matmul_cap_tok_s(cfg, batch: int, dtype, layout: str = "per-layer",
                     prefill_layout: str = "stacked") -> float:
    """The most tokens/s a decoder built on XLA's matrix products can give here: the
    generation's weight products alone (every layer on the prompt's batch x 64 rows, as
    ``prefill_layout`` holds the weights, then every layer, as ``layout`` holds them, and
    the LM head on the batch's rows per new token: a tied head reads the embeddings as
    rows), each shape timed as XLA runs it, with nothing else (no attention, no cache, no
    sampling)."""
    layers = cfg.num_layers

    def layer_pass(rows, held):  # a shape a layer applies twice (k and v) is timed once
        products = collections.Counter(layer_products(cfg, held))
        return layers * sum(count * product_seconds(rows, shape, layers, dtype, as_rows)
                            for (shape, as_rows), count in products.items())

    head = product_seconds(batch, (cfg.hidden_size, cfg.vocab_size), 1, dtype,
                           cfg.tie_word_embeddings)
    total = (layer_pass(batch * PROMPT_TOKENS, prefill_layout)
             + NEW_TOKENS * (layer_pass(batch, layout) + head))
    return batch * NEW_TOKENS / total


def transformers_model(path: Path, dtype: str, threads: int):
    """The same model in transformers (a GGUF dequantized as our loader does, or an HF
    directory), in eval mode, on the GPU where torch sees one, else with torch on
    ``threads`` threads."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    where = dict(gguf_file=path.name) if path.is_file() else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent if path.is_file() else path), **where, dtype=getattr(torch, dtype))
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def transformers_generate(path: Path, dtype: str, threads: int, prompt: list[int],
                          pad_id: int):
    """``generate`` of the same model in transformers: batch -> new token ids [batch, 64]."""
    import torch
    import transformers

    model = transformers_model(path, dtype, threads)
    # No EOS, like our decoder here: generation neither stops nor has its logits altered.
    # The model's own generation config must lose its EOS too, or generate merges it back in.
    model.generation_config.eos_token_id = None
    greedy_no_eos = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=pad_id)

    def generate(batch):
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([prompt] * batch, device=model.device),
                generation_config=greedy_no_eos,
                attention_mask=torch.ones(batch, PROMPT_TOKENS, dtype=torch.long,
                                          device=model.device))
        return out[:, PROMPT_TOKENS:].cpu().numpy()

    return generate


def main() -> None:
    args = parse_args()
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    # Imported only now, so that both thread pools size themselves to the pinned cores.
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from qstar_jax.decoding.engine import Decoder
    from qstar_jax.decoding.paged_cache import Paging
    from qstar_kernels import resolve_implementation
    from qstar_jax.decoding.sampling import SamplingParams
    from qstar_jax.decoding.step_sampler import ROW_WINDOWS

    dtype = jnp.dtype(args.dtype)
    theirs = None
    if args.random_llama:
        from qstar_jax.models.config import ModelConfig
        from qstar_jax.models.llama import LlamaModel
        cfg = ModelConfig.from_hf(RANDOM_LLAMAS[args.random_llama])
        model = LlamaModel(cfg, dtype=dtype, rngs=nnx.Rngs(0))
        prompt = [(7 * i + 3) % cfg.vocab_size for i in range(PROMPT_TOKENS)]
        name = f"random-weight Llama ({args.random_llama})"
    else:
        from qstar_jax.models.loading import load_model, source_path
        path = source_path(args.model)
        loaded = load_model(path, dtype=dtype)
        model, cfg, name = loaded.model, loaded.config, args.model
        prompt = loaded.tokenizer.encode(PROMPT_TEXT * 8)[:PROMPT_TOKENS]
        theirs = transformers_generate(path, args.dtype, args.threads, prompt,
                                       loaded.tokenizer.pad_id)
    max_len = PROMPT_TOKENS + NEW_TOKENS
    paging = None if not args.page_size else Paging(  # every row's max_len, and no more
        page_size=args.page_size, attention=args.attention,
        num_pages=max(args.batches) * -(-max_len // args.page_size))
    decoder = Decoder(model, num_slots=max(args.batches), max_len=max_len,
                      newline_table=np.zeros(cfg.vocab_size, bool), eos_ids=[], paging=paging,
                      layer_weights=args.layer_weights,
                      row_windows=ROW_WINDOWS[args.row_windows])
    prefill_s: list[float] = []  # of the latest calls of ours()

    def ours(batch):
        slots = decoder.allocate(batch)
        start = time.perf_counter()
        decoder.prefill(slots, [prompt] * batch)
        jax.block_until_ready(decoder.cache)
        prefill_s.append(time.perf_counter() - start)
        step = decoder.sample_steps(slots, problem_keys=jax.random.split(jax.random.key(0), batch),
                                    node_ids=[0] * batch, params=SamplingParams.make(batch),
                                    max_tokens=NEW_TOKENS)
        decoder.free(slots)
        return step.tokens

    device = jax.devices()[0].device_kind
    print(f"{name}, {args.dtype}, {device}, {args.threads} host threads")
    if theirs is not None:
        agree = int(np.cumprod(ours(1)[0] == theirs(1)[0]).sum())
        print(f"greedy tokens agreeing with transformers before the first difference: "
              f"{agree}/{NEW_TOKENS}")
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
    kv_bytes_per_token = kv_token_bytes(cfg, dtype)
    bandwidth = copy_bandwidth()
    print(f"{weight_bytes / 1e6:.0f} MB of weights, {kv_bytes_per_token / 1e3:.1f} kB of KV cache "
          f"per token, {bandwidth / 1e9:.1f} GB/s measured copy bandwidth")
    jax_tok_s, hf_tok_s, decode_tok_s, roofline, matmul_cap = [], [], [], [], []
    print(f"{'batch':>5} {'ours tok/s':>11} {'decode tok/s':>13} {'roofline':>9} {'of it':>6} "
          f"{'matmul cap':>11} {'HF tok/s':>9} {'ratio':>6} {'ratio cap':>10}")
    for batch in args.batches:
        tokens = batch * NEW_TOKENS
        prefill_s.clear()
        total = median_seconds(lambda: ours(batch), args.reps)
        jax_tok_s.append(tokens / total)
        decode_tok_s.append(tokens / (total - statistics.median(prefill_s[1:])))
        roofline.append(roofline_tok_s(batch, weight_bytes, kv_bytes_per_token, bandwidth))
        if args.matmul_cap:
            matmul_cap.append(matmul_cap_tok_s(cfg, batch, dtype, decoder.layer_weights,
                                               decoder.prefill_layer_weights))
        if theirs is not None:
            hf_tok_s.append(tokens / median_seconds(lambda: theirs(batch), args.reps))
        if args.trace is not None:  # not timed: the profiler slows the host
            # The step loop's HLO says what its busiest kernels compute.
            with traced(args.trace, f"decode_batch{batch}",
                        hlo=lambda: decoder.compiled_text("sample_step")):
                ours(batch)
        cap = f"{matmul_cap[-1]:>11.0f}" if matmul_cap else f"{'-':>11}"
        hf = (f"{hf_tok_s[-1]:>9.1f} {jax_tok_s[-1] / hf_tok_s[-1]:>6.2f} "
              + (f"{matmul_cap[-1] / hf_tok_s[-1]:>10.2f}" if matmul_cap else "")
              if hf_tok_s else "")
        print(f"{batch:>5} {jax_tok_s[-1]:>11.1f} {decode_tok_s[-1]:>13.1f} {roofline[-1]:>9.0f} "
              f"{decode_tok_s[-1] / roofline[-1]:>6.0%} {cap} {hf}",
              flush=True)

    def rounded(values):
        return [round(x, 1) for x in values] if values else None

    print(json.dumps({
        "batch": args.batches, "jax_tok_s": rounded(jax_tok_s), "hf_tok_s": rounded(hf_tok_s),
        "ratio": [round(a / b, 3) for a, b in zip(jax_tok_s, hf_tok_s)] if hf_tok_s else None,
        "decode_tok_s": rounded(decode_tok_s), "roofline_tok_s": rounded(roofline),
        "matmul_cap_tok_s": rounded(matmul_cap),
        "bandwidth_gb_s": round(bandwidth / 1e9, 1), "device": device,
        # What the decoder was built with: its pages' size (0: row slots) and the decode
        # attention they resolve to on this device (jnp, pallas_gpu, pallas_interpret, ...).
        "page_size": 0 if decoder.pages is None else decoder.pages.page_size,
        "layer_weights": decoder.layer_weights, "row_windows": decoder.row_windows,
        "attention": None if decoder.pages is None else resolve_implementation(args.attention)}))


if __name__ == "__main__":
    main()
