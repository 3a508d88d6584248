"""The decoder's jitted functions (``decoder_calls``) and what it wraps them in:
``LastCall`` keeps a function's last arguments so that ``Decoder.compiled`` can compile
it for them again and show what such a call computes; ``out_shardings`` gives jit the
results' layout a function pins.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from collections.abc import Callable

import jax
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from qstar_jax.decoding.data_shards import cache_specs, loop_partitioner, on_slot_shards
from qstar_jax.decoding.kv_cache import fork_slots
from qstar_jax.decoding.paged_cache import Paging, copy_pages, fork_slot_state
from qstar_jax.decoding.prefill import prefill
from qstar_jax.decoding.step_sampler import sample_step
from qstar_jax.decoding.trie_sampler import sample_trie
from qstar_jax.parallel import replicated


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


@dataclasses.dataclass(frozen=True)
class DecoderCalls:
    """A decoder's jitted functions. prefill, sample_step, sample_trie: the pure
    functions of those names with the graphdef bound, the cache donated, each run on its
    data shard's slots; fork: ``fork_slots`` (on pages ``fork_slot_state``); copy_pages:
    on pages, ``copy_pages`` (None on row slots); rows_logprobs(weights, last_hidden,
    slots, token) -> [B] that token's log-probability after each slot's last token;
    rows_hidden(last_hidden, slots) -> [B, E] their last hidden states."""

    prefill: LastCall
    sample_step: LastCall
    sample_trie: LastCall
    fork: LastCall
    copy_pages: LastCall | None
    rows_logprobs: Callable
    rows_hidden: Callable


def decoder_calls(graphdef: nnx.GraphDef, *, mesh: Mesh | None, slot_axis: str | None,
                  cache_sharding, paging: Paging | None,
                  counts: collections.Counter) -> DecoderCalls:
    """The jitted functions of a decoder of model ``graphdef``: on ``mesh`` each under a
    ``shard_map`` over ``slot_axis`` (the data shards' slots; None: all on each device),
    the cache they return laid out as ``cache_sharding`` (on the mesh; None on one
    device) and their other results replicated, on a paged cache when ``paging``.
    ``counts[name]`` counts the traces of each of prefill, sample_step and sample_trie."""
    shardings = {}  # jit keyword arguments per function: none on one device
    if mesh is not None:
        # Pinning the cache's layout on the way out keeps every call's input sharding,
        # so a call never recompiles for a drifted layout.
        shardings = {"prefill": cache_sharding, "fork": cache_sharding,
                     "sample_step": (cache_sharding, replicated(mesh)),
                     "sample_trie": (cache_sharding, replicated(mesh), replicated(mesh))}

    def counted_jit(name, fn, in_specs, out_specs, num_static=0,
                    context=contextlib.nullcontext):
        """``fn`` jitted with the cache (its first argument after the graphdef) donated
        and its last ``num_static`` arguments static; in_specs, out_specs: the other
        arguments' and the results' PartitionSpecs; context: ``LastCall``'s."""
        def traced(*args):
            counts[name] += 1  # runs only while tracing
            split = len(args) - num_static
            static = args[split:]
            return on_slot_shards(lambda *dynamic: fn(graphdef, *dynamic, *static),
                                  mesh, slot_axis, in_specs, out_specs)(*args[:split])
        # Its HLO module is jit_<name>, as a profiler trace names its kernels' module.
        traced.__name__ = traced.__qualname__ = name
        static_argnums = tuple(range(len(in_specs), len(in_specs) + num_static))
        return LastCall(jax.jit(traced, donate_argnums=1, static_argnums=static_argnums,
                                **out_shardings(shardings, name)), context)

    # PartitionSpecs over the slot axis of a function's arguments and results: the
    # call's rows, a whole array on every shard, the cache's part on each shard.
    rows, whole = PartitionSpec(slot_axis), PartitionSpec()
    sampling_loops = loop_partitioner(mesh, slot_axis)
    cache = cache_specs(slot_axis, paging)

    def on_shards(fn):
        """``fn(cache, per-shard ids, per-shard ids)`` on each shard's part of the
        cache (itself on one device)."""
        return fn if mesh is None else jax.jit(
            on_slot_shards(fn, mesh, slot_axis, (cache, rows, rows), cache),
            donate_argnums=0, **out_shardings(shardings, "fork"))

    def rows_logprobs(weights, last_hidden, slots, token):
        """[B] ``token``'s log-probability after each slot's last token."""
        logits = nnx.merge(graphdef, weights.model).logits(last_hidden[slots])
        return jax.nn.log_softmax(logits, axis=-1)[:, token]

    on_host = {} if mesh is None else {"out_shardings": replicated(mesh)}
    return DecoderCalls(
        prefill=counted_jit("prefill", prefill, (whole, cache, rows, rows, rows, rows),
                            cache, num_static=1),
        sample_step=counted_jit(
            "sample_step", sample_step,
            (whole, cache, rows, rows, rows, rows, rows, rows, whole, whole), (cache, rows),
            num_static=3, context=sampling_loops),
        sample_trie=counted_jit(  # the lent pages: each shard's block
            "sample_trie", sample_trie,
            (whole, cache, rows, whole, rows, rows, rows, rows, whole, whole, whole, rows,
             whole), (cache, rows, rows), num_static=4, context=sampling_loops),
        # A fork copies slot rows, or on pages only each slot's length and last hidden
        # state (the children share the parents' pages); a page copy stays on its shard.
        fork=LastCall(on_shards(fork_slots if paging is None else fork_slot_state)),
        copy_pages=None if paging is None else LastCall(on_shards(copy_pages)),
        rows_logprobs=jax.jit(rows_logprobs, **on_host),
        rows_hidden=jax.jit(lambda last_hidden, slots: last_hidden[slots], **on_host))
