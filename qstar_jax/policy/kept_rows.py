"""Finished cache rows kept with their tokens, so that a later prompt that begins the same
way is forked from one and prefills only what is new.

MCTSr's prompts are conversations that grow: a refinement's prompt is the critique's
prompt, the critique and one more request; a node's critique begins with the question and
the answer its self-scores read. Prefilled whole, each would recompute hundreds of tokens
the cache already held a round before. A problem keeps its last few rows (least recently
used first out) and only its own: no problem is charged less for another's work.
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np

# Fork only for a shared prefix of at least this many tokens: less is not worth a fork.
MIN_SHARED_TOKENS = 16


class KeptRows:
    """Per problem, at most ``per_problem`` rows (slot, the tokens it holds)."""

    def __init__(self, per_problem: int):
        if per_problem < 0:
            raise ValueError(f"per_problem must be >= 0 (0 keeps nothing), got {per_problem}")
        self.per_problem = per_problem
        self._rows: dict[int, collections.OrderedDict[int, np.ndarray]] = {}

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._rows.values())

    def best_source(self, problem_index: int, tokens: Sequence[int]) -> tuple[int | None, int]:
        """(the kept row of this problem sharing the longest prefix with ``tokens``, how
        many tokens the new row keeps from it), or (None, 0) where no row shares
        ``MIN_SHARED_TOKENS``. At least the last token is left to prefill: its hidden
        state is the row's next-token input."""
        tokens = np.asarray(tokens)
        best, best_shared = None, 0
        for slot, held in self._rows.get(problem_index, {}).items():
            n = min(len(held), len(tokens) - 1)
            differ = np.flatnonzero(held[:n] != tokens[:n])
            shared = int(differ[0]) if differ.size else n
            if shared > best_shared:
                best, best_shared = slot, shared
        if best is None or best_shared < MIN_SHARED_TOKENS:
            return None, 0
        self._rows[problem_index].move_to_end(best)
        return best, best_shared

    def keep(self, problem_index: int, slot: int, tokens: Sequence[int]) -> list[int]:
        """Keep ``slot`` holding ``tokens``; returns the slots let go to make room (or
        ``slot`` itself when nothing is kept), for the caller to free."""
        if self.per_problem == 0:
            return [slot]
        rows = self._rows.setdefault(problem_index, collections.OrderedDict())
        rows[slot] = np.asarray(tokens)
        out = []
        while len(rows) > self.per_problem:
            out.append(rows.popitem(last=False)[0])
        return out

    def drop_all(self) -> list[int]:
        """Forget every row; returns their slots, for the caller to free."""
        slots = [slot for rows in self._rows.values() for slot in rows]
        self._rows.clear()
        return slots
