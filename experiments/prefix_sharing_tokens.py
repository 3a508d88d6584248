"""What each method would spend with a prefix-sharing sampler: a run's search replayed,
each problem charged one generated token per distinct (path, token prefix).

The K steps Q* samples from a node, and best-of-N's N chains from the root, are i.i.d.
samples from a shared prefix, and a peaked policy repeats itself (A* merges identical
siblings, but the decoder has generated every copy). A sampler that keeps one row per
distinct prefix, with a count, and splits the count over the tokens it draws (a
multinomial on the next-token distribution) draws samples with the same joint
distribution, computing only the trie of distinct prefixes (``eval.prefix_sharing``
runs one, on the host for now). This script keeps the decoder's own sampling, and the
expander recounts each method's generated tokens on a trie per problem (prefilled tokens, Q̂
calls and wall-clock are the decoder's own). Accuracy is the search's; the token figures
are the ones such a sampler would have; every method is charged alike, and
``best_of_n_matched`` starts from Q*'s recounted tokens (a recounted best-of-N grows
slower than linearly in N, so check that it did spend as much).

    python experiments/prefix_sharing_tokens.py --reuse runs/default --out runs/trie \\
        task.eval_split=validation 'eval.methods=[best_of_n,qstar,best_of_n_matched]'

Prints the summary table and, as its last line, JSON:
{"methods": {NAME: {"accuracy": ..., "n": ..., "generated_tokens_per_problem": ...}}}.
"""

from __future__ import annotations

import collections
import sys
from typing import Sequence

from qstar_jax.decoder_expander import DecoderExpander
from qstar_jax.reused_evaluation import evaluate_reused_run


class TokenTrie:
    """The generated tokens of one problem's search as a trie: a token costs one the
    first time its (path of steps before it, token prefix within its step) appears."""

    def __init__(self):
        self._seen: set[tuple[tuple[str, ...], tuple[int, ...]]] = set()

    def charge(self, path: Sequence[str], token_ids: Sequence[int]) -> int:
        """Tokens of a step sampled after ``path`` that no earlier sample computed."""
        path, ids, fresh = tuple(path), tuple(token_ids), 0
        for end in range(1, len(ids) + 1):
            key = (path, ids[:end])
            if key not in self._seen:
                self._seen.add(key)
                fresh += 1
        return fresh


class TrieChargedExpander(DecoderExpander):
    """The decoder's expander, charging each problem its trie's tokens."""

    def __init__(self, runtime):
        super().__init__(runtime)
        self._tries = collections.defaultdict(TokenTrie)
        self._charged = collections.Counter()

    def expand(self, requests):
        steps = super().expand(requests)
        for request, sampled in zip(requests, steps):
            trie = self._tries[request.problem_index]
            self._charged[request.problem_index] += sum(
                trie.charge(request.node.steps, step.token_ids) for step in sampled)
        return steps

    def generated_tokens(self, problem_index: int) -> int:
        return self._charged[problem_index]


def main(argv: list[str]) -> int:
    return evaluate_reused_run(argv, __doc__.split("\n\n")[0],
                               evaluate_options=lambda ctx: {"make_expander": TrieChargedExpander})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
