"""Steps sampled as a trie: ``count`` independent steps after one slot, each distinct
token prefix computed once.

One row per distinct prefix carries how many of its group's draws share that prefix.
Each round draws that many next tokens from the row's distribution (the LM head runs
once per row), and the row splits into one row per distinct token drawn, each with its
share of the count; a new row starts from a copy of the slot's cache. Only the distinct
rows are fed through the model, so a policy that repeats itself pays for each repeat
once, and the draws keep the joint distribution of independent samples. A draw's random
key is fixed by (problem, group id, token path, draw number), so a group's steps do not
depend on which other groups share the call.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Sequence

import jax
import numpy as np

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.step_sampler import EndReason


@dataclasses.dataclass(frozen=True, kw_only=True)
class SharedStep:
    """A distinct step drawn ``count`` times; ``slot`` holds it (extended in place).
    logprob: its tokens' summed log-probabilities under the unmodified distribution;
    hidden: the final-norm hidden state after its last token."""

    slot: int
    tokens: tuple[int, ...]
    logprob: float
    end_reason: EndReason
    hidden: np.ndarray
    count: int


@dataclasses.dataclass
class _Row:
    group: int
    slot: int
    count: int
    tokens: list[int]
    logprob: float = 0.0
    end_reason: EndReason | None = None


def path_id(tokens: Sequence[int]) -> int:
    """A 31-bit id of a token path, the same in every process."""
    return zlib.crc32(np.asarray(tokens, np.int32).tobytes()) & 0x7FFFFFFF


def sample_shared_steps(decoder: Decoder, slots: Sequence[int], counts: Sequence[int], *,
                        key_table: jax.Array, key_rows: Sequence[int],
                        group_ids: Sequence[int], params: SamplingParams, max_tokens: int
                        ) -> tuple[list[list[SharedStep]], list[int]]:
    """For group g, ``counts[g]`` independent steps after ``slots[g]`` (each ends at a
    newline token, EOS, ``max_tokens`` or a full slot, as in ``Decoder.sample_steps``).

    Group g draws with the typed key ``key_table[key_rows[g]]`` (e.g. its problem's) and
    ``group_ids[g]``, an int in [0, 2**31); params: SamplingParams [G]. Returns
    each group's distinct steps, in the order they first split off (the counts sum to
    ``counts[g]``; a step's slot is ``slots[g]`` or a newly allocated one), and the tokens
    fed per group: the size of its trie, what the sampling computed.
    """
    groups = len(slots)
    if not (len(counts) == len(group_ids) == groups) or min(counts, default=1) < 1:
        raise ValueError(f"give one count >= 1 and one group id per slot; got {len(slots)} "
                         f"slots, counts {list(counts)}, {len(group_ids)} group ids")
    params.check(groups)
    rows = [_Row(group=g, slot=int(slot), count=int(c), tokens=[])
            for g, (slot, c) in enumerate(zip(slots, counts))]
    full = decoder.lengths(slots) >= decoder.max_len
    for row, is_full in zip(rows, full):
        if is_full:
            row.end_reason = EndReason.CACHE_FULL
        elif max_tokens < 1:
            row.end_reason = EndReason.CAP
    fed = [0] * groups
    while active := [r for r in rows if r.end_reason is None]:
        per_row = [r.count for r in active]
        draw_rows = np.repeat(np.arange(len(active)), per_row)
        draw_groups = np.repeat([r.group for r in active], per_row)
        tokens, logprobs = decoder.draw_tokens(
            [r.slot for r in active], draw_rows, key_table=key_table,
            key_rows=np.asarray(key_rows)[draw_groups], node_ids=np.asarray(group_ids)[draw_groups],
            path_ids=np.repeat([path_id(r.tokens) for r in active], per_row),
            draw_ids=np.concatenate([np.arange(c) for c in per_row]),
            params=jax.tree.map(lambda x: np.asarray(x)[draw_groups], params))
        plan = []  # (row, token, count, logprob): the first per row keeps the row's slot
        splits = []  # (parent slot, new row)
        start = 0
        for row in active:
            drawn = tokens[start:start + row.count].tolist()
            drawn_logprobs = logprobs[start:start + row.count]
            start += row.count
            for n, token in enumerate(dict.fromkeys(drawn)):
                target = row
                if n:
                    target = _Row(group=row.group, slot=-1, count=0, tokens=list(row.tokens),
                                  logprob=row.logprob)
                    splits.append((row.slot, target))
                plan.append((target, token, drawn.count(token),
                             float(drawn_logprobs[drawn.index(token)])))
        if splits:
            new_slots = decoder.allocate(len(splits))
            for slot, (_, target) in zip(new_slots, splits):
                target.slot = slot
            decoder.fork([parent for parent, _ in splits], new_slots)
            rows.extend(target for _, target in splits)
        decoder.feed_tokens([target.slot for target, *_ in plan], [t for _, t, *_ in plan])
        lengths = decoder.lengths([target.slot for target, *_ in plan])
        for (target, token, count, logprob), length in zip(plan, lengths):
            target.tokens.append(token)
            target.count, target.logprob = count, target.logprob + logprob
            fed[target.group] += 1
            target.end_reason = _end_reason(decoder, token, length, len(target.tokens),
                                            max_tokens)
    hidden = decoder.last_hidden([r.slot for r in rows])
    out: list[list[SharedStep]] = [[] for _ in range(groups)]
    for row, h in zip(rows, hidden):
        out[row.group].append(SharedStep(slot=row.slot, tokens=tuple(row.tokens),
                                         logprob=row.logprob, end_reason=row.end_reason,
                                         hidden=h, count=row.count))
    return out, fed


def _end_reason(decoder: Decoder, token: int, length: int, produced: int,
                max_tokens: int) -> EndReason | None:
    """Why a row that just took ``token`` ends its step (``sample_step``'s order), if it does."""
    if token in decoder.eos_ids:
        return EndReason.EOS
    if decoder.newline_table[token]:
        return EndReason.NEWLINE
    if length >= decoder.max_len:
        return EndReason.CACHE_FULL
    if produced >= max_tokens:
        return EndReason.CAP
    return None
