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


def assert_same_trie_groups(groups, expected_groups, *, logprob_atol: float = 1e-6) -> None:
    """Two trie calls' steps (``sample_trie_steps``), group by group: the same slots,
    tokens, counts and end reasons, log-probabilities and hidden states within float
    rounding."""
    assert len(groups) == len(expected_groups)
    for group, expected in zip(groups, expected_groups):
        assert [(s.slot, s.tokens, s.count, s.end_reason) for s in group] == \
            [(s.slot, s.tokens, s.count, s.end_reason) for s in expected]
        for s, e in zip(group, expected):
            np.testing.assert_allclose(s.logprob, e.logprob, rtol=1e-5, atol=logprob_atol)
            np.testing.assert_allclose(s.hidden, e.hidden, rtol=1e-5, atol=1e-6)


def assert_same_step_batch(batch: StepBatch, expected: StepBatch) -> None:
    """The same tokens and lengths, log-probabilities and hidden states within rounding."""
    np.testing.assert_array_equal(batch.tokens, expected.tokens)
    np.testing.assert_array_equal(batch.num_tokens, expected.num_tokens)
    for name in ("logprobs", "hidden"):
        np.testing.assert_allclose(getattr(batch, name), getattr(expected, name), rtol=1e-5,
                                   atol=1e-6, err_msg=name)
