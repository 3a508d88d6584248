"""Token lists as right-padded arrays whose shapes come from a few buckets, so a jitted
function compiles once per bucket instead of once per batch.

Shapes: B rows, T tokens per row.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np


class TokenBatch(NamedTuple):
    tokens: jax.Array | np.ndarray   # [B, T] int32, right-padded
    lengths: jax.Array | np.ndarray  # [B] int32 real tokens per row (0: a padding row)


def bucket_size(n: int, *, minimum: int = 1, fine: bool = False) -> int:
    """The power of two >= max(n, minimum) that shapes a batch or a length dimension;
    ``fine``: or three quarters of it (48, 96, 192, ...) when that is enough, for shapes
    whose padding costs compute: twice the compiled variants, at most a third padding
    instead of a half."""
    n = max(n, minimum)
    power = 1 << (n - 1).bit_length()
    if fine and power >= 8 and power * 3 // 4 >= n:
        return power * 3 // 4
    return power


def length_groups(lengths: Sequence[int], bucket: Callable[[int], int],
                  rows: Callable[[list[int]], int]) -> list[tuple[list[int], int]]:
    """How to pad rows of these ``lengths`` into calls: [(row indices, padded length)].
    One call at the longest row's ``bucket``, or one call per distinct bucket where that
    computes at least a quarter fewer padded tokens (a call of some rows costs
    ``rows(their indices)`` rows, its padded row count, times its length; each call is one
    more dispatch and maybe
    one more compiled variant, so a small saving is not worth it)."""
    buckets = [bucket(n) for n in lengths]
    one_call = rows(list(range(len(lengths)))) * max(buckets)
    groups = {b: [i for i, own in enumerate(buckets) if own == b] for b in sorted(set(buckets))}
    if 4 * sum(rows(members) * b for b, members in groups.items()) <= 3 * one_call:
        return [(members, b) for b, members in groups.items()]
    return [(list(range(len(lengths))), max(buckets))]


def pad_token_batch(token_lists: Sequence[Sequence[int]], *, pad_id: int = 0,
                    batch: int | None = None, length: int | None = None,
                    min_length: int = 8, multiple_of: int | None = None) -> TokenBatch:
    """Right-pad non-empty token lists into [batch, length].

    batch: rows (default: one per list); rows past the lists hold only ``pad_id`` and
    length 0. length: by default the longest list rounded up to a multiple of
    ``multiple_of`` (one static shape, little waste: training), or without it to its
    power-of-two bucket of at least ``min_length`` (few shapes over calls: search).
    """
    if not token_lists or any(len(ids) == 0 for ids in token_lists):
        raise ValueError("pad_token_batch needs at least one sequence, and no empty sequence")
    longest = max(len(ids) for ids in token_lists)
    if length is None:
        length = (bucket_size(longest, minimum=min_length) if multiple_of is None
                  else -(-longest // multiple_of) * multiple_of)
    if longest > length:
        raise ValueError(f"a sequence of {longest} tokens does not fit length={length}")
    batch = len(token_lists) if batch is None else batch
    if batch < len(token_lists):
        raise ValueError(f"{len(token_lists)} sequences do not fit batch={batch}")
    tokens = np.full((batch, length), pad_id, np.int32)
    lengths = np.zeros(batch, np.int32)
    for row, ids in enumerate(token_lists):
        tokens[row, :len(ids)] = ids
        lengths[row] = len(ids)
    return TokenBatch(tokens=tokens, lengths=lengths)


def last_positions(batch: TokenBatch) -> np.ndarray:
    """[B] int32: each row's last real token (0 for a padding row)."""
    return np.maximum(np.asarray(batch.lengths) - 1, 0).astype(np.int32)
