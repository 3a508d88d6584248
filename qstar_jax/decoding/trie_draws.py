"""A trie round's draws (``trie_sampler``), made before the round runs: every going row
draws ``count`` next tokens from its distribution, each with its own key (the row's key
folded with the draw's number); the row keeps its first distinct token and each further
distinct token, with its share of the count, goes to a spare row.

Shapes: R rows, D draws (at least the going rows' counts summed), K the static bound on
a row's count, V vocabulary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import struct

from qstar_jax.decoding.sampling import sample

if TYPE_CHECKING:
    from qstar_jax.decoding.trie_sampler import TrieLoopState, TrieRows


@struct.dataclass
class TrieDraws:
    """A round's D draws, made before it runs: draw d is one of row ``parent[d]``'s
    ``count`` draws (the draws past the going rows' counts are not drawn)."""

    parent: jax.Array    # [D] int32, the row the draw is drawn from
    tokens: jax.Array    # [D] int32, the drawn token
    logprobs: jax.Array  # [D] float32, its log-probability (unmodified distribution)
    target: jax.Array    # [D] int32, the row that takes the token (R: none, a repeat)
    draws: jax.Array     # [D] int32, the draws of the target's token
    is_new: jax.Array    # [D] bool, the target is a spare the round takes

    @property
    def new_rows(self) -> jax.Array:
        """[] int32, the spares the round takes."""
        return jnp.sum(self.is_new, dtype=jnp.int32)


def round_draws(model, rows: TrieRows, state: TrieLoopState) -> TrieDraws:
    """Every unfinished row draws ``count`` next tokens; the first distinct token of a
    row's draws stays with it, each further one goes to a spare row (the free rows in row
    order, one per new token in draw order; past the last free row, none)."""
    batch = rows.slots.shape[0]
    draw_rows = jnp.arange(rows.num_draws)
    going = state.live & ~state.done
    row_draws = jnp.where(going, state.count, 0)
    ends = jnp.cumsum(row_draws)
    drawn = draw_rows < ends[-1]
    parent = jnp.minimum(jnp.searchsorted(ends, draw_rows, side="right"), batch - 1)
    draw_ids = draw_rows - (ends - row_draws)[parent]
    keys = jax.vmap(jax.random.fold_in)(state.keys[parent], draw_ids)
    row_params = jax.tree.map(lambda x: x[parent], state.params)
    tokens, logprobs = sample(model.logits(state.hidden)[parent], keys, row_params)
    target, draws, is_new = _split(tokens, parent, drawn, state.spare, rows.shifts)
    return TrieDraws(parent=parent, tokens=tokens, logprobs=logprobs, target=target,
                     draws=draws, is_new=is_new)


def _split(tokens, parent, drawn, spare, shifts):
    """Where each draw goes: its parent row for the parent's first distinct token, a spare
    row for each further distinct token, nowhere (R) for a repeat or an empty draw.

    tokens, parent: [D] int32 per draw; drawn: [D] bool; spare: [R] bool, the free rows;
    shifts: 1..K-1 (a row's draws are contiguous and at most K, so its others lie within
    K-1 either side). Returns (target [D], the draws of each target's token [D], whether
    the target is a new row [D]).
    """
    num_draws, batch = tokens.shape[0], spare.shape[0]

    def alike(offsets):
        """[D, J] twice: draw d + offsets[j] is drawn from d's parent; and took d's token."""
        index = jnp.arange(num_draws)[:, None] + offsets[None, :]
        index_ok = (index >= 0) & (index < num_draws)
        index = jnp.clip(index, 0, num_draws - 1)
        same_row = index_ok & drawn[index] & (parent[index] == parent[:, None])
        return same_row, same_row & (tokens[index] == tokens[:, None]), index

    same_row_before, same_token_before, before = alike(-shifts)
    _, same_token_after, _ = alike(shifts)
    first = drawn & ~jnp.any(same_token_before, axis=1)
    is_new = first & jnp.any(same_row_before & first[before], axis=1)
    free_rows = jnp.nonzero(spare, size=batch, fill_value=batch)[0]
    new_row = free_rows[jnp.clip(jnp.cumsum(is_new) - 1, 0, batch - 1)]
    target = jnp.where(is_new, new_row, jnp.where(first, parent, batch))
    return target, 1 + jnp.sum(same_token_after, axis=1), is_new
