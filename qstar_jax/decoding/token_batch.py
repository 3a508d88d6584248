"""Token lists as right-padded arrays whose shapes come from a few buckets, so a jitted
function compiles once per bucket instead of once per batch.

Shapes: B rows, T tokens per row.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import numpy as np


class TokenBatch(NamedTuple):
    tokens: jax.Array | np.ndarray   # [B, T] int32, right-padded
    lengths: jax.Array | np.ndarray  # [B] int32 real tokens per row (0: a padding row)


def bucket_size(n: int, *, minimum: int = 1) -> int:
    """The power of two >= max(n, minimum) that shapes a batch or a length dimension."""
    return 1 << (max(n, minimum) - 1).bit_length()


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
