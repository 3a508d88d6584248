"""Search's ``StepExpander`` over the batched decoder: fork, sample, hand back steps.

A root (handle None) is prefilled on each expansion and its slot freed right after, so
no slot is held for a node that may never be expanded again. A child's sampling stream
is keyed by (problem, parent node, child number), so a search does not depend on batch
packing and a node expanded again samples new steps. A call that finds the cache full
frees what it took and raises NoRoom, so the driver can make it again later.
"""

from __future__ import annotations

from typing import Any, Sequence

from qstar_jax.decoding.kv_cache import SlotPoolExhausted
from qstar_jax.decoding.page_table import PagePoolExhausted
from qstar_jax.policy.runtime import PolicyRuntime, SampledStep, stable_id
from qstar_jax.search.interface import ExpandRequest, NoRoom, Step


class DecoderExpander:
    """``prefix_sharing``: sample each node's children as a trie (``sample_trie``), one
    group per (problem, path, temperature) so that chains standing on the same steps
    share too; the samples have the same distribution, each distinct token is computed
    and charged once. Off: every child is its own row and pays for every token."""

    def __init__(self, runtime: PolicyRuntime, *, prefix_sharing: bool = False):
        self.runtime = runtime
        self.prefix_sharing = prefix_sharing

    def expand(self, requests: Sequence[ExpandRequest]) -> list[list[Step]]:
        try:
            with self.runtime.undone_when_full():
                return self._expand(requests)
        except (SlotPoolExhausted, PagePoolExhausted) as full:
            raise NoRoom(str(full)) from full

    def _expand(self, requests: Sequence[ExpandRequest]) -> list[list[Step]]:
        rt = self.runtime
        roots = [k for k, r in enumerate(requests) if r.node.handle is None]
        root_slots = dict(zip(roots, rt.prefill([requests[k].problem_index for k in roots],
                                                [requests[k].node.steps for k in roots])))
        parents = [root_slots.get(k, r.node.handle) for k, r in enumerate(requests)]
        if self.prefix_sharing:
            return self._expand_as_tries(requests, parents, list(root_slots.values()))
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
            steps[k].append(_as_step(s))
        return steps

    def _expand_as_tries(self, requests: Sequence[ExpandRequest], parents: list[int],
                         root_slots: list[int]) -> list[list[Step]]:
        rt = self.runtime
        groups: dict[tuple, list[int]] = {}
        for k, r in enumerate(requests):
            groups.setdefault((r.problem_index, tuple(r.node.steps), r.temperature), []).append(k)
        members = list(groups.values())
        work = rt.fork([parents[ks[0]] for ks in members], [1] * len(members))
        rt.free(root_slots)
        first = [requests[ks[0]] for ks in members]
        sampled = rt.sample_trie(
            [slots[0] for slots in work], [r.problem_index for r in first],
            [stable_id("children", r.node.id, r.first_child) for r in first],
            [r.temperature for r in first],
            [sum(requests[k].num_children for k in ks) for ks in members])
        steps: list[list[Step]] = [[] for _ in requests]
        for ks, group in zip(members, sampled):
            for k in ks:
                mine, group = group[:requests[k].num_children], group[requests[k].num_children:]
                steps[k] = [_as_step(s) for s in mine]
        return steps

    def release(self, handles: Sequence[Any]) -> None:
        self.runtime.free([h for h in handles if h is not None])

    def generated_tokens(self, problem_index: int) -> int:
        return self.runtime.generated[problem_index]

    def prefilled_tokens(self, problem_index: int) -> int:
        return self.runtime.prefilled[problem_index]


def _as_step(s: SampledStep) -> Step:
    return Step(text=s.text, token_ids=s.token_ids, logprob=s.logprob, hidden=s.hidden,
                ends_trace=s.ends_trace, handle=s.slot)
