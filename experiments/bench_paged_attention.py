"""The paged decode-attention kernel against the ``jnp`` path, alone, on a search round's
shapes (issue 18: "the kernel against the jnp path").

A trie or step round of a search decodes one token for each of B rows whose sequences
(prompt and steps) are ragged, some hundreds of tokens, on pages shuffled over the pool
as forks leave them. This times one layer's decode attention over such rows as the
decoder calls it inside its token loop, the whole pool of every layer passed and the
layer's pages read in place, two ways: the ``jnp`` path (the CPU default; the model's
own code, as the decoder runs it with ``attention="jnp"``: each row's pages gathered,
``PagedRows.gather``, and attended over, ``Attention.attend_keys``, through
``cascade_attention.paged_attention``) and, on a GPU, the Pallas kernel
(``qstar_kernels.paged_decode_attention_gpu``) reading ``--keys-per-block`` keys (that
many over the page size pages) each step of its loop. Each call's figure is a jitted
loop over the L layers, divided by L, the median of ``--reps``. Every kernel's output is
checked against the ``jnp`` path's.

On CPU the Pallas kernel only interprets (a test path, not a speed one), so only the
``jnp`` path is timed there unless ``--interpret`` asks for it.

    python experiments/bench_paged_attention.py [--rows 32] [--lengths 200 352]
        [--page-size 16] [--heads 9 --kv-heads 3 --head-dim 64 --layers 30]
        [--keys-per-block 16 64 128] [--dtype bfloat16] [--reps 20] [--interpret]

Prints a line per implementation and, as its last line, JSON: {"backend", "rows",
"lengths", "page_size", "dtype", "us_per_call": {name: µs}, "max_abs_diff": {name: x},
"kernel_vs_jnp": jnp µs / the fastest kernel's µs (null when no kernel was timed)}.
"""

from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cascade_attention import paged_attention, timed
from cli_args import positive_int
from qstar_jax.models.config import ModelConfig
from qstar_jax.models.llama import Attention
from qstar_kernels import paged_decode_attention_gpu


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=positive_int, default=32, help="slots decoding side by side")
    parser.add_argument("--lengths", type=positive_int, nargs=2, default=[200, 352],
                        metavar=("MIN", "MAX"), help="rows' tokens, drawn uniformly")
    parser.add_argument("--page-size", type=positive_int, default=16)
    parser.add_argument("--heads", type=positive_int, default=9, help="default: SmolLM2-135M's")
    parser.add_argument("--kv-heads", type=positive_int, default=3)
    parser.add_argument("--head-dim", type=positive_int, default=64)
    parser.add_argument("--layers", type=positive_int, default=30)
    parser.add_argument("--keys-per-block", type=positive_int, nargs="+",
                        default=[16, 32, 64, 128])
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="default: bfloat16 on an accelerator, float32 on CPU")
    parser.add_argument("--reps", type=positive_int, default=20)
    parser.add_argument("--interpret", action="store_true",
                        help="time the kernel in interpret mode on CPU (slow: a check)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.lengths[0] > args.lengths[1]:
        parser.error(f"--lengths LOW HIGH: LOW must not exceed HIGH, got {args.lengths}")
    if args.heads % args.kv_heads:
        parser.error(f"--heads {args.heads} is not a multiple of --kv-heads {args.kv_heads}")
    return args


def ragged_pages(args, dtype):
    """Rows of random lengths on shuffled pages: (q, k_pages, v_pages, page_table,
    lengths), the unused entries marked with the pool size as the paged cache marks them."""
    rng = np.random.default_rng(args.seed)
    lengths = rng.integers(args.lengths[0], args.lengths[1] + 1, size=args.rows)
    entries = -(-args.lengths[1] // args.page_size)
    used = -(-lengths // args.page_size)
    pool = int(used.sum())
    order = rng.permutation(pool)
    table = np.full((args.rows, entries), pool, np.int32)
    start = 0
    for row, count in enumerate(used):
        table[row, :count] = order[start:start + count]
        start += count
    shape = (args.layers, pool, args.kv_heads, args.page_size, args.head_dim)
    k_pages, v_pages = (jnp.asarray(rng.normal(size=shape), dtype) for _ in range(2))
    q = jnp.asarray(rng.normal(size=(args.rows, 1, args.heads, args.head_dim)), dtype)
    return q, k_pages, v_pages, jnp.asarray(table), jnp.asarray(lengths, jnp.int32)


def decoders_jnp_path(args, dtype):
    """The decoder's own paged attention on CPU, in the kernels' calling convention."""
    shape = ModelConfig(model_type="llama", vocab_size=256,
                        hidden_size=args.heads * args.head_dim, intermediate_size=64,
                        num_layers=args.layers, num_heads=args.heads,
                        num_kv_heads=args.kv_heads, head_dim=args.head_dim, rms_norm_eps=1e-5)
    attention = Attention(shape, dtype=dtype, rngs=nnx.Rngs(0))

    def attend(q, k_pages, v_pages, table, lengths, layer):
        return paged_attention(attention, q[:, 0], k_pages, v_pages, table, lengths,
                               layer).reshape(q.shape)
    return attend


def every_layer(attention, layers: int):
    """A jitted loop calling ``attention(..., layer)`` for each layer, summing the outputs
    (so none is dropped), and the last layer's output to check."""
    def run(q, k_pages, v_pages, table, lengths):
        def one(layer, total):
            out = attention(q, k_pages, v_pages, table, lengths, layer)
            return total + out.astype(jnp.float32)
        total = jax.lax.fori_loop(0, layers - 1, one, jnp.zeros(q.shape, jnp.float32))
        last = attention(q, k_pages, v_pages, table, lengths, layers - 1)
        return total + last.astype(jnp.float32), last
    return jax.jit(run)


def main() -> None:
    args = parse_args()
    backend = jax.default_backend()
    dtype = jnp.dtype(args.dtype or ("float32" if backend == "cpu" else "bfloat16"))
    inputs = ragged_pages(args, dtype)
    implementations = {"jnp": decoders_jnp_path(args, dtype)}
    if backend == "gpu" or args.interpret:
        for keys in args.keys_per_block:
            implementations[f"pallas_{keys}_keys"] = functools.partial(
                paged_decode_attention_gpu, keys_per_block=keys,
                interpret=backend != "gpu")
    print(f"{backend}, {args.rows} rows of {args.lengths[0]}-{args.lengths[1]} tokens on "
          f"{args.page_size}-token pages, {args.heads}:{args.kv_heads} heads of "
          f"{args.head_dim}, {dtype.name}; µs per layer's call, median of {args.reps}")
    us, diffs, reference = {}, {}, None
    for name, attention in implementations.items():
        fn = every_layer(attention, args.layers)
        last = np.asarray(fn(*inputs)[1], np.float32)
        reference = last if reference is None else reference
        diffs[name] = float(np.abs(last - reference).max())
        us[name] = timed(fn, inputs, args.reps) / args.layers * 1e3  # ms -> µs a layer
        print(f"  {name:<20} {us[name]:9.2f} µs   max |diff| vs jnp {diffs[name]:.2e}")
    kernels = [us[name] for name in us if name != "jnp"]
    print(json.dumps({"backend": backend, "rows": args.rows, "lengths": args.lengths,
                      "page_size": args.page_size, "dtype": dtype.name,
                      "us_per_call": us, "max_abs_diff": diffs,
                      "kernel_vs_jnp": us["jnp"] / min(kernels) if kernels else None}))


if __name__ == "__main__":
    main()
