"""Step after step through ``Decoder.sample_steps``, for tests that follow a trajectory."""

from collections.abc import Iterator, Sequence

import jax
import numpy as np

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.step_chunks import StepBatch
from qstar_jax.decoding.step_sampler import EndReason


def generate_steps(decoder: Decoder, slots: Sequence[int], *, problem_keys: jax.Array,
                   node_ids: Sequence[int], params: SamplingParams,
                   max_tokens: int | Sequence[int], max_steps: int) -> Iterator[StepBatch]:
    """Sample step after step, yielding each StepBatch, until every row has ended its
    trajectory (EOS or a full slot) or ``max_steps`` steps. Each batch holds only the
    rows still going; its ``slots`` say which."""
    slots = np.asarray(slots)
    node_ids = np.asarray(node_ids)
    caps = np.broadcast_to(np.asarray(max_tokens), slots.shape)
    going = np.ones(len(slots), bool)
    for _ in range(max_steps):
        rows = np.flatnonzero(going)
        if rows.size == 0:
            return
        step = decoder.sample_steps(
            slots[rows], problem_keys=problem_keys[rows], node_ids=node_ids[rows],
            params=jax.tree.map(lambda x: np.asarray(x)[rows], params), max_tokens=caps[rows])
        yield step
        going[rows] = ~np.isin(step.end_reason, (EndReason.EOS, EndReason.CACHE_FULL))
