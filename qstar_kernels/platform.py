"""Which implementation of a kernel runs: the backend's Pallas kernel, the GPU kernel
interpreted on CPU (for tests), or the plain ``jnp`` reference.

"auto" takes the Pallas kernel on the platforms a kernel is written for (on a GPU only
while JAX still has Pallas' Triton backend) and the ``jnp`` reference elsewhere, on CPU
too (where XLA fuses the reference well and Pallas only interprets); "pallas" or "jnp"
forces one. The platform is JAX's default backend's, or inside ``compiling_for`` the one
a program is being compiled for.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

from qstar_kernels.paged_attention_gpu import triton_available

IMPLEMENTATIONS = ("auto", "pallas", "jnp")
GPU_PLATFORMS = ("gpu", "cuda", "rocm")
_TARGET_PLATFORM = contextvars.ContextVar("kernels_target_platform", default=None)


@contextlib.contextmanager
def compiling_for(platform: str):
    """Within it, functions traced pick their kernels for ``platform`` ("gpu", "tpu" or
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


def target_platform() -> str:
    """The platform traced functions are for: ``compiling_for``'s, else JAX's default
    backend's ("gpu" for any GPU)."""
    platform = _TARGET_PLATFORM.get() or jax.default_backend()
    return "gpu" if platform in GPU_PLATFORMS else platform


def resolve_implementation(implementation: str, platform: str | None = None, *,
                           kernel_platforms: tuple[str, ...] = ("gpu", "tpu")) -> str:
    """"auto" | "pallas" | "jnp" -> "pallas_gpu" | "pallas_tpu" | "pallas_interpret" |
    "jnp" for the platform (default: ``compiling_for``'s, else JAX's default backend).
    ``kernel_platforms``: those the kernel has a Pallas version for; "pallas" on another
    accelerator is refused."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"kernel implementation must be one of {IMPLEMENTATIONS}, got "
                         f"{implementation!r}")
    platform = platform or target_platform()
    kind = "gpu" if platform in GPU_PLATFORMS else platform
    has_kernel = kind in kernel_platforms and (kind != "gpu" or triton_available())
    if implementation == "jnp" or (implementation == "auto" and not has_kernel):
        return "jnp"
    if kind == "cpu":
        return "pallas_interpret"
    if kind not in kernel_platforms:
        raise ValueError(f"this kernel has no Pallas version for {platform}: use 'auto' or "
                         "'jnp'")
    return f"pallas_{kind}"
