"""Paged decode attention: pick the Pallas kernel of the backend, or the ``jnp`` path.

``implementation`` ("auto", "pallas" or "jnp": ``platform.resolve_implementation``):
"auto" takes the Pallas kernel on GPU and TPU and the ``jnp`` reference on CPU, and on a
GPU where JAX no longer has Pallas' Triton backend. On CPU "pallas" runs the GPU kernel
in interpret mode, which is for tests, not speed.
"""

from __future__ import annotations

from qstar_kernels.paged_attention_gpu import paged_decode_attention_gpu
from qstar_kernels.paged_attention_reference import paged_decode_attention_reference
from qstar_kernels.paged_attention_tpu import paged_decode_attention_tpu
from qstar_kernels.platform import resolve_implementation


def paged_decode_attention(q, k_pages, v_pages, page_table, lengths, layer, *,
                           window: int | None = None, scale: float | None = None,
                           implementation: str = "auto"):
    """Shapes and contract: ``paged_decode_attention_reference``."""
    chosen = resolve_implementation(implementation)
    args = (q, k_pages, v_pages, page_table, lengths, layer)
    if chosen == "jnp":
        return paged_decode_attention_reference(*args, window=window, scale=scale)
    if chosen == "pallas_tpu":
        return paged_decode_attention_tpu(*args, window=window, scale=scale)
    return paged_decode_attention_gpu(*args, window=window, scale=scale,
                                      interpret=chosen == "pallas_interpret")
