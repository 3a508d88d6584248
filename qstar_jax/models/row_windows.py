"""A step loop's working copy of its rows' cache windows (``decode.row_windows=copy``).

Shapes: L layers, S slots, B rows, K kv heads, M max cache length, W the window
(positions a step loop's attention reads), D head_dim.

Over the slot pool ([L, S, K, M, D]) a decode step gathers every row's window out of its
slot at every layer, [B, K, W, D] for the keys and again for the values, and the
attention then reads those copies. On a CPU the copies cost: in a batch-32 SmolLM2 step
(64 tokens over a 128-position window) XLA:CPU spent about 21 ms of some 120 ms on them
(``experiments/bench_decode.py --trace``; docs/decoder_speed.md). A slice of one array
per layer is copied the same way, so the pool's layout cannot avoid them.

So a step loop may take its rows' windows once per call instead (``take``), one array per
layer, row b of each the call's row b, and its tokens attend over and write into them in
place; the call writes them back into the pool at its end (``put``). The keys are held
transposed, [B, K, D, W]: a query's scores then sum over D along rows of W positions,
which XLA:CPU computes in about two thirds of the time of the reduction over D as the
minor axis (the same products, in float32). The values keep [B, K, W, D], where the
weighted sum already runs along D.

The copy costs a call one gather and one scatter of its rows' windows (in that batch-32
trace the gathers came to some 110 ms a call, five tokens' worth of the per-token ones,
so a call of very few tokens loses), and holds them beside the pool while the call runs.
So it is an option, off by default: SmolLM2's batch decode and collect ran 5-10% faster
over it on a CPU, and the default run's evaluate stage (a small policy, short steps)
20% slower (docs/decoder_speed.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class RowWindows:
    """The ``slots`` a model call takes in a step loop over row windows: its cache_k is
    then a tuple of L arrays [B, K, D, W] and its cache_v of L arrays [B, K, W, D], row b
    of each the call's row b (``take``). Holds nothing: the rows are the windows' rows."""

    def write(self, cache_k: tuple[jax.Array, ...], cache_v: tuple[jax.Array, ...],
              layer: int, k: jax.Array, v: jax.Array, positions: jax.Array):
        """Layer ``layer``'s new keys and values k, v [B, 1, K, D] written at ``positions``
        [B, 1] (W or more: dropped) -> (cache_k, cache_v, keys [B, K, D, W], values
        [B, K, W, D]): the tuples with that layer's arrays replaced, and those arrays."""
        rows = jnp.arange(k.shape[0])
        at = positions[:, 0]
        # Advanced indices apart around slices put their dims first: [B, K, D].
        keys = cache_k[layer].at[rows, :, :, at].set(k[:, 0].astype(cache_k[layer].dtype),
                                                     mode="drop")
        values = cache_v[layer].at[rows, :, at].set(v[:, 0].astype(cache_v[layer].dtype),
                                                    mode="drop")
        return (_replaced(cache_k, layer, keys), _replaced(cache_v, layer, values),
                keys, values)


def _replaced(arrays: tuple, index: int, array) -> tuple:
    return arrays[:index] + (array,) + arrays[index + 1:]


def take(cache_k: jax.Array, cache_v: jax.Array, slots: jax.Array,
         window: int) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """The pool's windows of ``slots`` [B] (each below S): (keys, one [B, K, D, W] per
    layer, values, one [B, K, W, D] per layer), W = min(window, M)."""
    window = min(window, cache_k.shape[3])
    layers = range(cache_k.shape[0])
    keys = tuple(cache_k[layer, slots, :, :window].swapaxes(2, 3) for layer in layers)
    values = tuple(cache_v[layer, slots, :, :window] for layer in layers)
    return keys, values


def put(cache_k: jax.Array, cache_v: jax.Array, slots: jax.Array,
        keys: tuple[jax.Array, ...], values: tuple[jax.Array, ...]) -> tuple[jax.Array,
                                                                              jax.Array]:
    """The pool with ``take``'s windows written back into ``slots`` [B] (S or more: a
    padding row, dropped)."""
    window = values[0].shape[2]
    for layer, (layer_keys, layer_values) in enumerate(zip(keys, values)):
        cache_k = cache_k.at[layer, slots, :, :window].set(layer_keys.swapaxes(2, 3),
                                                           mode="drop")
        cache_v = cache_v.at[layer, slots, :, :window].set(layer_values, mode="drop")
    return cache_k, cache_v
