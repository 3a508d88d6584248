"""The row-products kernel against XLA's products, alone, on a decode layer's shapes (issue
18: the batch-1 roofline; ``qstar_kernels/row_products_gpu.py``).

A decode step of a few tokens reads every weight once; a layer's products are its normed
q/k/v rows, its output projection onto the residual, the MLP's gated gate/up rows and its
down onto the residual (``DecoderLayer._call_on_rows``; the output projection reading the
attention kernel's padded rows in place, ``x_segments``, as the decoder's does on pages
with both kernels: each kv head's G query heads' outputs in 16 rows). This times each of
the four, on
``--layers`` distinct weights (so they stream from memory, as in a forward pass, rather
than sit in a GPU's L2) in one jitted call, two ways: XLA's (the ``jnp`` reference, what
the decoder runs without the kernel) and, on a GPU, the Pallas kernel at each
``--blocks`` setting, OUTxINxWARPS (outputs a program computes, input columns a step of
its loop reads, Triton warps). Each figure is the median call over ``--reps``, divided by
the layers, and read as the bandwidth the weights were streamed at, against the device's
measured copy bandwidth (``bench_decode.copy_bandwidth``). Every kernel's output is
checked against XLA's.

On CPU the kernel only interprets (a test path, not a speed one), so only XLA's products
are timed there unless ``--interpret`` asks for the kernel too (with ``--shape tiny``).

    python experiments/bench_row_products.py [--shape 1b|smollm2|tiny] [--tokens 1 4]
        [--blocks 8x512x4 4x512x4 16x256x4 8x1024x8] [--layers 16] [--reps 20]

Prints a line per product and setting and, as its last line, JSON: {"backend", "shape",
"dtype", "bandwidth_gb_s", "runs": [{"tokens", "product", "weight_mb", "us": {name: µs},
"gb_s": {name: GB/s}, "max_abs_diff": {name: x}}], "layer_us": {tokens: {"xla": µs,
"kernel_best": µs}}, "best_blocks": {tokens: {product: setting}}}: ``layer_us`` sums a
layer's four products, XLA's and the fastest kernel setting's for each.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from bench_decode import copy_bandwidth
from cascade_attention import timed
from cli_args import positive_int
from qstar_kernels import rows_product_gpu, rows_product_reference
from qstar_kernels.paged_attention_gpu import query_rows

# (hidden size, q/k/v outputs, MLP width, query heads per kv head, head_dim) of each shape
SHAPES = {"1b": (2048, 2048 + 2 * 512, 8192, 4, 64),
          "smollm2": (576, 576 + 2 * 192, 1536, 3, 64), "tiny": (64, 96, 128, 4, 16)}


def block_setting(text: str) -> str:
    """An argparse type: a kernel setting, OUTxINxWARPS, three whole numbers >= 1."""
    parts = text.split("x")
    if len(parts) != 3 or not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise argparse.ArgumentTypeError(f"give OUTxINxWARPS, three whole numbers >= 1 (as "
                                         f"8x512x4), got {text!r}")
    return text


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b",
                        help="1b: Llama-3.2-1B's layer; smollm2: SmolLM2-135M's")
    parser.add_argument("--tokens", type=positive_int, nargs="+", default=[1, 4])
    parser.add_argument("--blocks", type=block_setting, nargs="+",
                        default=["8x512x4", "4x512x4", "16x256x4", "8x1024x8", "16x512x8"],
                        help="kernel settings, OUTxINxWARPS")
    parser.add_argument("--layers", type=positive_int, default=16,
                        help="distinct weights per call")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="default: bfloat16 on an accelerator, float32 on CPU")
    parser.add_argument("--reps", type=positive_int, default=20)
    parser.add_argument("--interpret", action="store_true",
                        help="time the kernel in interpret mode on CPU (slow: a check)")
    return parser.parse_args()


def products(shape: str, layers: int, tokens: int, dtype, seed: int = 0) -> dict:
    """Each of a layer's four products: (its rows, one array per layer, the array
    arguments of ``rows_product`` besides them, and its ``x_segments``). x is [tokens,
    width], or for "o" the attention kernel's rows [tokens, K * R * D]. "gate_up" is
    gated."""
    hidden, qkv, mlp, group, head_dim = SHAPES[shape]
    used, stride = group * head_dim, query_rows(1, group) * head_dim
    rng = np.random.default_rng(seed)

    def draw(*shape, scale=1.0):
        return jnp.asarray(rng.normal(size=shape) * scale, dtype)

    def rows(outputs, width):
        return [draw(outputs, width, scale=width ** -0.5) for _ in range(layers)]
    residual = draw(tokens, hidden)
    return {
        "qkv": (rows(qkv, hidden), dict(x=draw(tokens, hidden), norm_weight=draw(hidden)),
                None),
        "o": (rows(hidden, hidden), dict(x=draw(tokens, hidden // used * stride),
                                         residual=residual), (used, stride)),
        "gate_up": (rows(2 * mlp, hidden), dict(x=draw(tokens, hidden),
                                                norm_weight=draw(hidden)), None),
        "down": (rows(hidden, mlp), dict(x=draw(tokens, mlp), residual=residual), None),
    }


def every_layer(product, gated: bool, x_segments):
    """One jitted call applying ``product`` with each layer's rows, summing the outputs (so
    none is dropped), and the last layer's output to check."""
    def run(all_rows, options):
        extra = {name: value for name, value in options.items() if name != "x"}
        outs = [product(options["x"], rows, gated=gated, x_segments=x_segments, **extra)
                for rows in all_rows]
        return sum(out.astype(jnp.float32) for out in outs), outs[-1]
    return jax.jit(run)


