"""The KV bytes bench_search's paged runs peak at, against the distinct tokens their
trees hold then (its "z"): a ``PolicyRuntime`` that mirrors every slot's tokens on the
host and counts their token trie at each new peak of pages; at the most pages held
between calls it also splits their token places into distinct tokens, tokens held twice
and places no token fills (``HeldPages``)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


def distinct_tokens(sequences) -> int:
    """Nodes of the token trie of ``sequences``, each starting with its problem's marker
    (one per problem, not counted): the distinct tokens of each problem's slots, summed."""
    trie: dict = {}
    nodes = 0
    for sequence in sequences:
        node = trie
        for token in sequence:
            if token not in node:
                node[token] = {}
                nodes += 1
            node = node[token]
    return nodes - len(trie)


def filled_places(table: np.ndarray, pages_held: np.ndarray, page_size: int,
                  slots: Sequence[int], lengths: Sequence[int], num_pages: int) -> int:
    """Token places the slots' pages fill: each page counts the most tokens any slot
    holding it keeps in it (a page shared by a fork, partly filled, counts once)."""
    fill = np.zeros(num_pages, np.int64)
    for slot, length in zip(slots, lengths, strict=True):
        held = table[slot, :pages_held[slot]]
        np.maximum.at(fill, held, np.clip(length - page_size * np.arange(len(held)), 0,
                                          page_size))
    return int(fill.sum())


@dataclasses.dataclass(frozen=True)
class HeldPages:
    """The most pages the live slots held between calls, and what their places hold:
    ``distinct`` tokens (the token trie of the slots' sequences), ``filled`` places
    (``filled_places``: so ``filled - distinct`` tokens are held twice or more: a forked
    slot's copy of a partly filled page it shared, or equal tokens sampled apart) and
    the rest unfilled (the ends of partly filled pages: each slot's last, at most)."""

    pages: int = 0
    distinct: int = 0
    filled: int = 0
    slots: int = 0

    def places(self, page_size: int) -> dict[str, int]:
        """The pages' ``pages * page_size`` token places, split (bench_search's JSON)."""
        return {"distinct": self.distinct, "held_twice": self.filled - self.distinct,
                "unfilled": self.pages * page_size - self.filled, "slots": self.slots}


def metered_runtime_class():
    """``PolicyRuntime`` that also mirrors every slot's token sequence on the host and,
    after each call that took the paged cache to a new peak of pages in use (or of pages
    held between calls), counts the distinct tokens the live slots hold."""
    from qstar_jax.policy.runtime import PolicyRuntime

    class MeteredRuntime(PolicyRuntime):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.sequences: dict[int, tuple[int, ...]] = {}
            self.at_peak = (0, 0)  # (peak pages in use, distinct tokens after that call)
            self.at_held_peak = HeldPages()  # most pages held between calls

        def prefill_texts(self, problem_indices: Sequence[int], texts: Sequence[str]):
            slots = super().prefill_texts(problem_indices, texts)
            for slot, i, text in zip(slots, problem_indices, texts):
                self.sequences[slot] = (-1 - i, *self.tokenizer.encode(text))
            self._measure()
            return slots

        def sample(self, slots, problem_indices, node_ids, temperatures):
            steps = super().sample(slots, problem_indices, node_ids, temperatures)
            for slot, step in zip(slots, steps):
                self.sequences[slot] += step.token_ids
            self._measure()
            return steps

        def sample_trie(self, slots, problem_indices, group_ids, temperatures, counts):
            before = [self.sequences[slot] for slot in slots]
            tries = super().sample_trie(slots, problem_indices, group_ids, temperatures, counts)
            for sequence, steps in zip(before, tries):
                for step in steps:
                    self.sequences[step.slot] = sequence + step.token_ids
            self._measure()
            return tries

        def fork(self, parents, counts):
            children = super().fork(parents, counts)
            for parent, slots in zip(parents, children):
                for slot in slots:  # a trie's split slot is mirrored once the trie returns
                    self.sequences[slot] = self.sequences.get(parent, ())
            return children

        def free(self, slots):
            super().free(slots)
            for slot in slots:
                self.sequences.pop(slot, None)  # a call undone when full frees its slots

        def _measure(self) -> None:
            pages = self.decoder.pages
            if pages.peak_pages_in_use > self.at_peak[0]:
                self.at_peak = (pages.peak_pages_in_use, distinct_tokens(self.sequences.values()))
            if pages.pages_in_use > self.at_held_peak.pages:
                slots = list(self.sequences)
                self.at_held_peak = HeldPages(
                    pages=pages.pages_in_use, distinct=distinct_tokens(self.sequences.values()),
                    filled=filled_places(pages.table, pages.pages_held, pages.page_size, slots,
                                         self.decoder.lengths(slots), len(pages.refcounts)),
                    slots=len(slots))

    return MeteredRuntime
