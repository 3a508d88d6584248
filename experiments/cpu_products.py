"""Why XLA:CPU's decode step trails transformers at 32 rows on some CPUs: the weight
products alone, XLA against PyTorch, each at its own thread settings.

``bench_decode.py``'s matmul cap times every product shape as XLA runs it; this sets those
shapes (its ``layer_product_shapes`` and the LM head, of ``--model``'s config; for the
default SmolLM2-135M-Instruct q and o 576x576, k and v 576x192, gate and up 576x1536,
down 1536x576, the LM head 576x49152) beside PyTorch's, on 1 and on all threads, beside
XLA with the weights held as rows, [outputs, inputs] (as the decoder's layers hold them on
a CPU, ``per-layer-kernels``, and a tied LM head is), and beside XLA with the rows split
over two host devices (``--xla_force_host_platform_
device_count=2``, one computation each, run side by side). Each figure is one product of
a sequence run one after another (``product_chain`` on XLA's side), so a call's dispatch
is spread over its products. By default a chain multiplies by one weight array
eight times, which stays in cache, as in the matmul cap; with ``--streamed`` by distinct
copies of it, at least 256 MiB of them, so that each product reads its weights from
memory, as a decode step's weights are (SmolLM2's 538 MB).

    python experiments/cpu_products.py [--model M] [--rows 1 8 32] [--reps 800] [--streamed]

Prints a table (microseconds a product, and GFLOP/s) and, as its last line, JSON:
{"rows": [...], "shapes": [...], "xla_us": [[...]], "xla_rows_us": [[...]],
"xla_two_devices_us": [[...]],
"torch_one_thread_us": [[...]], "torch_us": [[...]], "token_ms": [{...}], "threads": T,
"streamed": S} with one inner list per row count, in ``shapes`` order; "token_ms" sums
each column over one decode token's products (each layer's seven, in every layer, and the
LM head: the "a token" lines).
"""


from __future__ import annotations

import argparse
import functools
import json
import os

if __name__ == "__main__":  # two host devices for the split column, before JAX starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=2").strip()

import collections  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
# The sibling benchmark's list of a layer's products (this script's folder is on sys.path
# when it runs as ``python experiments/cpu_products.py``).
from bench_decode import layer_product_shapes  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from qstar_jax.architectures import architecture  # noqa: E402

CHAIN = 8  # products a chain runs with its weights in cache
# With --streamed, each shape's chain runs over distinct copies of its weights, this many
# bytes of them at least, so that every product reads its weights from memory.
STREAMED_BYTES = 256 * 2**20


def model_products(model: str) -> list[tuple[tuple[int, int], int]]:
    """((inputs, outputs), how many of it one decode token runs) for each distinct weight
    product of ``model`` (its config read without its weights), in the order a layer
    first applies it, the LM head last."""
    cfg = architecture(model, "--model", "--model")
    per_layer = collections.Counter(layer_product_shapes(cfg))
    return ([(shape, count * cfg.num_layers) for shape, count in per_layer.items()]
            + [((cfg.hidden_size, cfg.vocab_size), 1)])


