"""Search's ``TextGenerator`` over the batched decoder: whole texts from any prompt.

Each request's prompt is prefilled once (and forked into one row per sample where it asks
for several); every row of
a round is sampled in one step-sampler call that newlines do not end (rows leave its
chunks as they end: EOS, a full slot, or ``max_tokens`` sampled, or the request's own
``max_tokens`` when it asks for fewer, or its ``read_complete`` check calling the text
complete after a chunk). A text is read up to its first final-answer line
(the task's terminal step); the tokens after it were sampled and are charged. (Sampled a
line at a time, as before, each line's call lasted as long as the round's longest line:
a round cost the sum of its longest lines rather than its longest text.)
Tokens are charged to the request's problem, as the expander's are, so MCTSr and value
prompts are counted like every other method. Each request's finished row (its only
sample's, or the prompt its samples share) is kept for a while (``KeptRows``): a later
prompt of the same problem that begins the same way is forked from it and computes, and
is charged, only its new tokens.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

from qstar_jax.decoding.kv_cache import SlotPoolExhausted
from qstar_jax.decoding.page_table import PagePoolExhausted
from qstar_jax.policy.kept_rows import KeptRows
from qstar_jax.policy.runtime import PolicyRuntime, SampledText, stable_id
from qstar_jax.search.interface import Generation, TextRequest
from qstar_jax.values import is_integer


def check_requests(requests: Sequence[TextRequest]) -> None:
    """Raise ValueError naming the first bad setting of a request: a temperature that is
    not finite and >= 0, num_samples not an integer >= 1, max_tokens neither None (the
    generator's own limit) nor an integer >= 1."""
    for k, r in enumerate(requests):
        if not (isinstance(r.temperature, numbers.Real) and math.isfinite(r.temperature)
                and r.temperature >= 0):
            raise ValueError(f"requests[{k}].temperature must be finite and >= 0 (0 = greedy), "
                             f"got {r.temperature!r}")
        if not (is_integer(r.num_samples) and r.num_samples >= 1):
            raise ValueError(f"requests[{k}].num_samples must be an integer >= 1, got "
                             f"{r.num_samples!r}")
        if r.max_tokens is not None and not (is_integer(r.max_tokens) and r.max_tokens >= 1):
            raise ValueError(f"requests[{k}].max_tokens must be None (the generator's own "
                             f"limit) or an integer >= 1, got {r.max_tokens!r}")


class DecoderTextGenerator:
    """``kept_rows_per_problem``: finished rows each problem keeps (``KeptRows``) so a
    prompt that continues one prefills only its new tokens; 0 keeps none. Call
    ``drop_kept`` when a batch of problems is done."""

    def __init__(self, runtime: PolicyRuntime, *, max_tokens: int,
                 kept_rows_per_problem: int = 0):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.runtime = runtime
        self.max_tokens = max_tokens
        self.kept = KeptRows(kept_rows_per_problem)

    def generate(self, requests: Sequence[TextRequest]) -> list[list[Generation]]:
        """Each request's samples, in order. Bad requests are refused before any slot is
        taken; if anything fails later, the slots taken in the call are freed."""
        check_requests(requests)
        rt = self.runtime
        prompts = [rt.tokenizer.encode_input(r.prompt) for r in requests]
        roots = self._with_room(lambda: self._prefill(requests, prompts))
        rows = roots  # the samples' slots: the prompts' own until forks are taken
        try:
            rows = self._sample_rows(requests, roots)
            sampled = self._sample(requests, rows)
        except BaseException:
            rt.free(sorted(set(roots) | set(rows)))
            raise
        return self._read(requests, prompts, roots, rows, sampled)

    def _sample_rows(self, requests: Sequence[TextRequest], roots: list[int]) -> list[int]:
        """A slot per sample: a request of one sample is sampled in its prompt's slot;
        others fork it, once per sample."""
        many = [(root, r.num_samples) for root, r in zip(roots, requests) if r.num_samples > 1]
        copies = iter(self._with_room(lambda: self.runtime.fork(
            [root for root, _ in many], [n for _, n in many])))
        return [slot for root, r in zip(roots, requests)
                for slot in ([root] if r.num_samples == 1 else next(copies))]

    def _sample(self, requests: Sequence[TextRequest], rows: list[int]) -> list[SampledText]:
        owners = [(request, j) for request in requests for j in range(request.num_samples)]
        return self._with_room(lambda: self.runtime.sample_texts(
            rows, [request.problem_index for request, _ in owners],
            [stable_id("text", request.stream, j) for request, j in owners],
            [request.temperature for request, _ in owners],
            [self._token_limit(request) for request, _ in owners],
            [request.read_complete for request, _ in owners]))

    def _token_limit(self, request: TextRequest) -> int:
        """The request's own limit where it sets one below the generator's."""
        if request.max_tokens is None:
            return self.max_tokens
        return min(self.max_tokens, request.max_tokens)

    def _read(self, requests: Sequence[TextRequest], prompts: list[list[int]],
              roots: list[int], rows: list[int], sampled: list[SampledText]
              ) -> list[list[Generation]]:
        """The generations per request. Each request keeps one row: its only sample's, or
        the prompt its samples share (whose sample rows are freed)."""
        out, first = [], 0
        for k, request in enumerate(requests):
            samples = sampled[first:first + request.num_samples]
            if request.num_samples == 1:
                self._keep(request.problem_index, rows[first],
                           [*prompts[k], *samples[0].token_ids])
            else:
                self._keep(request.problem_index, roots[k], prompts[k])
                self.runtime.free(rows[first:first + request.num_samples])
            out.append([Generation(text=t.text, generated_tokens=len(t.token_ids), cut=t.cut)
                        for t in samples])
            first += request.num_samples
        return out

    def drop_kept(self) -> None:
        """Free every kept row (a batch of problems is done)."""
        self.runtime.free(self.kept.drop_all())

    def _prefill(self, requests: Sequence[TextRequest],
                 prompts: list[list[int]]) -> list[int]:
        """A slot per request holding its prompt, forked from the problem's kept row that
        shares the longest prefix with it where one does."""
        sources = [self.kept.best_source(r.problem_index, p) for r, p in zip(requests, prompts)]
        return self.runtime.prefill_tokens([r.problem_index for r in requests], prompts,
                                           sources=[slot for slot, _ in sources],
                                           shared=[n for _, n in sources])

    def _keep(self, problem_index: int, slot: int, tokens: list[int]) -> None:
        self.runtime.free(self.kept.keep(problem_index, slot, tokens))

    def _with_room(self, call):
        """``call()``; when the cache is full and rows are kept, drop them and call again
        (a full pool raises before anything changes)."""
        try:
            return call()
        except (SlotPoolExhausted, PagePoolExhausted):
            if not len(self.kept):
                raise
            self.drop_kept()
            return call()

    def generated_tokens(self, problem_index: int) -> int:
        return self.runtime.generated[problem_index]

    def prefilled_tokens(self, problem_index: int) -> int:
        return self.runtime.prefilled[problem_index]
