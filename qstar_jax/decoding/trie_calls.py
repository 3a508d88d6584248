"""``Decoder.sample_trie`` on the host: the checks, the pages around the trie, and its
chunks (``trie_chunks``), each one call of the decoder's jitted trie sampler
(``trie_sampler``) for the rows the chunk holds.

A chunk calls ``trie_sampler.sample_trie`` for at most ``step_chunk`` rounds (0: the
whole trie in one call, holding every spare) on the steps still going and the spares
``ChunkedTrie`` gives them; a chunk that lacked spares for a round stops before it, and
the next chunk, given the spares that round needs, runs it. ``Decoder.trie_work`` counts
the calls, their padded rows, their row-rounds (each shard's padded rows times the
rounds it ran) and the starved calls.

The functions here are the decoder's own: they use its jitted call, row layout, pages
and host mirrors as ``Decoder`` methods would.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qstar_jax.decoding.data_shards import RowLayout, padded_params
from qstar_jax.decoding.input_checks import (check_spares_beside_groups, check_step_inputs,
                                             check_trie_groups)
from qstar_jax.decoding.page_bookkeeping import (lend_trie_pages, own_trie_pages,
                                                 return_lent_pages, settle_trie_pages)
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.token_batch import bucket_size
from qstar_jax.decoding.trie_chunks import ChunkedTrie
from qstar_jax.decoding.trie_sampler import TrieOutput

if TYPE_CHECKING:
    from qstar_jax.decoding.engine import Decoder

# The least bound K on a group's count a trie call is compiled for. K only sets how far
# apart one row's draws may lie (a [D, K] comparison, nothing the model computes), so
# counts 1 to 8 share one compiled variant: best-of-N's first step (count N) and its
# later ones (count 1) no longer compile apart.
MIN_COUNT_BUCKET = 8


def sample_trie(decoder: Decoder, slots: Sequence[int], counts: Sequence[int],
                spares: Sequence[int], *, key_table: jax.Array, key_rows: Sequence[int],
                group_ids: Sequence[int], params: SamplingParams,
                max_tokens: int) -> tuple[np.ndarray, TrieOutput]:
    """``Decoder.sample_trie``: its arguments and results."""
    slots = decoder._checked_slots(slots, "slots", filled=True)
    groups = len(slots)
    counts, spares = np.asarray(counts), np.asarray(spares, np.int64).reshape(-1)
    key_rows, group_ids = np.asarray(key_rows), np.asarray(group_ids)
    check_trie_groups(groups, counts, spares, key_table, key_rows)
    row_slots = decoder._checked_slots(np.concatenate([slots, spares]), "slots and spares")
    check_spares_beside_groups(decoder.pool, slots, counts, spares)
    check_step_inputs(groups, None, group_ids, params, np.asarray([max_tokens]),
                      ids_name="group_ids")
    cap_bucket = bucket_size(max_tokens, minimum=decoder.min_step_bucket)
    pages = decoder.pages
    trie = ChunkedTrie(
        counts, decoder.pool.shard_of(row_slots), cap_bucket,
        block=functools.partial(RowLayout.block_size, shards=decoder.pool.shards,
                                min_rows=decoder.min_batch_bucket),
        no_page=None if pages is None else pages.num_pages, bounded=decoder.step_chunk > 0)
    # One count bound and window for all of a trie's chunks: no variants beyond rows.
    call = functools.partial(
        _chunk, decoder, trie, row_slots, key_table=key_table, key_rows=key_rows,
        group_ids=group_ids, params=jax.tree.map(np.asarray, params),
        max_tokens=max_tokens, cap_bucket=cap_bucket,
        max_count=bucket_size(int(counts.max()), minimum=MIN_COUNT_BUCKET),
        window=decoder.attention_window(slots, max_tokens))
    lengths = decoder._lengths
    decoder.cache = own_trie_pages(pages, decoder.cache, slots, lengths, counts, max_tokens,
                                   decoder.max_len, decoder._copy_pages)
    # Each call writes its rows' lengths and hidden states back to the device, which the
    # host's mirror and page tables only take in at the end: a trie that fails puts the
    # slots back as it found them.
    found = jnp.copy(decoder.cache.lengths), jnp.copy(decoder.cache.last_hidden)
    try:
        # A call runs a round on each shard, or stops short for want of the spares the next
        # call is given, so every shard's steps end within 2 calls a token.
        max_calls = 2 * max_tokens + 1
        for _ in range(max_calls):
            if not trie.rows.size:
                break
            call()
        else:
            raise RuntimeError(
                f"the trie sampler still had {trie.rows.size} rows going after {max_calls} "
                f"calls for {max_tokens}-token steps: a bug in qstar_jax.decoding.trie_chunks; "
                "please report it")
    except BaseException:
        return_lent_pages(pages)
        decoder.cache = dataclasses.replace(decoder.cache, lengths=found[0],
                                            last_hidden=found[1])
        raise
    out = trie.out
    live = out.group >= 0
    lengths[row_slots[live]] = lengths[row_slots[out.group[live]]] + out.num_tokens[live]
    settle_trie_pages(pages, row_slots, live, out.page_table, lengths)
    return row_slots, out


def _prefix_groups(progress) -> int:
    """The static group count of a chunk's shared-prefix attention: its live rows'
    distinct groups, in a bucket of at least ``MIN_COUNT_BUCKET`` (few variants)."""
    groups = np.unique(progress.group[progress.count > 0]).size
    return bucket_size(groups, minimum=MIN_COUNT_BUCKET)


def _chunk(decoder: Decoder, trie: ChunkedTrie, row_slots: np.ndarray, *,
           key_table: jax.Array, key_rows: np.ndarray, group_ids: np.ndarray,
           params: SamplingParams, max_tokens: int, cap_bucket: int, max_count: int,
           window: int) -> None:
    """One jitted trie-sampler call, of at most ``step_chunk`` rounds (0: until every
    step ends), for the trie's next rows (``trie.rows`` of ``row_slots``; the groups'
    ``key_rows``, ``group_ids`` and ``params`` [G]); its output goes to ``trie``."""
    slots = row_slots[trie.rows]
    layout = decoder._layout(slots)  # a shard's rows in call order
    progress = trie.progress()
    # A spare's draws and settings are its parent's once it splits off: group 0's stand
    # in until then.
    group = np.maximum(progress.group, 0)
    rounds = decoder.step_chunk or max_tokens
    loan = lend_trie_pages(decoder.pages, trie.out.page_table, layout, slots,
                           progress.group >= 0, progress.num_tokens, rounds, max_tokens,
                           cap_bucket)
    decoder.cache, out, stop = decoder._sample_trie(
        decoder._weights, decoder.cache, decoder._local_slots(layout, slots), key_table,
        layout.place(key_rows[group], 0), layout.place(group_ids[group], 0),
        padded_params(jax.tree.map(lambda x: x[group], params), layout),
        dataclasses.replace(jax.tree.map(lambda x: layout.place(x, 0), progress),
                            group=layout.place(progress.group, -1)),
        np.int32(max_tokens), decoder._lines, decoder._eos_ids,
        loan,
        np.int32(rounds), max_count, window, trie.num_draws(),
        _prefix_groups(progress) if decoder.shared_prefix else 0)
    out, stop = jax.device_get((out, stop))
    out = layout.take(out)
    if decoder.pages is not None:  # page ids within each row's shard back to the host's
        out = dataclasses.replace(out, page_table=decoder.pages.global_tables(
            out.page_table, decoder.pool.shard_of(slots)))
    trie.add(out, layout.take(stop), rounds)
    work = decoder.trie_work
    work["calls"] += 1
    work["rows"] += layout.size
    # Each shard's block ran its own rounds (the same on all of a shard's rows).
    work["row_rounds"] += layout.block * int(stop.rounds.reshape(layout.shards, -1)[:, 0].sum())
    if trie.starved.any():
        work["starved"] += 1
