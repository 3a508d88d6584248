"""The slot bookkeeping of a scripted stand-in for ``PolicyRuntime``: slots handed out and
given back, prompt characters charged per problem. Subclasses script ``sample``."""

import collections
import itertools


class ScriptedRuntime:
    def __init__(self):
        self._slots = itertools.count(1)
        self.held: set[int] = set()
        self.generated = collections.Counter()
        self.prefilled = collections.Counter()

    def prefill(self, problem_indices, prefixes):
        return self.prefill_texts(problem_indices, ["prompt"] * len(problem_indices))

    def prefill_texts(self, problem_indices, texts):
        for i, text in zip(problem_indices, texts):
            self.prefilled[i] += len(text)
        return self._take(len(texts))

    def fork(self, parents, counts):
        return [self._take(n) for n in counts]

    def free(self, slots):
        self.held -= set(slots)

    def _take(self, n):
        slots = [next(self._slots) for _ in range(n)]
        self.held |= set(slots)
        return slots
