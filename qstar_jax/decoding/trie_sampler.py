"""The trie sampler: ``count`` independent steps after a slot, each distinct token prefix
computed once, entirely on device.

Shapes: R rows (a batch bucket), C = the static token cap (a bucket), S slots, M max
cache length, E hidden size, V vocabulary, K = the static bound on a row's count, D =
the static bound on a round's draws (the going rows' counts summed).

A row holds one distinct token prefix of a group's steps and a count: how many of the
group's draws share it. The groups' rows start live (a slot and the number of steps
wanted); the other rows are spares with slots of their own. Each round of one
``lax.while_loop`` draws, for every unfinished row, ``count`` next tokens from its
distribution; the row keeps its first distinct token and hands each further distinct
token, with its share of the count, to a spare row, whose slot first gets a copy of the
parent's cache. Then every row that took a token feeds it, one model call for all. A
group's draws therefore have the joint distribution of independent samples, while the
model computes each distinct prefix once. Every row's tokens lie below a static window
W <= M (its group's start plus the cap): attention reads positions [0, W) and a spare's
copy of its parent's cache copies those alone.

A round's draws (``trie_draws``: the tokens and where each goes) are made before the round
runs, at the loop's start or at the end of the round before, so the loop knows how many
spares a round takes before it writes anything: it runs the round only while the call's
rows hold that many free spares, and otherwise stops there with every row as the last
round left it (the call is starved). A call therefore may hold fewer spares than its rows
could split into (at most the going rows' counts minus one each), so fewer rows than
draws: the draws have a dimension of their own, D >= the going rows' counts summed (a
split moves a share of a count, so the sum never grows). Where a call stopped comes back
per row (``TrieStop``: the same on every row of a data shard), and a later call with
more spares redraws the same tokens.

On a paged cache (``PagedKVCache``) a row's slot is addressed through a page table the
loop carries, and a split is a page-table fork (``trie_forks``): the new row takes its
parent's entries for the full pages below the split (shared, never written again: every
row writes only at and after its own position) and a lent page holding a copy of the
parent's partly filled page at the split (the one page a split copies). Every other page
a row writes in it takes from the lent pages when it first writes there, so a step holds
the pages its tokens fill and no more. The host gives each group's row its own copy of
the partly filled page it starts in, if shared, and lends each call enough pages for
every page its rows can reach in its rounds (``PageTable.lend``); the rows' tables come
back in ``TrieOutput.page_table``, for the lent pages no row took to go back between
calls (``PageTable.recall``) and for ``PageTable.settle`` at the trie's end.

A row's random key is its group's key folded with each token of its prefix in turn,
and a draw folds that with its draw number: a group's steps depend only on its own key,
not on the rows or groups sharing the call. Spares are taken lowest row first and never
given back, so a group's rows in row order are its steps in the order they split off.

With ``prefix_groups`` the rows' model call attends through ``SharedPrefixRows``
(``models/shared_prefix``): every row's sequence is its group's prefix (what the group's
slot held when the call began) and then its own step, so each group's prefix keys are
read once, from one of its rows, for all its rows' queries, and each row's own keys
apart; the two parts merge exactly by log-sum-exp (to float rounding).

A call runs at most ``rounds`` rounds, so the host can go on with fewer rows
(``trie_chunks``): rows start from a ``TrieProgress`` (a trie's start, or where the last
call left them), and a live row's position, hidden state and page table are what the
cache holds for its slot, which every call writes back. A row's key is rebuilt from its
group's key and its prefix, so a resumed row draws what it would have drawn.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct

from qstar_jax.decoding.kv_cache import KVCache
from qstar_jax.decoding.line_tables import LineTables, blank_so_far
from qstar_jax.decoding.paged_cache import PagedKVCache
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.step_sampler import EndReason, end_reason_after
from qstar_jax.decoding.trie_draws import TrieDraws, round_draws
from qstar_jax.decoding.trie_forks import (FORK_CHUNK, TriePages, copy_caches, fork_pages,
                                          pages_for_writes)
from qstar_jax.decoding.weights import DecoderWeights
from qstar_jax.models.cache_pages import PagedRows
from qstar_jax.models.shared_prefix import SharedPrefixRows



@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["group", "count", "tokens", "num_tokens", "logprob",
                                "end_reason", "hidden", "fed", "page_table"], meta_fields=[])
@dataclasses.dataclass(frozen=True, kw_only=True)
class TrieOutput:
    """One row per distinct step. group: [R] int32, the group's call row (-1: an unused
    spare); count: [R] draws that produced the step; tokens: [R, C] (0 past num_tokens);
    num_tokens: [R] int32; end_reason: [R] int32 EndReason (-1: the step goes on past the
    call's last round, or an unused spare); logprob: [R] float32, the step's summed
    log-probability under the unmodified distribution; hidden: [R, E] float32 after the
    step's last token (0 for an unused spare); fed: [R] int32 tokens the row fed itself
    (a group's sum is the size of its trie); page_table: [R, N] int32, on a paged cache
    each row's page table as the call left it (a split row's pages past its tokens are
    lent pages it did not use), None on the slot pool."""

    group: jax.Array
    count: jax.Array
    tokens: jax.Array
    num_tokens: jax.Array
    logprob: jax.Array
    end_reason: jax.Array
    hidden: jax.Array
    fed: jax.Array
    page_table: jax.Array | None = None


@functools.partial(jax.tree_util.register_dataclass, data_fields=["rounds", "needed"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True, kw_only=True)
class TrieStop:
    """Where a call stopped, the same on every row of a data shard. rounds: [R] int32 the
    rounds it ran; needed: [R] int32 the spares its next round needed, more than its rows
    held when it stopped short of its rounds with steps going (starved; otherwise
    meaningless)."""

    rounds: jax.Array
    needed: jax.Array


@struct.dataclass
class TrieProgress:
    """Where each row of a call starts: a trie's start (its groups' rows with their counts,
    the rest zero) or where the last call left the rows still going and the free spares
    they may split into."""

    group: jax.Array       # [R] int32, the group's call row (-1: a spare or padding row)
    count: jax.Array       # [R] int32 draws that share the row's prefix (0: not live)
    tokens: jax.Array      # [R, C] int32 the prefix (0 past num_tokens)
    num_tokens: jax.Array  # [R] int32 tokens in the prefix
    logprob: jax.Array     # [R] float32 the prefix's summed log-probability
    fed: jax.Array         # [R] int32 tokens the row fed itself


@struct.dataclass
class TrieRows:
    """What stays fixed while a trie is sampled."""

    slots: jax.Array          # [R] int32 (S: a padding row)
    model_slots: jax.Array    # [R] int32 slots clipped into the pool
    cap: jax.Array            # [] int32 token cap
    lines: LineTables         # [V] tables: which tokens end a step's line
    eos_ids: jax.Array        # [n] int32
    shifts: jax.Array         # [K - 1] int32, 1..K-1: how far a row's other draws can lie
    max_len: int = struct.field(pytree_node=False)  # M, the most tokens a slot holds
    window: int = struct.field(pytree_node=False)   # W, the cache positions rows use
    num_draws: int = struct.field(pytree_node=False)  # D, a round's draws
    # With shared-prefix attention, per group (G of them, padded): the row holding its
    # prefix (fixed for the call: below its start no row writes), its group id (-2:
    # padding) and the prefix's tokens; None otherwise.
    prefix_rows: jax.Array | None = None
    prefix_group: jax.Array | None = None
    prefix_len: jax.Array | None = None


@struct.dataclass
class TrieLoopState:
    """The while-loop's carry: one row per distinct prefix (or a free spare)."""

    k: jax.Array           # [L, S, K, M, D] the pool's keys (or [L, P, K, page, D] pages),
                           # donated through the loop
    v: jax.Array           # its values, likewise
    positions: jax.Array   # [R] int32, where the row's next token is written
    num_tokens: jax.Array  # [R] int32 tokens in the row's prefix
    live: jax.Array        # [R] bool, the row holds a prefix (a group or a taken spare)
    spare: jax.Array       # [R] bool, the row is free to take a new prefix
    done: jax.Array        # [R] bool, the row's step has ended
    blank: jax.Array       # [R] bool, the row's prefix is whitespace only (or empty)
    end_reason: jax.Array  # [R] int32 EndReason once done (-1 before)
    group: jax.Array       # [R] int32, the group's call row (-1: not live)
    count: jax.Array       # [R] int32 draws that share the prefix
    keys: jax.Array        # [R] typed PRNG keys: the group's key folded with each token
    params: SamplingParams # [R] the group's settings
    tokens: jax.Array      # [R, C] int32 the prefix (0 past num_tokens)
    logprob: jax.Array     # [R] float32 the prefix's summed log-probability
    fed: jax.Array         # [R] int32 tokens the row fed itself
    hidden: jax.Array      # [R, E] float32, after the row's last fed token
    pages: TriePages | None  # the rows' page tables on a paged cache, None on the pool
    draws: TrieDraws | None  # the next round's draws (None only while they are made)


