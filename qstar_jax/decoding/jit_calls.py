"""What the decoder wraps its jitted functions in: ``LastCall`` keeps a function's last
arguments so that ``Decoder.compiled`` can compile it for them again and show what such
a call computes; ``out_shardings`` gives jit the results' layout a function pins.
"""

from __future__ import annotations

import contextlib

import jax


class LastCall:
    """A jitted function that keeps the arguments of its last call, to compile for them
    again on request. ``context``: a factory of the context every call (and compile) runs
    in (``data_shards.loop_partitioner``)."""

    def __init__(self, jitted, context=contextlib.nullcontext):
        self._jitted = jitted
        self._context = context
        self._args = None

    def __call__(self, *args):
        self._args = args
        with self._context():
            return self._jitted(*args)

    def compiled(self, device: jax.Device | None = None) -> jax.stages.Compiled:
        """The function compiled for the last call's argument shapes and shardings, or with
        every argument on ``device`` instead (one device; a compile-only device of
        ``jax.experimental.topologies`` compiles for hardware this machine lacks)."""
        if self._args is None:
            raise ValueError("the function has not been called yet: call it once first")

        def sharding(x):
            if device is not None:
                return jax.sharding.SingleDeviceSharding(device)
            return x.sharding if x.committed else None
        # Shapes and shardings only: a donated argument's buffers are gone.
        args = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding(x))
                            if isinstance(x, jax.Array) else x, self._args)
        with self._context():
            return self._jitted.lower(*args).compile()


def out_shardings(shardings: dict, name: str) -> dict:
    """jit's ``out_shardings`` keyword for function ``name``, if it has one."""
    return {"out_shardings": shardings[name]} if name in shardings else {}
