"""The decoder adapter keys each child's sampling stream by (node, child number); with
prefix sharing it samples one trie per (problem, path, temperature) and slices it back."""

import contextlib
import itertools

import numpy as np

from qstar_jax.policy.expander import DecoderExpander
from qstar_jax.policy.runtime import SampledStep, stable_id
from qstar_jax.search.interface import ExpandRequest, Node


class RecordingRuntime:
    """The ``PolicyRuntime`` calls the expander makes; a sampled step's text is the node
    id its stream was keyed by, so equal keys give equal steps (its tokens, logprob,
    hidden state and end read its slot). A fork from a freed slot fails, as the decoder
    refuses one (its parent must hold tokens)."""

    def __init__(self):
        self._slots = itertools.count(1)
        self.freed: list[int] = []
        self.forked: list[tuple[list[int], list[int]]] = []
        self.shared_calls: list[dict] = []
        self.calls: list[dict] = []

    def prefill(self, problem_indices, prefixes):
        return [next(self._slots) for _ in problem_indices]

    def undone_when_full(self):
        return contextlib.nullcontext()

    def fork(self, parents, counts):
        assert not set(parents) & set(self.freed), "forked from a freed slot"
        self.forked.append((list(parents), list(counts)))
        return [[next(self._slots) for _ in range(n)] for n in counts]

    def free(self, slots):
        self.freed.extend(slots)

    def sample(self, slots, problem_indices, node_ids, temperatures):
        self.calls.append(dict(slots=list(slots), problems=list(problem_indices),
                               node_ids=list(node_ids), temperatures=list(temperatures)))
        return [SampledStep(text=str(key), token_ids=(slot,), logprob=-slot / 10,
                            hidden=np.full(2, slot), ends_trace=slot % 2 == 0, slot=slot)
                for slot, key in zip(slots, node_ids)]

    def sample_trie(self, slots, problem_indices, group_ids, temperatures, counts):
        """Group g's steps are "<group id>/<j>" for j < counts[g], j = 0 in slots[g]."""
        self.shared_calls.append(dict(slots=list(slots), problems=list(problem_indices),
                                      group_ids=list(group_ids),
                                      temperatures=list(temperatures), counts=list(counts)))
        return [[SampledStep(text=f"{key}/{j}", token_ids=(1,), logprob=0.0,
                             hidden=np.zeros(2), ends_trace=False,
                             slot=slot if j == 0 else next(self._slots))
                 for j in range(count)]
                for slot, key, count in zip(slots, group_ids, counts)]


ROOT = Node(id=0, parent=None, steps=(), depth=0, g=0.0, h=0.0, f=0.0, terminal=False,
            handle=None)


def _texts(first_child, num_children):
    expander = DecoderExpander(RecordingRuntime())
    [steps] = expander.expand([ExpandRequest(problem_index=0, node=ROOT, temperature=1.0,
                                             num_children=num_children, first_child=first_child)])
    assert expander.runtime.freed, "the prefilled root slot is freed after forking"
    return [step.text for step in steps]


def test_a_second_expansion_samples_the_children_after_the_first():
    first, second = _texts(0, 3), _texts(3, 3)
    assert first + second == _texts(0, 6)  # two expansions of 3 = one of 6
    assert len(set(first + second)) == 6


def _node(id, steps, handle):
    return Node(id=id, parent=0, steps=steps, depth=len(steps), g=0.0, h=0.0, f=0.0,
                terminal=False, handle=handle)


