"""Search's ``TextGenerator`` over the batched decoder: whole texts from any prompt.

Each request's prompt is prefilled once and forked into one row per sample; the rows are
sampled a line at a time (the step sampler) until each ends: EOS, a full slot, a line
longer than the step token cap, the task's final-answer line, or ``max_tokens`` sampled
(or the request's own ``max_tokens``, when it asks for fewer).
Tokens are charged to the request's problem, as the expander's are, so MCTSr and value
prompts are counted like every other method.
"""

from __future__ import annotations

from typing import Sequence

from qstar_jax.policy.runtime import PolicyRuntime, stable_id
from qstar_jax.search.interface import Generation, TextRequest
from qstar_jax.tasks.base import STEP_SEPARATOR


class DecoderTextGenerator:
    def __init__(self, runtime: PolicyRuntime, *, max_tokens: int):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.runtime = runtime
        self.max_tokens = max_tokens

    def generate(self, requests: Sequence[TextRequest]) -> list[list[Generation]]:
        rt = self.runtime
        roots = rt.prefill_texts([r.problem_index for r in requests],
                                 [r.prompt for r in requests])
        rows = [slot for slots in rt.fork(roots, [r.num_samples for r in requests])
                for slot in slots]
        rt.free(roots)
        owners = [(requests[k], j) for k, r in enumerate(requests) for j in range(r.num_samples)]
        limits = [min(self.max_tokens, request.max_tokens or self.max_tokens)
                  for request, _ in owners]
        lines: list[list[str]] = [[] for _ in rows]
        counts = [0] * len(rows)
        live = list(range(len(rows)))
        for line in range(self.max_tokens):  # every line is at least one token
            if not live:
                break
            sampled = rt.sample(
                [rows[x] for x in live], [owners[x][0].problem_index for x in live],
                [stable_id("text", owners[x][0].stream, owners[x][1], line) for x in live],
                [owners[x][0].temperature for x in live])
            ended = []
            for x, step in zip(live, sampled):
                lines[x].append(step.text)
                counts[x] += len(step.token_ids)
                if step.ends_trace or counts[x] >= limits[x]:
                    ended.append(x)
            rt.free([rows[x] for x in ended])
            live = [x for x in live if x not in ended]
        rt.free([rows[x] for x in live])
        out: list[list[Generation]] = [[] for _ in requests]
        texts = iter(zip(lines, counts))
        for k, request in enumerate(requests):
            for _ in range(request.num_samples):
                text_lines, count = next(texts)
                out[k].append(Generation(text=STEP_SEPARATOR.join(text_lines).strip(),
                                         generated_tokens=count))
        return out

    def generated_tokens(self, problem_index: int) -> int:
        return self.runtime.generated[problem_index]

    def prefilled_tokens(self, problem_index: int) -> int:
        return self.runtime.prefilled[problem_index]
