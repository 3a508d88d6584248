"""The decoder adapter keys each child's sampling stream by (node, child number)."""

import itertools

import numpy as np

from qstar_jax.policy.expander import DecoderExpander
from qstar_jax.policy.runtime import SampledStep
from qstar_jax.search.interface import ExpandRequest, Node


class RecordingRuntime:
    """The ``PolicyRuntime`` calls the expander makes; a sampled step's text is the node
    id its stream was keyed by, so equal keys give equal steps."""

    def __init__(self):
        self._slots = itertools.count(1)
        self.freed: list[int] = []

    def prefill(self, problem_indices, prefixes):
        return [next(self._slots) for _ in problem_indices]

    def fork(self, parents, counts):
        return [[next(self._slots) for _ in range(n)] for n in counts]

    def free(self, slots):
        self.freed.extend(slots)

    def sample(self, slots, problem_indices, node_ids, temperatures):
        return [SampledStep(text=str(key), token_ids=(1,), logprob=0.0, hidden=np.zeros(2),
                            ends_trace=False, slot=slot) for slot, key in zip(slots, node_ids)]


ROOT = Node(id=0, parent=None, steps=(), depth=0, g=0.0, h=0.0, f=0.0, terminal=False,
            handle=None, step_logprob=0.0, hidden=None)


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