def sample_trie(graphdef: nnx.GraphDef, weights: DecoderWeights,
                cache: KVCache | PagedKVCache, slots: jax.Array, key_table: jax.Array,
                key_rows: jax.Array, group_ids: jax.Array, params: SamplingParams,
                progress: TrieProgress, cap: jax.Array, lines: LineTables,
                eos_ids: jax.Array, lent: jax.Array | None, rounds: jax.Array,
                max_count: int, window: int, num_draws: int, prefix_groups: int = 0
                ) -> tuple[KVCache | PagedKVCache, TrieOutput, TrieStop]:
    """Sample each group's steps as a trie, for at most ``rounds`` rounds, and only while
    the rows hold a free spare for each new row the next round needs.

    slots: [R] int32, distinct (``S`` marks a padding row); progress: where each row
    starts (a group row's count >= 1; 0 for a spare or padding row); key_table: typed
    PRNG keys, key_rows: [R] indices into it; group_ids: [R] int32 (a row's group key is
    ``fold_in(key_table[key_rows[r]], group_ids[r])``); params: SamplingParams [R], each
    live row's group's (a spare takes its parent's when it splits off); cap: int32 token
    cap <= C (``progress.tokens``' width); max_count: K, static, >= every count.
    lines: the LineTables; eos_ids: [n] int32. A step ends as in ``sample_step``.
    window: W, static, at least every group's start position plus ``cap``
    (``Decoder.attention_window``; M or more: whole rows): the cache positions attention
    reads and a spare's copy copies. Positions of a
    spare at W or beyond are left as they were: past its length, never read.
    num_draws: D, static, at least the going rows' counts summed. prefix_groups: static,
    0, or at least the distinct groups of the live rows: attend through
    ``SharedPrefixRows`` with that many groups (the model must have no sliding window).
    On a PagedKVCache each group row must own the page it starts in, if that page holds
    earlier tokens (``PageTable.reserve``), and ``lent``: [F] int32 free pages
    (P-padded), enough for every page the rows may reach in ``rounds`` rounds (a row
    writing n tokens takes at most ``cdiv(n, page)`` pages, one more where it splits off
    mid-page); None on the slot pool.
    Returns (the cache, the rows' TrieOutput, where the call stopped: TrieStop). Pure:
    jit it with the cache donated.
    """
    model = nnx.merge(graphdef, weights.model)
    num_slots, max_len = cache.num_slots, cache.max_len
    model_slots = jnp.minimum(slots, num_slots - 1)
    live = progress.count > 0
    positions = jnp.where(live, cache.lengths[model_slots], max_len)
    done = live & (positions >= max_len)
    rows = TrieRows(slots=slots, model_slots=model_slots, cap=cap,
                    lines=lines, eos_ids=eos_ids,
                    shifts=jnp.arange(1, max_count),  # a row's other draws lie within K - 1
                    max_len=max_len, window=window, num_draws=num_draws)
    if prefix_groups:
        rows = rows.replace(**_prefix_groups(progress.group, live, positions,
                                             progress.num_tokens, prefix_groups))
    pages = None
    if isinstance(cache, PagedKVCache):
        table = cache.model_rows(model_slots)
        no_page = cache.k.shape[1]  # a spare starts with no pages: it gets them on a split
        pages = TriePages(rows=dataclasses.replace(
            table, page_table=jnp.where(live[:, None], table.page_table, no_page)),
            lent=lent, taken=jnp.zeros((), jnp.int32))
    group_keys = jax.vmap(jax.random.fold_in)(key_table[key_rows], group_ids)
    initial = TrieLoopState(
        k=cache.k, v=cache.v, positions=positions, num_tokens=progress.num_tokens,
        live=live, spare=~live & (slots < num_slots), done=done,
        blank=blank_so_far(lines.whitespace, progress.tokens, progress.num_tokens),
        # A row full at the start ends there; any other sets its own reason when it ends.
        end_reason=jnp.where(done, EndReason.CACHE_FULL, -1).astype(jnp.int32),
        group=progress.group, count=progress.count,
        keys=_prefix_keys(group_keys, progress.tokens, progress.num_tokens), params=params,
        tokens=progress.tokens, logprob=progress.logprob, fed=progress.fed,
        hidden=cache.last_hidden[model_slots], pages=pages, draws=None)
    initial = initial.replace(draws=round_draws(model, rows, initial))

    def going(carry):
        ran, state = carry
        # A round that needs a spare the rows lack is not run: nothing is written for it.
        return ((ran < rounds) & jnp.any(state.live & ~state.done)
                & (state.draws.new_rows <= jnp.sum(state.spare, dtype=jnp.int32)))

    def one_round(carry):
        ran, state = carry
        state = _one_round(model, weights, rows, state)
        # The next round's draws, unless the call ends here anyway (a small operand: no
        # cache goes through the branches).
        small = state.replace(k=None, v=None, pages=None)
        draws = jax.lax.cond((ran + 1 < rounds) & jnp.any(state.live & ~state.done),
                             lambda s: round_draws(model, rows, s), lambda s: s.draws, small)
        return ran + 1, state.replace(draws=draws)

    ran, final = jax.lax.while_loop(going, one_round, (jnp.zeros((), jnp.int32), initial))
    written = jnp.where(final.live, slots, num_slots)
    cache = dataclasses.replace(
        cache, k=final.k, v=final.v,
        lengths=cache.lengths.at[written].set(final.positions, mode="drop"),
        last_hidden=cache.last_hidden.at[written].set(final.hidden, mode="drop"))
    page_table = None
    if final.pages is not None:
        page_table = final.pages.rows.page_table
        cache = dataclasses.replace(
            cache, page_table=cache.page_table.at[written].set(page_table, mode="drop"))
    return cache, TrieOutput(
        group=final.group, count=final.count, tokens=final.tokens,
        num_tokens=final.num_tokens, logprob=final.logprob, end_reason=final.end_reason,
        hidden=jnp.where(final.live[:, None], final.hidden, 0.0), fed=final.fed,
        page_table=page_table), TrieStop(rounds=jnp.full(slots.shape, ran, jnp.int32),
                                         needed=jnp.full(slots.shape, final.draws.new_rows))


