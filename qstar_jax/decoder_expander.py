"""Search's ``StepExpander`` over the batched decoder: fork, sample, hand back steps.

A root (handle None) is prefilled on each expansion and its slot freed right after, so
no slot is held for a node that may never be expanded again. A child's sampling stream
is keyed by (problem, parent node, child number), so a search does not depend on batch
packing and a node expanded again samples new steps.
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
        roots = [k for k, r in enumerate(requests) if r.node.handle is None]
        root_slots = dict(zip(roots, rt.prefill([requests[k].problem_index for k in roots],
                                                [requests[k].node.steps for k in roots])))
        parents = [root_slots.get(k, r.node.handle) for k, r in enumerate(requests)]
        children = rt.fork(parents, [r.num_children for r in requests])
        rt.free(list(root_slots.values()))
        # One row per child: (index of its request, child number, its slot).
        flat = [(k, i, slot) for k, slots in enumerate(children) for i, slot in enumerate(slots)]
        sampled = rt.sample(
            [slot for _, _, slot in flat], [requests[k].problem_index for k, _, _ in flat],
            [stable_id("child", requests[k].node.id, requests[k].first_child + i)
             for k, i, _ in flat],
            [requests[k].temperature for k, _, _ in flat])
        steps: list[list[Step]] = [[] for _ in requests]
        for (k, _, _), s in zip(flat, sampled):
            steps[k].append(Step(text=s.text, token_ids=s.token_ids, logprob=s.logprob,
                                 hidden=s.hidden, ends_trace=s.ends_trace, handle=s.slot))
        return steps

    def release(self, handles: Sequence[Any]) -> None:
        self.runtime.free([h for h in handles if h is not None])

    def generated_tokens(self, problem_index: int) -> int:
        return self.runtime.generated[problem_index]

    def prefilled_tokens(self, problem_index: int) -> int:
        return self.runtime.prefilled[problem_index]
