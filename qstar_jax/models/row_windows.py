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
place; at its end the call writes back into the pool the positions its tokens may have
written, at most C a row from its start (``put``). The keys are held transposed,
[B, K, D, W]: a query's scores then sum over D along rows of W positions, which XLA:CPU
computes in about two thirds of the time of the reduction over D as the minor axis (the
same products, in float32). The values keep [B, K, W, D], where the
weighted sum already runs along D.

The copy costs a call one gather of its rows' windows (in that batch-32 trace some 110
ms a call, five tokens' worth of the per-token ones, so a call of very few tokens
loses) and a scatter of its new positions, and holds the windows beside the pool while
the call runs. On a CPU it is the default (``decode.row_windows=auto``): SmolLM2's
collect step calls ran 12-14% faster over it and the default run's evaluate stage as fast,
with the same results (docs/decoder_speed.md). Untimed on a GPU or TPU, which gather.
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
        keys: tuple[jax.Array, ...], values: tuple[jax.Array, ...], starts: jax.Array,
        count: int) -> tuple[jax.Array, jax.Array]:
    """The pool with positions [starts[b], starts[b] + count) of ``take``'s windows
    written back into ``slots`` [B]: the positions a call's tokens may have written (at
    most ``count`` a row from its start); the rest of each window is what ``take``
    copied. A padding row (slot S or more) and positions at W or past it go nowhere."""
    window = values[0].shape[2]
    positions = starts[:, None] + jnp.arange(count)  # [B, C]
    read_at = jnp.minimum(positions, window - 1)
    write_at = jnp.where(positions < window, positions, cache_k.shape[3])  # M: dropped
    rows = slots[:, None]
    for layer, (layer_keys, layer_values) in enumerate(zip(keys, values)):
        # Advanced indices apart around a slice put their dims first: [B, C, K, D].
        new_keys = jnp.take_along_axis(layer_keys, read_at[:, None, None, :], axis=3)
        new_values = jnp.take_along_axis(layer_values, read_at[:, None, :, None], axis=2)
        cache_k = cache_k.at[layer, rows, :, write_at].set(new_keys.transpose(0, 3, 1, 2),
                                                           mode="drop")
        cache_v = cache_v.at[layer, rows, :, write_at].set(new_values.swapaxes(1, 2),
                                                           mode="drop")
    return cache_k, cache_v