def _prefix_keys(keys: jax.Array, tokens: jax.Array, num_tokens: jax.Array) -> jax.Array:
    """keys [R], each folded with the first ``num_tokens`` [R] of its row's ``tokens``
    [R, C] in turn: the key the rounds left the row with, rebuilt for a resumed call."""
    def fold(i, keys):
        return jnp.where(i < num_tokens, jax.vmap(jax.random.fold_in)(keys, tokens[:, i]),
                         keys)

    return jax.lax.fori_loop(0, jnp.max(num_tokens), fold, keys)


def _one_round(model, weights: DecoderWeights, rows: TrieRows,
               state: TrieLoopState) -> TrieLoopState:
    """The round ``state.draws`` drew (the rows hold a spare for each of its new rows):
    each new row takes its spare with a copy of its parent's cache (a fork of its page
    table on a paged cache); every row that took a token feeds it. The state's draws are
    left for the caller to replace."""
    batch, max_len, num_draws = rows.slots.shape[0], rows.max_len, rows.num_draws
    drawn = state.draws
    parent, tokens, logprobs = drawn.parent, drawn.tokens, drawn.logprobs
    target, draws, is_new = drawn.target, drawn.draws, drawn.is_new

    # The new rows' forks (fewer than R), padded to whole chunks of dropped writes.
    new_draws = jnp.nonzero(is_new, size=batch + FORK_CHUNK, fill_value=num_draws)[0]
    valid = new_draws < num_draws
    new_draws = jnp.minimum(new_draws, num_draws - 1)
    if state.pages is None:  # the slot pool: copy the parent's row into the child's slot
        children = jnp.where(valid, rows.slots[target[new_draws]], state.k.shape[1])
        k, v = copy_caches(state.k, state.v, children, rows.model_slots[parent[new_draws]],
                           jnp.sum(is_new), rows.window)
        pages, model_rows = None, rows.model_slots
    else:  # pages: fork the parent's page table
        k, v, pages = fork_pages(state.k, state.v, state.pages, state.positions,
                                 jnp.where(valid, target[new_draws], batch), parent[new_draws],
                                 jnp.sum(is_new))
        model_rows = pages.rows

    def moved(values, new_values=None):
        """values with each target row set from its draw's parent row (or new_values)."""
        source = values[parent] if new_values is None else new_values
        return values.at[target].set(source, mode="drop")

    num = state.num_tokens[parent]
    step_tokens = state.tokens[parent].at[jnp.arange(num_draws), num].set(tokens,
                                                                          mode="drop")
    fed_now = jnp.zeros(batch, bool).at[target].set(True, mode="drop")
    token_now = jnp.zeros(batch, jnp.int32).at[target].set(tokens, mode="drop")
    moved_positions = moved(state.positions)
    feed_positions = jnp.where(fed_now, moved_positions, max_len)
    if pages is not None:
        pages = pages_for_writes(pages, feed_positions, state.k.shape[1], state.k.shape[3])
        model_rows = pages.rows
    group = moved(state.group)
    if rows.prefix_rows is not None:
        model_rows = _shared_prefix_rows(rows, model_rows, group, fed_now,
                                         state.tokens.shape[1])
    hidden, k, v = model(token_now[:, None], feed_positions[:, None], model_rows, k, v,
                         key_len=rows.window, **weights.layer_arguments())
    positions = jnp.where(fed_now, moved_positions + 1, moved_positions)
    num_tokens = moved(state.num_tokens, num + 1)
    reason = end_reason_after(token_now, positions, num_tokens, rows.cap,
                              rows.lines.ends_line(moved(state.blank), token_now),
                              rows.eos_ids, max_len)
    ends_now = fed_now & (reason >= 0)
    return TrieLoopState(
        k=k, v=v, positions=positions, num_tokens=num_tokens,
        live=state.live | fed_now, spare=state.spare & ~fed_now,
        done=state.done | ends_now,
        blank=moved(state.blank, rows.lines.still_blank(state.blank[parent], tokens)),
        end_reason=jnp.where(ends_now, reason, state.end_reason),
        group=group, count=moved(state.count, draws),
        keys=moved(state.keys, jax.vmap(jax.random.fold_in)(state.keys[parent], tokens)),
        params=jax.tree.map(moved, state.params),
        tokens=moved(state.tokens, step_tokens),
        logprob=moved(state.logprob, state.logprob[parent] + logprobs),
        fed=moved(state.fed, jnp.where(is_new, 0, state.fed[parent]) + 1),
        hidden=jnp.where(fed_now[:, None], hidden[:, 0].astype(jnp.float32), state.hidden),
        pages=pages, draws=state.draws)


