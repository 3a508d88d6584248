"""The slot bookkeeping of a scripted stand-in for ``PolicyRuntime``: slots handed out and
given back, prompt characters (its tokens) charged per problem. Subclasses script
``sample``."""

import collections
import contextlib
import itertools


class CharTokenizer:
    def encode(self, text):
        return [ord(c) for c in text]

    encode_input = encode  # no BOS


class AnswerLineTask:
    """A line starting "answer" is the final-answer line."""

    def is_terminal_step(self, line):
        return line.startswith("answer")


class ScriptedRuntime:
    def __init__(self):
        self._slots = itertools.count(1)
        self.held: set[int] = set()
        self.generated = collections.Counter()
        self.prefilled = collections.Counter()
        self.tokenizer = CharTokenizer()
        self.task = AnswerLineTask()

    def prefill(self, problem_indices, prefixes):
        return self.prefill_texts(problem_indices, ["prompt"] * len(problem_indices))

    def prefill_texts(self, problem_indices, texts):
        return self.prefill_tokens(problem_indices, [self.tokenizer.encode(t) for t in texts])

    def prefill_tokens(self, problem_indices, token_lists, *, sources=None, shared=None):
        shared = shared or [0] * len(token_lists)
        for i, tokens, kept in zip(problem_indices, token_lists, shared):
            self.prefilled[i] += len(tokens) - kept
        return self._take(len(token_lists))

    def fork(self, parents, counts):
        return [self._take(n) for n in counts]

    def undone_when_full(self):
        """A scripted cache is never full."""
        return contextlib.nullcontext()

    def free(self, slots):
        self.held -= set(slots)

    def _take(self, n):
        slots = [next(self._slots) for _ in range(n)]
        self.held |= set(slots)
        return slots