def kernel(setting: str, interpret: bool):
    block_out, block_in, warps = (int(n) for n in setting.split("x"))

    def product(x, rows, **options):
        return rows_product_gpu(x, rows, **options, block_out=block_out, block_in=block_in,
                                num_warps=warps, interpret=interpret)
    return product


def main() -> None:
    args = parse_args()
    backend = jax.default_backend()
    dtype = jnp.dtype(args.dtype or ("float32" if backend == "cpu" else "bfloat16"))
    bandwidth = copy_bandwidth()
    implementations = {"xla": rows_product_reference}
    if backend == "gpu" or args.interpret:
        implementations.update({setting: kernel(setting, backend != "gpu")
                                for setting in args.blocks})
    print(f"{backend}, {args.shape} layer's products, {dtype.name}, {args.layers} distinct "
          f"weights a call; µs a product, median of {args.reps}; copy bandwidth "
          f"{bandwidth / 1e9:.0f} GB/s")
    runs, layer_us, best_blocks = [], {}, {}
    for tokens in args.tokens:
        timed_kernels = len(implementations) > 1
        layer_us[tokens] = {"xla": 0.0, "kernel_best": 0.0 if timed_kernels else None}
        best_blocks[tokens] = {}
        for name, (all_rows, options, x_segments) in products(args.shape, args.layers,
                                                              tokens, dtype).items():
            weight_bytes = all_rows[0].size * dtype.itemsize
            us, gb_s, diffs, reference = {}, {}, {}, None
            for impl, product in implementations.items():
                fn = every_layer(product, gated=name == "gate_up", x_segments=x_segments)
                last = np.asarray(fn(all_rows, options)[1], np.float32)
                reference = last if reference is None else reference
                diffs[impl] = float(np.abs(last - reference).max())
                us[impl] = timed(fn, (all_rows, options), args.reps) / args.layers * 1e3
                gb_s[impl] = weight_bytes / us[impl] / 1e3
                print(f"  {tokens} tokens, {name:<8} {impl:<10} {us[impl]:9.2f} µs "
                      f"{gb_s[impl]:8.0f} GB/s ({gb_s[impl] * 1e9 / bandwidth:5.1%} of copy)"
                      f"  max |diff| vs xla {diffs[impl]:.2e}")
            runs.append({"tokens": tokens, "product": name, "weight_mb": weight_bytes / 1e6,
                         "us": us, "gb_s": gb_s, "max_abs_diff": diffs})
            layer_us[tokens]["xla"] += us["xla"]
            if timed_kernels:
                kernels = {impl: value for impl, value in us.items() if impl != "xla"}
                best_blocks[tokens][name] = min(kernels, key=kernels.get)
                layer_us[tokens]["kernel_best"] += kernels[best_blocks[tokens][name]]
    print(json.dumps({"backend": backend, "shape": args.shape, "dtype": dtype.name,
                      "bandwidth_gb_s": round(bandwidth / 1e9, 1), "runs": runs,
                      "layer_us": layer_us, "best_blocks": best_blocks}))


if __name__ == "__main__":
    main()
