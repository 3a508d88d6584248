"""A trie sampled in chunks of at most ``chunk`` rounds, the rows whose step has ended
dropped between chunks: the host side of ``Decoder.sample_trie``.

Shapes: R rows (a call's groups, then its spares), G groups, C the token cap bucket.

The jitted trie loop computes every row of its batch each round until the last row ends
(``trie_sampler``), so one long step keeps every short one's compute going. Run as
chunks, a call holds only the rows still going and, on each data shard, as many free
spares as those rows can still split into (a row drawn c times splits at most c - 1 more
times), so the next chunk's padded row count shrinks as rows end. The chunks sample the
trie one call would: a row's draws depend on its group's key and its prefix alone, the
kept rows keep their order, so a split takes the spare it would have taken (its shard's
lowest free one), and a chunk resumes from what the last one wrote back to the cache.
Only float rounding from other batch shapes may differ.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from qstar_jax.decoding.trie_sampler import TrieOutput, TrieProgress


class ChunkedTrie:
    """A trie call's R rows as its chunks come back.

    counts: [G] the groups' steps (the groups are rows 0..G-1, the spares the rest);
    row_shards: [R] each row's data shard; width: C."""

    def __init__(self, counts: np.ndarray, row_shards: np.ndarray, width: int):
        self.row_shards = np.asarray(row_shards, np.int64)
        rows, groups = len(self.row_shards), len(counts)
        # Every row as the chunks left it; hidden and page_table come with the first chunk.
        self.out = TrieOutput(
            group=np.where(np.arange(rows) < groups, np.arange(rows), -1).astype(np.int32),
            count=np.pad(np.asarray(counts, np.int32), (0, rows - groups)),
            tokens=np.zeros((rows, width), np.int32), num_tokens=np.zeros(rows, np.int32),
            logprob=np.zeros(rows, np.float32), end_reason=np.full(rows, -1, np.int32),
            hidden=None, fed=np.zeros(rows, np.int32))
        self.rows = np.arange(rows)  # the rows the next chunk holds, in call order

    def progress(self) -> TrieProgress:
        """Where the next chunk's rows start, [len(rows)]."""
        return TrieProgress(**{field.name: getattr(self.out, field.name)[self.rows]
                               for field in dataclasses.fields(TrieProgress)})

    def add(self, out: TrieOutput) -> None:
        """Take a chunk's output, ``out`` [len(rows)] on the host in call order, and pick
        the next chunk's rows: the steps still going and the spares they may take."""
        if self.out.hidden is None:  # the first chunk, of every row
            self.out = jax.tree.map(np.array, out)
        else:
            for field in dataclasses.fields(TrieOutput):
                values = getattr(out, field.name)
                if values is not None:  # a page table on pages only
                    getattr(self.out, field.name)[self.rows] = values
        going = self.rows[(out.group >= 0) & (out.end_reason < 0)]
        self.rows = np.sort(np.concatenate([going, self._spares_for(going)]))

    def _spares_for(self, going: np.ndarray) -> np.ndarray:
        """On each shard, its lowest free spares, one for each split its ``going`` rows may
        still make: the spares those splits take, lowest first, as in one call."""
        shards = self.row_shards
        splits = np.bincount(shards[going], weights=self.out.count[going] - 1,
                             minlength=shards.max() + 1).astype(np.int64)
        free = np.flatnonzero(self.out.group < 0)
        return np.concatenate([free[shards[free] == shard][:n]
                               for shard, n in enumerate(splits)])
