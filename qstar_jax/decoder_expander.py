"""Search's ``StepExpander`` over the batched decoder: fork, sample, hand back steps.

A root (handle None) is prefilled on first expansion and its slot freed right after,
since every planner expands a node at most once. A child's sampling stream is keyed by
(problem, parent node, child index), so a search does not depend on batch packing.
"""

from __future__ import annotations

from typing import Any, Sequence

from qstar_jax.policy_runtime import PolicyRuntime, stable_id
from qstar_jax.search.interface import ExpandRequest, Step


class DecoderExpander:
    def __init__(self, runtime: PolicyRuntime):
        self.runtime = runtime

    def expand(self, requests: Sequence[ExpandRequest]) -> list[list[Step]]:
        rt = self.runtime
        roots = [r for r in requests if r.node.handle is None]
        root_slots = dict(zip((id(r) for r in roots), rt.prefill(
            [r.problem_index for r in roots], [r.node.steps for r in roots])))
        parents = [root_slots.get(id(r), r.node.handle) for r in requests]
        children = rt.fork(parents, [r.num_children for r in requests])
        rt.free(list(root_slots.values()))
        flat = [(r, i, slot) for r, slots in zip(requests, children)
                for i, slot in enumerate(slots)]
        sampled = rt.sample(
            [slot for _, _, slot in flat], [r.problem_index for r, _, _ in flat],
            [stable_id("child", r.node.id, i) for r, i, _ in flat],
            [r.temperature for r, _, _ in flat])
        steps: list[list[Step]] = [[] for _ in requests]
        owner = {id(r): k for k, r in enumerate(requests)}
        for (request, _, _), s in zip(flat, sampled):
            steps[owner[id(request)]].append(Step(
                text=s.text, token_ids=s.token_ids, logprob=s.logprob, hidden=s.hidden,
                ends_trace=s.ends_trace, handle=s.slot))
        return steps

    def release(self, handles: Sequence[Any]) -> None:
        self.runtime.free([h for h in handles if h is not None])

    def generated_tokens(self, problem_index: int) -> int:
        return self.runtime.generated[problem_index]

    def prefilled_tokens(self, problem_index: int) -> int:
        return self.runtime.prefilled[problem_index]
