"""Steps sampled as a trie, as the host sees them: ``count`` independent steps after one
slot, each distinct token prefix computed once (``trie_sampler`` does the sampling).

The spare slots the trie may split into are allocated before the call, beside their
group's slot, and the unused ones freed after it, so each distinct step comes back in a
slot of its own.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.step_sampler import EndReason


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrieStep:
    """A distinct step drawn ``count`` times; ``slot`` holds it.
    logprob: its tokens' summed log-probabilities under the unmodified distribution;
    hidden: the final-norm hidden state after its last token."""

    slot: int
    tokens: tuple[int, ...]
    logprob: float
    end_reason: EndReason
    hidden: np.ndarray
    count: int


def sample_trie_steps(decoder: Decoder, slots: Sequence[int], counts: Sequence[int], *,
                      key_table: jax.Array, key_rows: Sequence[int],
                      group_ids: Sequence[int], params: SamplingParams, max_tokens: int
                      ) -> tuple[list[list[TrieStep]], list[int]]:
    """For group g, ``counts[g]`` independent steps after ``slots[g]`` (each ends at a
    newline token, EOS, ``max_tokens`` or a full slot, as in ``Decoder.sample_steps``).

    Group g draws with the typed key ``key_table[key_rows[g]]`` (e.g. its problem's) and
    ``group_ids[g]``, an int in [0, 2**31); params: SamplingParams [G]. Returns each
    group's distinct steps in the order they split off (the counts sum to ``counts[g]``;
    a step's slot is ``slots[g]`` or a newly allocated one), and the tokens fed per group:
    the size of its trie, what the sampling computed.
    """
    spare_parents = _spare_parents(slots, counts)
    spares = decoder.allocate(len(spare_parents), near=spare_parents)
    try:
        row_slots, out = decoder.sample_trie(slots, counts, spares, key_table=key_table,
                                             key_rows=key_rows, group_ids=group_ids,
                                             params=params, max_tokens=max_tokens)
    except BaseException:
        if spares:
            decoder.free(spares)
        raise
    unused = row_slots[out.group < 0]
    if unused.size:
        decoder.free(unused)
    steps: list[list[TrieStep]] = [[] for _ in slots]
    fed = [0] * len(slots)
    for row in np.flatnonzero(out.group >= 0):
        group = int(out.group[row])
        fed[group] += int(out.fed[row])
        steps[group].append(TrieStep(
            slot=int(row_slots[row]), tokens=tuple(out.tokens[row, :out.num_tokens[row]].tolist()),
            logprob=float(out.logprob[row]), end_reason=EndReason(int(out.end_reason[row])),
            hidden=out.hidden[row], count=int(out.count[row])))
    return steps, fed


def _spare_parents(slots: Sequence[int], counts: Sequence[int]) -> np.ndarray:
    """The group slot each spare goes beside, ``counts[g] - 1`` times slot g; none for
    counts that ``Decoder.sample_trie`` rejects (not one integer per slot)."""
    slots, counts = np.asarray(slots), np.asarray(counts)
    if counts.shape != slots.shape or not np.issubdtype(counts.dtype, np.integer):
        return np.zeros(0, np.int64)
    return np.repeat(slots, np.maximum(counts - 1, 0))
