"""A decode layer's matrix products over weights held as rows, in plain ``jnp``: the
reference the Pallas kernel (``row_products_gpu``) is tested against, and the path the
decoder takes wherever the kernel does not run.

Shapes: B rows (tokens), E the input width, O the output width, F an MLP's width. Weights
are rows, [O, E] (``RowLinear``), so each output is one row's dot product with the input.

One operation, ``rows_product``, with three uses in a layer:
- ``norm_weight`` given: the input is RMS-normalised first (the layer's input norm then
  its fused q/k/v rows; the post-attention norm then the MLP's gate and up rows);
- ``gated``: ``rows`` holds the gate's F rows then the up's F rows, and the result is
  ``silu(gate) * up`` [B, F];
- ``residual`` given: the result is added to it (the output projection; the MLP's down).
``x_segments`` = (used, stride): x holds its E inputs padded, the first ``used`` of every
``stride`` columns (the output projection reading the attention kernel's padded rows as
they are, ``PagedRows.project_write_attend``).
Rounding is the model's own (``models/llama.py``): the normalised input, each product and
the SiLU are rounded to the input's dtype where the modules round them, the products
accumulated in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_rows_inputs(x, rows, *, norm_weight=None, gated=False, bias=None,
                      residual=None, x_segments=None) -> None:
    """Raise ValueError naming the first argument whose shape breaks the contract."""
    if x.ndim != 2:
        raise ValueError(f"x must be [rows, width], got shape {x.shape}")
    width = x.shape[1]
    if x_segments is not None:
        used, stride = x_segments
        if not 0 < used <= stride or width % stride:
            raise ValueError(f"x_segments (used, stride) must have 0 < used <= stride and "
                             f"stride dividing x's {width} columns, got {x_segments}")
        if norm_weight is not None:
            raise ValueError("x_segments is for unnormalised inputs: give no norm_weight")
        width = width // stride * used
    if rows.ndim != 2 or rows.shape[1] != width:
        raise ValueError(f"rows must be [outputs, {width}], got shape {rows.shape}")
    if norm_weight is not None and norm_weight.shape != (x.shape[1],):
        raise ValueError(f"norm_weight must be [{x.shape[1]}], got shape {norm_weight.shape}")
    if gated and rows.shape[0] % 2:
        raise ValueError(f"gated rows hold the gate's rows then the up's: an even count, got "
                         f"{rows.shape[0]}")
    outputs = rows.shape[0] // 2 if gated else rows.shape[0]
    if bias is not None and (gated or bias.shape != (outputs,)):
        raise ValueError(f"bias must be [{outputs}] on ungated rows, got shape {bias.shape}")
    if residual is not None and residual.shape != (x.shape[0], outputs):
        raise ValueError(f"residual must be [{x.shape[0]}, {outputs}], got shape "
                         f"{residual.shape}")


def rms_normalise(x, norm_weight, eps):
    """RMS normalisation (``RMSNorm`` of ``models/llama.py``): float32 inside, rounded to
    x's dtype."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (x32 * norm_weight.astype(jnp.float32)).astype(x.dtype)


def finish_products(products, dtype, *, up=None, bias=None, residual=None):
    """float32 products [B, O] -> the operation's result in ``dtype``; with ``up`` (the up
    rows' products) ``products`` are the gate's, and the result is gated."""
    if up is not None:
        out = jax.nn.silu(products.astype(dtype).astype(jnp.float32)).astype(dtype) \
            * up.astype(dtype)
    else:
        out = products.astype(dtype)
        if bias is not None:
            out = out + bias.astype(dtype)
    return out if residual is None else residual + out


def unpadded(x, x_segments):
    """x [B, N * stride] -> its inputs [B, N * used] (``x_segments`` = (used, stride))."""
    if x_segments is None:
        return x
    used, stride = x_segments
    return x.reshape(x.shape[0], -1, stride)[:, :, :used].reshape(x.shape[0], -1)


def rows_product_reference(x, rows, *, norm_weight=None, eps: float = 1e-6, gated=False,
                           bias=None, residual=None, x_segments=None):
    """x [B, E] (or padded: ``x_segments``), rows [O, E] (gated: [2F, E]) -> [B, O]
    (gated: [B, F]), in x's dtype."""
    check_rows_inputs(x, rows, norm_weight=norm_weight, gated=gated, bias=bias,
                      residual=residual, x_segments=x_segments)
    x = unpadded(x, x_segments)
    if norm_weight is not None:
        x = rms_normalise(x, norm_weight, eps)
    products = jnp.einsum("be,oe->bo", x.astype(rows.dtype), rows,
                          preferred_element_type=jnp.float32)
    up = None
    if gated:
        products, up = jnp.split(products, 2, axis=-1)
    return finish_products(products, x.dtype, up=up, bias=bias, residual=residual)
