"""XLA options for compiling training steps on the backend they run on.

On the CPU backend XLA lowers a weight gradient, ``x^T @ dy`` summed over every token of
the batch, by first writing ``dy`` out in transposed layout, fused with the elementwise
backward pass that produces it; in a profile of the default Countdown policy's training
step (``jax.profiler``) those strided copies are the largest operations, ahead of every
matrix product. Letting XLA hand the dots with their neighbours to YNNPACK
(``xla_cpu_experimental_ynn_fusion_type``) avoids them: the train_policy stage of the
then-default Countdown run (today ``python -m qstar_jax.run configs/countdown_verifier.yaml``,
1000 steps) went from 405 s to 290 s on the same machine. The option is set per
compilation, on training steps only (``jax.jit(..., compiler_options=...)``), because it
makes forward-only code such as decoding slower, and only where this XLA accepts it: it is
an experimental field that a later XLA may rename.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_YNNPACK_DOT_FUSIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


@functools.cache
def training_compiler_options() -> dict[str, str]:
    """The ``compiler_options`` for a jitted training step here: YNNPACK dot fusions on
    CPU, when this XLA knows the option; nothing elsewhere."""
    if jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(jnp.matmul, compiler_options=_YNNPACK_DOT_FUSIONS).lower(
            jnp.ones((2, 2)), jnp.ones((2, 2))).compile()
    except Exception:  # noqa: BLE001 - an XLA without the option trains at its default speed
        return {}
    return dict(_YNNPACK_DOT_FUSIONS)
