"""Paged decode attention: pick the Pallas kernel of the backend, or the ``jnp`` path.

``implementation``: "auto" takes the Pallas kernel on GPU and TPU and the ``jnp``
reference on CPU (where XLA fuses the reference well and Pallas only interprets), and on
a GPU where JAX no longer has Pallas' Triton backend;
"pallas" or "jnp" forces one. On CPU "pallas" runs the GPU kernel in interpret mode,
which is for tests, not speed. The platform is JAX's default backend's, or inside
``compiling_for`` the one a program is being compiled for.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

from qstar_kernels.paged_attention_gpu import paged_decode_attention_gpu, triton_available
from qstar_kernels.paged_attention_reference import paged_decode_attention_reference
from qstar_kernels.paged_attention_tpu import paged_decode_attention_tpu

IMPLEMENTATIONS = ("auto", "pallas", "jnp")
_TARGET_PLATFORM = contextvars.ContextVar("paged_attention_target_platform", default=None)


@contextlib.contextmanager
def compiling_for(platform: str):
    """Within it, functions traced pick their attention for ``platform`` ("gpu", "tpu" or
    "cpu") rather than for the default backend: to compile a program for a device that
    is not the default backend's, such as a compile-only GPU on a CPU machine
    (``experiments/device_program.py``). The setting is not part of jit's trace context:
    a function jit traced before keeps what it picked unless something that is changes
    too (device_program's abstract mesh of the target's device)."""
    token = _TARGET_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TARGET_PLATFORM.reset(token)


def resolve_implementation(implementation: str, platform: str | None = None) -> str:
    """"auto" | "pallas" | "jnp" -> "pallas_gpu" | "pallas_tpu" | "pallas_interpret" |
    "jnp" for the platform (default: ``compiling_for``'s, else JAX's default backend)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got "
                         f"{implementation!r}")
    platform = platform or _TARGET_PLATFORM.get() or jax.default_backend()
    gpu = platform in ("gpu", "cuda", "rocm")
    if implementation == "jnp" or (implementation == "auto" and (
            platform == "cpu" or (gpu and not triton_available()))):
        return "jnp"
    return {"gpu": "pallas_gpu", "cuda": "pallas_gpu", "rocm": "pallas_gpu",
            "tpu": "pallas_tpu"}.get(platform, "pallas_interpret")


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
