"""The KV bytes bench_search's paged runs peak at, against the distinct tokens their
trees hold then (its "z"): a ``PolicyRuntime`` that mirrors every slot's tokens on the
host and counts their token trie at each new peak of pages."""

from __future__ import annotations

from typing import Sequence


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
            self.at_held_peak = (0, 0)  # (most pages held between calls, distinct tokens)

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
                del self.sequences[slot]

        def _measure(self) -> None:
            pages = self.decoder.pages
            if pages.peak_pages_in_use > self.at_peak[0]:
                self.at_peak = (pages.peak_pages_in_use, distinct_tokens(self.sequences.values()))
            if pages.pages_in_use > self.at_held_peak[0]:
                self.at_held_peak = (pages.pages_in_use,
                                     distinct_tokens(self.sequences.values()))

    return MeteredRuntime