def per_call_us(run, reps: int) -> float:
    """Mean microseconds of ``run()`` over ``reps`` calls after a few warm-up calls (the
    first after a change of torch's thread count also starts its threads)."""
    for _ in range(max(3, reps // 20)):
        jax.block_until_ready(run())
    start = time.perf_counter()
    for _ in range(reps):
        out = run()
    jax.block_until_ready(out)
    return 1e6 * (time.perf_counter() - start) / reps


def product_chain(a: jax.Array, weights: list[jax.Array], rows: bool = False) -> jax.Array:
    """``a`` times each of ``weights`` in turn, each input shifted by a scalar of the
    product before: the products run one after another, as a decode step's do (left
    independent, XLA may run them side by side on the two cores). ``rows``: the weights
    are held [outputs, inputs], each output one row's dot product with the input, as the
    decoder's layers hold them on a CPU (``per-layer-kernels``) and a tied LM head is."""
    def product(x, w):
        return jax.lax.dot_general(x, w, (((1,), (1,)), ((), ()))) if rows else x @ w

    out = product(a, weights[0])
    for w in weights[1:]:
        out = product(a + 1e-9 * out[:, :1], w)
    return out


def xla_us(x: np.ndarray, weights: list[np.ndarray], reps: int, mesh: Mesh | None,
           rows: bool = False) -> float:
    """One product's microseconds in a jitted ``product_chain``; with ``mesh``, the rows
    split over its devices; with ``rows``, the weights held as rows (transposed)."""
    chain = jax.jit(functools.partial(product_chain, rows=rows))
    if mesh is None:
        xa, put = jnp.asarray(x), jnp.asarray
    else:
        xa = jax.device_put(x, NamedSharding(mesh, PartitionSpec("rows")))
        put = functools.partial(jax.device_put, device=NamedSharding(mesh, PartitionSpec()))
    placed = {}  # one array on the device per distinct weight array, as torch shares it
    wa = [placed.setdefault(id(w), put(np.ascontiguousarray(w.T) if rows else w))
          for w in weights]
    calls = max(1, reps // len(weights))
    return per_call_us(lambda: chain(xa, wa), calls) / len(weights)


def torch_us(x: np.ndarray, weights: list[np.ndarray], reps: int, threads: int) -> float:
    """One product's microseconds over ``x`` times each of ``weights``, on ``threads``.
    Eager PyTorch runs them one after another anyway, so no shift joins them (its small
    operations would cost more than XLA's, fused into the products)."""
    torch.set_num_threads(threads)
    xt, wt = torch.from_numpy(x), [torch.from_numpy(w) for w in weights]

    def products():
        for w in wt:
            out = xt @ w
        return out

    with torch.inference_mode():
        return per_call_us(products, max(1, reps // len(weights))) / len(weights)


def chain_weights(rng: np.random.Generator, k: int, n: int, streamed: bool) -> list:
    """The weights a shape's chain multiplies by: one [k, n] array ``CHAIN`` times (it
    stays in cache), or with ``streamed`` enough distinct ones to fill
    ``STREAMED_BYTES``."""
    if not streamed:
        return [rng.standard_normal((k, n), dtype=np.float32)] * CHAIN
    copies = max(CHAIN, -(-STREAMED_BYTES // (4 * k * n)))
    return [rng.standard_normal((k, n), dtype=np.float32) for _ in range(copies)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="a packaged alias, a .gguf file or an HF directory: whose "
                             "product shapes to time")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--reps", type=int, default=800, help="products timed per figure")
    parser.add_argument("--streamed", action="store_true",
                        help="distinct weights for each product of a chain, read from "
                             "memory as in a decode step (default: one, in cache)")
    args = parser.parse_args()
    if any(rows < 2 or rows % 2 for rows in args.rows if rows != 1):
        parser.error("--rows: 1 or an even count (the split column halves the rows)")
    products = model_products(args.model)
    threads = torch.get_num_threads()
    devices = jax.devices()  # one where JAX started before this module (a test)
    mesh = Mesh(np.array(devices[:2]), ("rows",)) if len(devices) > 1 else None
    rng = np.random.default_rng(0)
    print(f"{jax.devices()[0].platform}, {threads} threads, weights "
          f"{'streamed from memory' if args.streamed else 'in cache'}; microseconds a "
          "product (GFLOP/s)")
    titles = {"xla_us": "XLA", "xla_rows_us": "XLA, as rows",
              "xla_two_devices_us": "XLA, 2 devices", "torch_one_thread_us": "torch, 1 thread",
              "torch_us": "torch"}  # the table's columns, in the JSON's keys
    columns, widths = tuple(titles), [max(14, len(title)) for title in titles.values()]
    print(f"{'rows':>4}  {'shape':>9}  " + "  ".join(
        f"{title:>{width}}" for title, width in zip(titles.values(), widths)))
    result = {"rows": args.rows, "shapes": [list(shape) for shape, _ in products],
              **{key: [] for key in columns},
              "token_ms": [], "threads": threads, "streamed": args.streamed}
    for rows in args.rows:
        figures = {key: [] for key in columns}
        for (k, n), _ in products:
            x = rng.standard_normal((rows, k), dtype=np.float32)
            weights = chain_weights(rng, k, n, args.streamed)
            reps = args.reps if n < 10_000 else max(8, args.reps // 10)
            row = {"xla_us": xla_us(x, weights, reps, None),
                   "xla_rows_us": xla_us(x, weights, reps, None, rows=True),
                   "xla_two_devices_us": (xla_us(x, weights, reps, mesh)
                                          if mesh is not None and rows > 1 else None),
                   "torch_one_thread_us": torch_us(x, weights, reps, 1),
                   "torch_us": torch_us(x, weights, reps, threads)}
            kflop = 2 * rows * k * n / 1e3  # over microseconds: GFLOP/s
            cells = [f"{us:7.1f} ({kflop / us:4.0f})" if us else f"{'-':>14}"
                     for us in row.values()]
            print(f"{rows:>4}  {k:>4}x{n:<5}  " + "  ".join(
                f"{cell:>{width}}" for cell, width in zip(cells, widths)))
            for key, us in row.items():
                figures[key].append(None if us is None else round(us, 1))
        token_ms = {key.removesuffix("_us"): None if None in values else
                    round(sum(count * us for (_, count), us in zip(products, values)) / 1e3, 1)
                    for key, values in figures.items()}
        print(f"{rows:>4}  {'a token':>9}  " + "  ".join(
            f"{'-' if ms is None else f'{ms:.1f} ms':>{width}}"
            for ms, width in zip(token_ms.values(), widths)))
        for key, values in figures.items():
            result[key].append(values)
        result["token_ms"].append(token_ms)
    torch.set_num_threads(threads)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
