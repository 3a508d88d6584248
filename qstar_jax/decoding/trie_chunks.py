"""A trie sampled in chunks of at most ``chunk`` rounds, the rows whose step has ended
dropped between chunks: the host side of ``Decoder.sample_trie``.

Shapes: R rows (a call's groups, then its spares), G groups, C the token cap bucket.

The jitted trie loop computes every row of its batch each round until the last row ends
(``trie_sampler``), so one long step keeps every short one's compute going, and every
spare it holds costs a row's compute each round, split into or not. Run as chunks, a
call holds only the rows still going and, on each data shard, a bounded number of its
lowest free spares (``_spares_for``), so the next chunk's padded row count shrinks as
rows end and stays near the going rows' while they rarely split (a low temperature).
A round that needs more spares than its call holds is not run: the call stops there
(starved, ``TrieStop``), and the next chunk, given on that shard the spares that round
needs on top of the usual ones, redraws that round's tokens and runs it. The chunks
sample the trie one call would: a row's draws depend on its group's key and its prefix
alone, the kept rows keep their order and a chunk holds its shard's lowest free spares,
so a split takes the spare it would have taken, and a chunk resumes from what the last
one wrote back to the cache. Only float rounding from other batch shapes may differ.

The spare rule, per shard: ``max(spare_floor, spare_share x the going rows)`` spares,
plus after a starved chunk the spares its stopped round needed, at most the splits the
going rows could still make (a row drawn c times splits at most c - 1 more times), then
as many more as fit the padded block the call computes anyway (rows are padded to a
power of two per shard: padding rows cost what spares do). SmolLM2 on 2 CPU cores,
HumanEval, 32 prompts x 4 samples, 48-token steps in chunks of 16 rounds
(``experiments/profile_decode.py --trie``): docs/countdown.md, "Where Q*'s tokens
go".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from qstar_jax.decoding.trie_sampler import TrieOutput, TrieProgress, TrieStop


class ChunkedTrie:
    """A trie call's R rows as its chunks come back.

    counts: [G] the groups' steps (the groups are rows 0..G-1, the spares the rest);
    row_shards: [R] each row's data shard; width: C; block: the rows a call computes per
    shard when its fullest shard holds n rows (``RowLayout.block_size``); no_page: the
    page-table entry of no page (P) on a paged cache, None on the slot pool; bounded:
    chunks hold a bounded number of spares (False: every split the going rows could
    make, as one call of the whole trie does)."""

    # The spare rule's knobs (module docstring); tests and experiments set them.
    spare_floor: int = 8
    spare_share: float = 0.25

    def __init__(self, counts: np.ndarray, row_shards: np.ndarray, width: int, *,
                 block: Callable[[int], int], no_page: int | None = None,
                 bounded: bool = True):
        self.row_shards = np.asarray(row_shards, np.int64)
        self.block, self.no_page, self.bounded = block, no_page, bounded
        rows, groups = len(self.row_shards), len(counts)
        # Every row as the chunks left it (a spare no chunk took: unused, hidden 0 and no
        # pages); hidden and page_table are sized by the first chunk.
        self.out = TrieOutput(
            group=np.where(np.arange(rows) < groups, np.arange(rows), -1).astype(np.int32),
            count=np.pad(np.asarray(counts, np.int32), (0, rows - groups)),
            tokens=np.zeros((rows, width), np.int32), num_tokens=np.zeros(rows, np.int32),
            logprob=np.zeros(rows, np.float32), end_reason=np.full(rows, -1, np.int32),
            hidden=None, fed=np.zeros(rows, np.int32))
        self.num_shards = int(self.row_shards.max(initial=0)) + 1
        # Per shard: the spares the round the last chunk stopped before needed (0: it ran
        # its rounds or its steps ended).
        self.needed = np.zeros(self.num_shards, np.int64)
        groups = np.arange(groups)
        self.rows = np.sort(np.concatenate([groups, self._spares_for(groups)]))  # next chunk's

    @property
    def starved(self) -> np.ndarray:
        """[shards] bool: the last chunk stopped short of its rounds for want of spares."""
        return self.needed > 0

    def progress(self) -> TrieProgress:
        """Where the next chunk's rows start, [len(rows)]."""
        return TrieProgress(**{field.name: getattr(self.out, field.name)[self.rows]
                               for field in dataclasses.fields(TrieProgress)})

    def num_draws(self) -> int:
        """D for the next chunk: the most draws a round of its rows makes on a shard (its
        going rows' counts summed: a split only moves a share of a count), as a block."""
        per_shard = np.bincount(self.row_shards[self.rows], weights=self.out.count[self.rows],
                                minlength=self.num_shards)
        return self.block(int(per_shard.max()))

    def add(self, out: TrieOutput, stop: TrieStop, rounds: int) -> None:
        """Take a chunk's output, ``out`` [len(rows)] on the host in call order, and where
        it stopped on each row's shard (of at most ``rounds``), and pick the next chunk's
        rows: the steps still going and the spares they may take."""
        rows = len(self.row_shards)
        if self.out.hidden is None:
            self.out = dataclasses.replace(
                self.out, hidden=np.zeros((rows, out.hidden.shape[1]), out.hidden.dtype),
                page_table=None if out.page_table is None else np.full(
                    (rows, out.page_table.shape[1]), self.no_page, out.page_table.dtype))
        for field in dataclasses.fields(TrieOutput):
            values = getattr(out, field.name)
            if values is not None:  # a page table on pages only
                getattr(self.out, field.name)[self.rows] = values
        going = (out.group >= 0) & (out.end_reason < 0)
        # A shard that stopped short of its rounds with steps going lacked spares.
        starved = going & (stop.rounds < rounds)
        self.needed[:] = 0
        self.needed[self.row_shards[self.rows[starved]]] = stop.needed[starved]
        going = self.rows[going]
        self.rows = np.sort(np.concatenate([going, self._spares_for(going)]))

    def _spares_for(self, going: np.ndarray) -> np.ndarray:
        """On each shard, its lowest free spares for the splits its ``going`` rows may
        still make, as many as the spare rule gives (all of them unless ``bounded``):
        the spares those splits take, lowest first, as in one call."""
        shards = self.row_shards
        splits = np.bincount(shards[going], weights=self.out.count[going] - 1,
                             minlength=self.num_shards).astype(np.int64)
        if self.bounded:
            rows = np.bincount(shards[going], minlength=self.num_shards)
            spares = np.maximum(self.spare_floor, np.ceil(self.spare_share * rows))
            spares = np.minimum(splits, spares.astype(np.int64) + self.needed)
            # The spares that fit the padded block the call computes anyway.
            block = self.block(int(np.max(rows + spares, initial=0)))
            splits = np.minimum(splits, block - rows)
        free = np.flatnonzero(self.out.group < 0)
        return np.concatenate([free[shards[free] == shard][:n]
                               for shard, n in enumerate(splits)]).astype(np.int64)
