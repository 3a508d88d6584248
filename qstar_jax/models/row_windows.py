"""A step loop's working copy of its rows' cache windows (``decode.row_windows=copy``).

Shapes: L layers, S slots, B rows, K kv heads, M max cache length, W the window
(positions a step loop's attention reads), D head_dim.

Over the slot pool ([L, S, K, M, D]) a decode step gathers every row's window out of its
slot at every layer, [B, K, W, D] for the keys and again for the values, and the
attention then reads those copies; over pages ([L, P, K, S, D]) it gathers the pages
that hold the window, in the order the row's page table lists them. On a CPU the copies
cost: in a batch-32 SmolLM2 step (64 tokens over a 128-position window) XLA:CPU spent
about 21 ms of some 120 ms on them (``experiments/bench_decode.py --trace``;
docs/decoder_speed.md). A slice of one array per layer is copied the same way, so the
pool's layout cannot avoid them.

So a step loop may take its rows' windows once per call instead (``take``; on pages, whole
pages), one array per layer, row b of each the call's row b, and its tokens attend over
and write into them in place; at its end the call writes back into the pool (or into the
pages the rows' tables name) the positions its tokens wrote, at most C a row from its
start (``put``). The keys are held transposed, [B, K, D, W]: a query's scores then sum
over D along rows of W positions, which XLA:CPU computes in about two thirds of the time
of the reduction over D as the minor axis (the same products, in float32). The values
keep [B, K, W, D], where the weighted sum already runs along D.

The copy costs a call one gather of its rows' windows (in that batch-32 trace some 110
ms a call, five tokens' worth of the per-token ones, so a call of very few tokens
loses) and a scatter of its new positions, and holds the windows beside the pool while
the call runs (on pages, where rows share pages their windows do not, ``auto`` copies
only while they fit ``step_sampler.PAGED_WINDOWS_SHARE`` of the pool). On a CPU it is the
default (``decode.row_windows=auto``): SmolLM2's 64-row collect step calls ran 12-14%
faster over it on row slots and 14-25% on pages, the default run's evaluate stage as
fast, with the same results (docs/decoder_speed.md). Untimed on a GPU or TPU, which
gather.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from qstar_jax.models.cache_pages import PagedRows
from qstar_jax.models.shared_prefix import write_slot_rows


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


def take(cache_k: jax.Array, cache_v: jax.Array, rows: jax.Array | PagedRows,
         window: int) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """The windows of ``rows``: slots [B] of a pool [L, S, K, M, D] (each below S), or
    the rows' PagedRows over pages [L, P, K, S, D] -> (keys, one [B, K, D, W] per layer,
    values, one [B, K, W, D] per layer). W = min(window, M) over slots; over pages
    the positions of the pages that hold the first ``window`` (a page's positions whole:
    a multiple of the page size), at most the rows' table's."""
    layers = range(cache_k.shape[0])
    keys = tuple(_window(cache_k, layer, rows, window).swapaxes(2, 3) for layer in layers)
    values = tuple(_window(cache_v, layer, rows, window) for layer in layers)
    return keys, values


def put(cache_k: jax.Array, cache_v: jax.Array, rows: jax.Array | PagedRows,
        keys: tuple[jax.Array, ...], values: tuple[jax.Array, ...], starts: jax.Array,
        ends: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """The pool (or pages) with positions [starts[b], ends[b]) of ``take``'s windows
    written back into row b of ``rows`` (as ``take`` takes them): the positions a call's
    tokens wrote, at most ``count`` a row (static). Nothing else is written: not the rest
    of a window, which is what ``take`` copied, nor positions at W or past it, nor a row
    whose end is its start (a padding row), so a page another row owns past a row's
    written positions is never touched."""
    window = values[0].shape[2]
    positions = starts[:, None] + jnp.arange(count)  # [B, C]
    read_at = jnp.minimum(positions, window - 1)
    written = (positions < ends[:, None]) & (positions < window)
    # A position past every row, which both writes drop (past M, past a table's N * S).
    write_at = jnp.where(written, positions, jnp.iinfo(jnp.int32).max)
    for layer, (layer_keys, layer_values) in enumerate(zip(keys, values)):
        new_keys = jnp.take_along_axis(layer_keys, read_at[:, None, None, :], axis=3)
        new_values = jnp.take_along_axis(layer_values, read_at[:, None, :, None], axis=2)
        # [B, K, D, C] and [B, K, C, D] -> [B, C, K, D], as the writes take new tokens.
        cache_k = _write(cache_k, layer, rows, new_keys.transpose(0, 3, 1, 2), write_at)
        cache_v = _write(cache_v, layer, rows, new_values.swapaxes(1, 2), write_at)
    return cache_k, cache_v


def _window(cache: jax.Array, layer: int, rows: jax.Array | PagedRows,
            window: int) -> jax.Array:
    """Layer ``layer``'s first positions of ``rows``, as ``take`` says (both slices stop
    at the row's end): [B, K, W, D]."""
    if isinstance(rows, PagedRows):
        return rows.gather(cache, layer, window)
    return cache[layer, rows, :, :window]


def _write(cache: jax.Array, layer: int, rows: jax.Array | PagedRows, new: jax.Array,
           positions: jax.Array) -> jax.Array:
    """``new`` [B, C, K, D] written into layer ``layer`` of ``rows`` at ``positions``
    [B, C], a position past the row dropped."""
    if isinstance(rows, PagedRows):
        return rows.write(cache, layer, new, positions)
    return write_slot_rows(cache, layer, rows, new, positions)
