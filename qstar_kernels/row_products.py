"""A decode layer's products over rows: pick the Pallas kernel, or the ``jnp`` path.

``implementation`` ("auto", "pallas" or "jnp": ``platform.resolve_implementation``):
"auto" takes the GPU kernel on a GPU and the ``jnp`` reference elsewhere (there is no
TPU version: compiled for a v5e, XLA:TPU's program runs a batch-1 layer in one static
program with no launches between its fusions, which is what the kernel buys a GPU).
Calls of more than ``MAX_ROWS`` tokens take the ``jnp`` path whatever is asked: the
kernel is for a decode step's few rows, where XLA:GPU's GEMMs are launch-bound.
"""

from __future__ import annotations

from qstar_kernels.platform import resolve_implementation
from qstar_kernels.row_products_gpu import MAX_ROWS, rows_product_gpu
from qstar_kernels.row_products_reference import rows_product_reference


def resolve_rows_implementation(implementation: str, tokens: int = 1) -> str:
    """``resolve_implementation`` for this kernel and a call of ``tokens`` rows."""
    chosen = resolve_implementation(implementation, kernel_platforms=("gpu",))
    return "jnp" if tokens > MAX_ROWS else chosen


def rows_product(x, rows, *, norm_weight=None, eps: float = 1e-6, gated: bool = False,
                 bias=None, residual=None, x_segments=None, implementation: str = "auto"):
    """Shapes and contract: ``rows_product_reference``."""
    options = dict(norm_weight=norm_weight, eps=eps, gated=gated, bias=bias,
                   residual=residual, x_segments=x_segments)
    chosen = resolve_rows_implementation(implementation, x.shape[0])
    if chosen == "jnp":
        return rows_product_reference(x, rows, **options)
    return rows_product_gpu(x, rows, **options, interpret=chosen == "pallas_interpret")
