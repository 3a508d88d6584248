"""The decoder's input checks: every bad argument is a ValueError that says what to do,
raised on the host before any device work (a jitted call would fail later, or worse,
drop or clip the bad rows silently)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qstar_jax.decoding.kv_cache import SlotPool
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.values import is_integer

MAX_NODE_ID = 2**31 - 1


def checked_token_table(table, vocab: int, name: str = "newline_table",
                        built_by: str = "Tokenizer.newline_table") -> np.ndarray:
    """``table`` as a bool array of one entry per token, or ValueError naming ``name`` and
    the Tokenizer method ``built_by`` that builds it."""
    table = np.asarray(table)
    if table.shape != (vocab,) or table.dtype != np.bool_:
        raise ValueError(f"{name} must be a bool array of shape ({vocab},), got "
                         f"{table.dtype} {table.shape}; build it with "
                         f"{built_by}(model.config.vocab_size)")
    return table


def checked_eos_ids(eos_ids: Sequence[int], vocab: int) -> np.ndarray:
    """``eos_ids`` as int32 token ids in [0, vocab), or ValueError: a float (2.7) or a bool
    would otherwise be cast to an id silently."""
    flat = np.asarray(eos_ids, dtype=object).reshape(-1)
    if not all(is_integer(i) for i in flat):
        raise ValueError(f"eos_ids must be integer token ids, got {flat.tolist()}")
    ids = np.asarray(flat.tolist(), np.int64)
    if np.any((ids < 0) | (ids >= vocab)):
        raise ValueError(f"eos_ids {ids.tolist()} fall outside the vocabulary [0, {vocab})")
    return ids.astype(np.int32)


def checked_slots(slots, what: str, *, pool: SlotPool, lengths: np.ndarray,
                  distinct: bool = True, filled: bool = False) -> np.ndarray:
    """``slots`` as int64 ids, each allocated in ``pool``; ``distinct``: no repeats;
    ``filled``: each holds tokens (``lengths``, the host mirror of the cache's)."""
    slots = np.asarray(slots)
    if slots.ndim != 1 or slots.size == 0 or not np.issubdtype(slots.dtype, np.integer):
        raise ValueError(f"{what} must be a non-empty 1-D list of slot ids, got {slots!r}")
    if distinct and slots.size > pool.num_slots:
        raise ValueError(f"{slots.size} {what} for a pool of {pool.num_slots} slots; split "
                         "the batch or build the decoder with a larger num_slots")
    bad = [int(s) for s in slots if not (0 <= s < pool.num_slots and pool.is_allocated(s))]
    if bad:
        raise ValueError(f"{what} {bad} are not allocated slots of this decoder (ids "
                         f"0..{pool.num_slots - 1}); get slots from Decoder.allocate")
    if distinct and len(set(slots.tolist())) != slots.size:
        raise ValueError(f"{what} {slots.tolist()} repeat a slot; each row needs its own slot")
    if filled and np.any(lengths[slots] == 0):
        empty = slots[lengths[slots] == 0].tolist()
        raise ValueError(f"{what} {empty} hold no tokens; prefill them first")
    return slots.astype(np.int64)


def check_token_lists(token_lists: Sequence[Sequence[int]], *, slots: int,
                      room: Sequence[int], vocab_size: int) -> None:
    """One list per slot, each non-empty, fitting its row's ``room`` (free cache
    positions) and holding ids in [0, vocab_size)."""
    if len(token_lists) != slots:
        raise ValueError(f"{len(token_lists)} token lists for {slots} slots; give one "
                         "token list per slot")
    for row, (tokens, free) in enumerate(zip(token_lists, room, strict=True)):
        if len(tokens) == 0:
            raise ValueError(f"row {row} has no tokens; every prompt needs at least one "
                             "token (e.g. BOS)")
        if len(tokens) > free:
            raise ValueError(f"row {row} has {len(tokens)} tokens but its slot has room for "
                             f"{free}; shorten the prompt or build the decoder with a larger "
                             "max_len")
        ids = np.asarray(tokens)
        if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(f"row {row} holds token ids outside [0, {vocab_size})")


def check_keys(keys, name: str, shape: tuple[int, ...]) -> None:
    if (not isinstance(keys, jax.Array) or not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
            or keys.shape != shape or not shape[0]):
        raise ValueError(f"{name} must be {shape[0]} typed PRNG keys (shape {shape}, e.g. "
                         "jax.random.split(jax.random.key(seed), n)), got "
                         f"{getattr(keys, 'dtype', type(keys))} {np.shape(keys)}")


def check_step_inputs(rows: int, problem_keys, node_ids: np.ndarray, params: SamplingParams,
                      caps: np.ndarray, *, ids_name: str = "node_ids") -> None:
    """Per-row draws: ``rows`` typed keys (None: checked elsewhere), ids in [0, 2**31),
    SamplingParams of ``rows`` and integer token caps >= 1."""
    if problem_keys is not None:
        check_keys(problem_keys, "problem_keys", (rows,))
    if (node_ids.shape != (rows,) or not np.issubdtype(node_ids.dtype, np.integer)
            or np.any((node_ids < 0) | (node_ids > MAX_NODE_ID))):
        raise ValueError(f"{ids_name} must be {rows} integers in [0, 2**31), got {node_ids!r}")
    params.check(rows)
    if not np.issubdtype(caps.dtype, np.integer) or np.any(caps < 1):
        raise ValueError(f"max_tokens must be integers >= 1, got {caps!r}")


def check_trie_groups(groups: int, counts: np.ndarray, spares: np.ndarray, key_table,
                      key_rows: np.ndarray) -> None:
    """A count >= 1 per group, one spare slot per step beyond each group's first, and
    each group's key row an index into ``key_table``."""
    if counts.shape != (groups,) or not np.issubdtype(counts.dtype, np.integer) \
            or np.any(counts < 1):
        raise ValueError(f"give one count >= 1 per slot; got {groups} slots, counts "
                         f"{counts.tolist()}")
    if spares.size != counts.sum() - groups:
        raise ValueError(f"{counts.sum()} steps after {groups} slots need "
                         f"{counts.sum() - groups} spare slots, got {spares.size}")
    check_keys(key_table, "key_table", (len(key_table),))
    if key_rows.shape != (groups,) or np.any((key_rows < 0) | (key_rows >= len(key_table))):
        raise ValueError(f"key_rows must be {groups} indices into the {len(key_table)} "
                         f"keys, got {key_rows!r}")


def check_children_beside_parents(pool: SlotPool, parents: np.ndarray,
                                  children: np.ndarray) -> None:
    """Each child lies on its parent's data shard, where the copy stays on one device."""
    apart = pool.shard_of(parents) != pool.shard_of(children)
    if np.any(apart):
        raise ValueError(f"children {children[apart].tolist()} lie on other data shards than "
                         f"their parents {parents[apart].tolist()}; allocate children with "
                         "Decoder.allocate(n, near=parents)")


def check_spares_beside_groups(pool: SlotPool, slots: np.ndarray, counts: np.ndarray,
                               spares: np.ndarray) -> None:
    """Each data shard holds a spare slot for every step its groups may split off."""
    needed = np.bincount(pool.shard_of(slots), weights=counts - 1, minlength=pool.shards)
    held = np.bincount(pool.shard_of(spares), minlength=pool.shards)
    short = np.flatnonzero(held < needed)
    if short.size:
        shard = int(short[0])
        raise ValueError(f"the groups on data shard {shard} need {int(needed[shard])} spare "
                         f"slots there, but {int(held[shard])} of the spares lie on it; "
                         "allocate each group's counts[g] - 1 spares with "
                         "Decoder.allocate(n, near=...) beside its slot")