def _prefix_groups(group, live, positions, num_tokens, num_groups: int) -> dict:
    """TrieRows' prefix fields at a call's start: each distinct group of the live rows,
    its first live row and its prefix (that row's position less its step's tokens),
    padded to ``num_groups`` (at least the distinct groups)."""
    batch = group.shape[0]
    same = (group[:, None] == group[None, :]) & live[None, :]
    first = live & (jnp.argmax(same, axis=1) == jnp.arange(batch))
    reps = jnp.nonzero(first, size=num_groups, fill_value=batch)[0]
    real, reps = reps < batch, jnp.minimum(reps, batch - 1)
    return {"prefix_rows": reps, "prefix_group": jnp.where(real, group[reps], -2),
            "prefix_len": jnp.where(real, positions[reps] - num_tokens[reps], 0)}


def _shared_prefix_rows(rows: TrieRows, model_rows, group, fed, suffix_window: int
                        ) -> SharedPrefixRows:
    """The rows of a round's model call as ``SharedPrefixRows``: each row that feeds a
    token sits in its group's members (a group's rows never outnumber its count, at
    most K)."""
    batch, num_groups = group.shape[0], rows.prefix_rows.shape[0]
    width = rows.shifts.shape[0] + 1  # K
    match = group[:, None] == rows.prefix_group[None, :]
    row_group = jnp.argmax(match, axis=1).astype(jnp.int32)
    member = fed & jnp.any(match, axis=1)
    ahead = (row_group[:, None] == row_group[None, :]) & member[None, :] & (
        jnp.arange(batch)[None, :] < jnp.arange(batch)[:, None])
    row_member = jnp.where(member, jnp.sum(ahead, axis=1), width).astype(jnp.int32)
    members = jnp.full((num_groups, width), batch, jnp.int32).at[row_group, row_member].set(
        jnp.arange(batch, dtype=jnp.int32), mode="drop")
    if isinstance(model_rows, PagedRows):
        prefix = dataclasses.replace(model_rows,
                                     page_table=model_rows.page_table[rows.prefix_rows])
    else:
        prefix = model_rows[rows.prefix_rows]
    return SharedPrefixRows(rows=model_rows, prefix_rows=prefix, prefix_len=rows.prefix_len,
                            members=members, row_group=row_group, row_member=row_member,
                            prefix_window=rows.window, suffix_window=suffix_window)
