"""Pages or a two-level layout? Decode attention over a search's expansion, both ways.

When a search expands a node, its K children decode side by side: each child's sequence
is the node's (the prompt and the steps above it, P tokens) followed by the child's own
step so far (s tokens). Two cache layouts hold that without copying the node's tokens K
times:

(pages) ours (``paged_cache``): each child's page table lists the node's pages, then its
    own; on CPU the decode step gathers each row's window of pages and attends over it
    (``PagedRows.gather`` and the model's one-token attention, called here), so the
    node's P keys are read once per child;
(two-level) the cascade layout of FlashInfer and Hydragen: the node's keys stored once,
    [G, K, P, D], each child's step apart, [B, K, s, D]; a step attends to the prefix
    with all K children's queries at once (one batched product per group and kv head)
    and to its own suffix, and the two are merged exactly by log-sum-exp.

This times one layer's decode attention both ways on SmolLM2-135M-Instruct's shapes (9
query heads, 3 kv heads, head_dim 64, float32), jitted, for G groups of K children,
prefix P and suffix s (each child part-way through its step), checks that the two agree
(max abs difference), and gives both times 30 layers: the attention's part of one decode
step of those rows, to set beside the whole step (``experiments/profile_decode.py``).

    python experiments/cascade_attention.py [--groups 8] [--children 4 16]
        [--prefix 128 320] [--suffix 48] [--page-size 16] [--reps 20]

Prints a line per setting and, as its last line, JSON: {"settings": [{"groups",
"children", "prefix", "suffix", "paged_ms", "two_level_ms", "speedup", "max_abs_diff",
"layers": 30, "attention_ms_per_step_paged", "attention_ms_per_step_two_level"}]}.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cli_args import positive_int
from qstar_jax.models.cache_pages import PagedRows
from qstar_jax.models.config import ModelConfig
from qstar_jax.models.llama import Attention

HEADS, KV_HEADS, HEAD_DIM, LAYERS = 9, 3, 64, 30  # SmolLM2-135M-Instruct
SMOLLM2_ATTENTION = ModelConfig(model_type="llama", vocab_size=49152, hidden_size=576,
                                intermediate_size=1536, num_layers=LAYERS, num_heads=HEADS,
                                num_kv_heads=KV_HEADS, head_dim=HEAD_DIM, rms_norm_eps=1e-5)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=positive_int, default=8,
                        help="nodes expanded side by side")
    parser.add_argument("--children", type=positive_int, nargs="+", default=[4, 16])
    parser.add_argument("--prefix", type=positive_int, nargs="+", default=[128, 320],
                        help="tokens of the node's sequence (prompt and steps)")
    parser.add_argument("--suffix", type=positive_int, default=48,
                        help="tokens of each child's step")
    parser.add_argument("--page-size", type=positive_int, default=16)
    parser.add_argument("--reps", type=positive_int, default=20)
    return parser.parse_args()


def paged_attention(attention, q, k_pages, v_pages, page_table, lengths, layer=0):
    """Our CPU path, the model's own code: each row's window of pages gathered
    (``PagedRows.gather``) and one query per row attending over it (``Attention.attend_keys``).
    q: [B, H, D]; pages [L, P, K, S, D]; page_table [B, n], the window's entries; lengths
    [B] (the query's position + 1); layer: whose pages to read."""
    rows = PagedRows(page_table=page_table, attention="jnp")
    keys, values = rows.gather(k_pages, layer), rows.gather(v_pages, layer)
    key_pos = jnp.arange(keys.shape[2])[None, :]
    return attention.attend_keys(q[:, None], keys, values, (lengths - 1)[:, None], key_pos)[:, 0]


def _partial(scores, values_einsum):
    """(unnormalised output, max, sum of exponentials) of one part's scores."""
    top = jnp.max(scores, axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    weights = jnp.exp(scores - top)
    return values_einsum(weights), top, weights.sum(-1, keepdims=True)


def two_level_attention(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lengths):
    """The cascade: q [G, C, H, D] (C children per group); prefix [G, K, P, D] (every
    position visible); suffix [G, C, K, s, D], the first ``suffix_lengths`` [G, C]
    visible. Exact merge of the two parts by log-sum-exp."""
    groups, children = q.shape[:2]
    grouped = q.reshape(groups, children, KV_HEADS, HEADS // KV_HEADS, HEAD_DIM)
    scale = HEAD_DIM ** -0.5
    # The prefix: all the group's children's queries against its keys at once.
    scores = jnp.einsum("gckhd,gkpd->gckhp", grouped, prefix_k) * scale
    out_p, top_p, sum_p = _partial(
        scores, lambda w: jnp.einsum("gckhp,gkpd->gckhd", w, prefix_v))
    scores = jnp.einsum("gckhd,gcksd->gckhs", grouped, suffix_k) * scale
    visible = jnp.arange(suffix_k.shape[3]) < suffix_lengths[:, :, None, None, None]
    out_s, top_s, sum_s = _partial(
        jnp.where(visible, scores, -jnp.inf),
        lambda w: jnp.einsum("gckhs,gcksd->gckhd", w, suffix_v))
    top = jnp.maximum(top_p, top_s)
    a, b = jnp.exp(top_p - top), jnp.exp(top_s - top)
    out = (a * out_p + b * out_s) / (a * sum_p + b * sum_s)
    return out.reshape(q.shape)


def timed(fn, args, reps: int) -> float:
    """Median milliseconds of ``fn(*args)`` after one compiling call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def setting(groups: int, children: int, prefix: int, suffix: int, page_size: int,
            reps: int) -> dict:
    rng = np.random.default_rng(0)
    rows = groups * children

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape, np.float32))

    q = normal(groups, children, HEADS, HEAD_DIM)
    prefix_k, prefix_v = normal(groups, KV_HEADS, prefix, HEAD_DIM), normal(
        groups, KV_HEADS, prefix, HEAD_DIM)
    suffix_k, suffix_v = normal(groups, children, KV_HEADS, suffix, HEAD_DIM), normal(
        groups, children, KV_HEADS, suffix, HEAD_DIM)
    # The children part-way through their steps, at different points.
    suffix_lengths = jnp.asarray(rng.integers(1, suffix + 1, (groups, children)), jnp.int32)

    # The same tokens in pages: each group's prefix pages shared by its children (the
    # last, partly filled one copied into each child, as a fork's copy on write does),
    # then each child's own pages; every row's table covers the window the decoder would
    # gather (a power of two of at least 128 over prefix + suffix, or whole pages).
    prefix_full = prefix // page_size
    own_tokens = prefix - prefix_full * page_size + suffix
    own_pages = -(-own_tokens // page_size)
    window = max(128, 1 << (prefix + suffix - 1).bit_length())
    entries = -(-window // page_size)
    num_pages = groups * prefix_full + rows * own_pages + 1
    k_pages = np.zeros((num_pages, KV_HEADS, page_size, HEAD_DIM), np.float32)
    v_pages = np.zeros_like(k_pages)
    table = np.full((rows, entries), num_pages - 1, np.int32)  # unused: a zero page
    lengths = np.zeros(rows, np.int32)
    page = 0
    pk, pv = np.asarray(prefix_k), np.asarray(prefix_v)
    sk, sv = np.asarray(suffix_k), np.asarray(suffix_v)
    for g in range(groups):
        shared = list(range(page, page + prefix_full))
        for e, p in enumerate(shared):
            k_pages[p] = pk[g, :, e * page_size:(e + 1) * page_size]
            v_pages[p] = pv[g, :, e * page_size:(e + 1) * page_size]
        page += prefix_full
        for c in range(children):
            row = g * children + c
            own_k = np.concatenate([pk[g, :, prefix_full * page_size:], sk[g, c]], axis=1)
            own_v = np.concatenate([pv[g, :, prefix_full * page_size:], sv[g, c]], axis=1)
            own = list(range(page, page + own_pages))
            for e, p in enumerate(own):
                chunk = slice(e * page_size, (e + 1) * page_size)
                n = own_k[:, chunk].shape[1]
                k_pages[p, :, :n] = own_k[:, chunk]
                v_pages[p, :, :n] = own_v[:, chunk]
            page += own_pages
            table[row, :prefix_full + own_pages] = shared + own
            lengths[row] = prefix + int(suffix_lengths[g, c])
    paged_args = (q.reshape(rows, HEADS, HEAD_DIM), jnp.asarray(k_pages[None]),
                  jnp.asarray(v_pages[None]), jnp.asarray(table), jnp.asarray(lengths))
    two_level_args = (q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lengths)
    attention = Attention(SMOLLM2_ATTENTION, dtype=jnp.float32, rngs=nnx.Rngs(0))
    paged_fn = jax.jit(lambda *args: paged_attention(attention, *args))
    two_level_fn = jax.jit(two_level_attention)
    difference = float(jnp.max(jnp.abs(paged_fn(*paged_args).reshape(q.shape)
                                       - two_level_fn(*two_level_args))))
    paged_ms = timed(paged_fn, paged_args, reps)
    two_level_ms = timed(two_level_fn, two_level_args, reps)
    return {"groups": groups, "children": children, "prefix": prefix, "suffix": suffix,
            "window": window, "paged_ms": round(paged_ms, 3),
            "two_level_ms": round(two_level_ms, 3),
            "speedup": round(paged_ms / two_level_ms, 2), "max_abs_diff": difference,
            "layers": LAYERS,
            "attention_ms_per_step_paged": round(LAYERS * paged_ms, 1),
            "attention_ms_per_step_two_level": round(LAYERS * two_level_ms, 1)}


def main() -> None:
    args = parse_args()
    results = []
    print(f"{jax.devices()[0].device_kind}; one layer's decode attention, SmolLM2-135M "
          f"shapes, float32, median of {args.reps}")
    for children in args.children:
        for prefix in args.prefix:
            r = setting(args.groups, children, prefix, args.suffix, args.page_size, args.reps)
            results.append(r)
            print(f"{args.groups} groups x {children} children, prefix {prefix}, suffix "
                  f"{args.suffix} (window {r['window']}): pages {r['paged_ms']:.2f} ms, "
                  f"two-level {r['two_level_ms']:.2f} ms ({r['speedup']:.2f}x), x{LAYERS} "
                  f"layers: {r['attention_ms_per_step_paged']:.0f} vs "
                  f"{r['attention_ms_per_step_two_level']:.0f} ms a step; max |diff| "
                  f"{r['max_abs_diff']:.1e}", flush=True)
    print(json.dumps({"settings": results}))


if __name__ == "__main__":
    main()
