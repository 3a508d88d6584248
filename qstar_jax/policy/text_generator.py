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

from typing import Sequence

from qstar_jax.decoding.kv_cache import SlotPoolExhausted
from qstar_jax.decoding.page_table import PagePoolExhausted
from qstar_jax.policy.kept_rows import KeptRows
from qstar_jax.policy.runtime import PolicyRuntime, stable_id
from qstar_jax.search.interface import Generation, TextRequest


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
        rt = self.runtime
        prompts = [rt.tokenizer.encode(r.prompt) for r in requests]
        roots = self._with_room(lambda: self._prefill(requests, prompts))
        # A request of one sample is sampled in its prompt's slot; others fork it.
        copies = iter(self._with_room(lambda: rt.fork(
            [root for root, r in zip(roots, requests) if r.num_samples > 1],
            [r.num_samples for r in requests if r.num_samples > 1])))
        rows = [slot for root, r in zip(roots, requests)
                for slot in ([root] if r.num_samples == 1 else next(copies))]
        owners = [(request, j) for request in requests for j in range(request.num_samples)]
        sampled = self._with_room(lambda: rt.sample_texts(
            rows, [request.problem_index for request, _ in owners],
            [stable_id("text", request.stream, j) for request, j in owners],
            [request.temperature for request, _ in owners],
            [min(self.max_tokens, request.max_tokens or self.max_tokens)
             for request, _ in owners],
            [request.read_complete for request, _ in owners]))
        # Each request keeps one row: its only sample's, or the prompt its samples share.
        out, first = [], 0
        for k, request in enumerate(requests):
            samples = sampled[first:first + request.num_samples]
            if request.num_samples == 1:
                self._keep(request.problem_index, rows[first],
                           [*prompts[k], *samples[0].token_ids])
            else:
                self._keep(request.problem_index, roots[k], prompts[k])
                rt.free(rows[first:first + request.num_samples])
            out.append([Generation(text=t.text, generated_tokens=len(t.token_ids))
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