def test_shared_expansion_samples_one_trie_per_path_and_slices_it_back():
    """Requests of one problem on the same steps at the same temperature share a trie
    (chains standing on equal paths); another problem, path or temperature does not."""
    runtime = RecordingRuntime()
    first, twin = _node(5, ("x",), handle=101), _node(9, ("x",), handle=102)
    requests = [
        ExpandRequest(problem_index=0, node=first, num_children=2, temperature=1.0,
                      first_child=4),
        ExpandRequest(problem_index=1, node=_node(5, ("x",), handle=103), num_children=3,
                      temperature=1.0),
        ExpandRequest(problem_index=0, node=twin, num_children=1, temperature=1.0),
        ExpandRequest(problem_index=0, node=_node(6, ("y",), handle=104), num_children=2,
                      temperature=1.0),
        ExpandRequest(problem_index=0, node=_node(7, ("x",), handle=105), num_children=1,
                      temperature=0.5),
        ExpandRequest(problem_index=2, node=ROOT, num_children=2, temperature=1.0),
    ]
    steps = DecoderExpander(runtime, prefix_sharing=True).expand(requests)

    root_slot = 1  # the first slot the runtime hands out: the prefilled root's
    # One work slot per group, forked from its first request's node (the root from its
    # prefilled slot, which is freed once forked).
    assert runtime.forked == [([101, 103, 104, 105, root_slot], [1] * 5)]
    assert runtime.freed == [root_slot]
    [call] = runtime.shared_calls
    group_ids = [stable_id("children", 5, 4), stable_id("children", 5, 0),
                 stable_id("children", 6, 0), stable_id("children", 7, 0),
                 stable_id("children", 0, 0)]
    assert call["group_ids"] == group_ids
    assert call["problems"] == [0, 1, 0, 0, 2]
    assert call["temperatures"] == [1.0, 1.0, 1.0, 0.5, 1.0]
    assert call["counts"] == [3, 3, 2, 1, 2]  # the twins' 2 + 1 in one trie
    a, b, c, d, e = group_ids
    assert [[step.text for step in mine] for mine in steps] == [
        [f"{a}/0", f"{a}/1"], [f"{b}/0", f"{b}/1", f"{b}/2"], [f"{a}/2"],
        [f"{c}/0", f"{c}/1"], [f"{d}/0"], [f"{e}/0", f"{e}/1"]]
    handles = [step.handle for mine in steps for step in mine]
    assert len(set(handles)) == len(handles)  # every child owns its slot


def test_each_child_row_samples_at_its_requests_problem_and_temperature():
    """Without prefix sharing, a row per child: a root (prefilled, forked, freed) of
    problem 2 at temperature 0.5 beside a held node of problem 1 at 0.7."""
    runtime = RecordingRuntime()
    requests = [ExpandRequest(problem_index=2, node=ROOT, num_children=2, temperature=0.5),
                ExpandRequest(problem_index=1, node=_node(4, ("x",), handle=101),
                              num_children=1, temperature=0.7, first_child=3)]
    steps = DecoderExpander(runtime).expand(requests)
    root_slot = 1
    assert runtime.forked == [([root_slot, 101], [2, 1])]
    assert runtime.freed == [root_slot]
    [call] = runtime.calls
    assert call["slots"] == [2, 3, 4]
    assert call["problems"] == [2, 2, 1]
    assert call["temperatures"] == [0.5, 0.5, 0.7]
    assert call["node_ids"] == [stable_id("child", 0, 0), stable_id("child", 0, 1),
                                stable_id("child", 4, 3)]
    assert [[step.handle for step in mine] for mine in steps] == [[2, 3], [4]]
    assert [(s.token_ids, s.logprob, s.hidden.tolist(), s.ends_trace)
            for mine in steps for s in mine] == [((2,), -.2, [2, 2], True),
                                                  ((3,), -.3, [3, 3], False),
                                                  ((4,), -.4, [4, 4], True)]


def test_release_frees_the_held_handles_and_skips_roots():
    runtime = RecordingRuntime()
    DecoderExpander(runtime).release([None, 7, None, 3])
    assert runtime.freed == [7, 3]


def test_tokens_are_the_runtimes_counts_of_the_problem():
    runtime = RecordingRuntime()
    runtime.generated, runtime.prefilled = {0: 1, 3: 11}, {0: 2, 3: 5}
    expander = DecoderExpander(runtime)
    assert (expander.generated_tokens(3), expander.prefilled_tokens(3)) == (11, 5)
