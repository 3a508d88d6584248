"""The decoder's RolloutSampler: each item's prefix forked into n rows stepped until they
end or reach the step limit, chunked to fit the slot pool, every slot freed, and the
runtime built only when first asked to sample."""

import collections

import numpy as np

from qstar_jax.policy.rollouts import DecoderRolloutSampler
from qstar_jax.policy.runtime import PolicyRuntime, SampledStep, stable_id
from tests.support.scripted_runtime import ScriptedRuntime


class TraceRuntime(ScriptedRuntime, PolicyRuntime):
    """A pool of ``SLOTS`` slots whose sampled step is the key it was drawn with; a row of
    problem i ends its trace at its (i + 1)-th step. (A ``PolicyRuntime`` by type only, as
    the sampler tells a runtime from what builds one.)"""

    SLOTS = 7

    def __init__(self):
        super().__init__()
        self.decoder = self.pool = self
        self.depths = collections.Counter()
        self.temperatures: set[float] = set()

    @property
    def num_free(self):
        return self.SLOTS - len(self.held)

    def _take(self, n):
        assert n <= self.num_free, "more slots than the pool holds"
        return super()._take(n)

    def free(self, slots):
        assert self.held >= set(slots), "a slot freed twice"
        super().free(slots)

    def sample(self, slots, problem_indices, node_ids, temperatures):
        self.temperatures.update(temperatures)
        steps = []
        for slot, i, key in zip(slots, problem_indices, node_ids):
            self.depths[slot] += 1
            steps.append(SampledStep(text=str(key), token_ids=(1,), logprob=0.0,
                                     hidden=np.zeros(2), ends_trace=self.depths[slot] == i + 1,
                                     slot=slot))
        return steps


ITEMS = [(0, ("a",)), (1, ()), (2, ("b", "c"))]


def trace(prefix, sample, steps):
    return tuple(str(stable_id("rollout", *prefix, sample, depth)) for depth in range(steps))


# Problem 0's traces end after 1 step, problem 1's after 2; problem 2's are cut at 2 of 3.
EXPECTED = [[trace(("a",), j, 1) for j in range(2)], [trace((), j, 2) for j in range(2)],
            [trace(("b", "c"), j, 2) for j in range(2)]]


def test_traces_run_to_their_end_or_the_lower_step_limit_in_chunks_that_fit_the_pool():
    for sampler_limit, call_limit in [(2, 9), (9, 2)]:
        runtime = TraceRuntime()
        built = []
        sampler = DecoderRolloutSampler(lambda: built.append(1) or runtime,
                                        max_steps=sampler_limit)
        assert not built, "the runtime is built when first asked to sample"
        # 7 slots hold 2 items of a root and 2 rows each: the third goes in a second chunk.
        assert sampler.continue_from(ITEMS, 2, 0.6, max_steps=call_limit) == EXPECTED
        assert runtime.temperatures == {0.6}
        assert not runtime.held, "every slot is freed"
        assert sampler.continue_from(ITEMS[:1], 2, 0.6) == EXPECTED[:1] and built == [1]
