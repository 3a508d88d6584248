"""The per-page step both Pallas kernels share: mask a page's scores by position, then
fold the page into a running (max, denominator, weighted sum), flash-attention style.

Shapes: R query rows (a kv head's query heads times the slot's query tokens, padded),
S keys in the page, D head_dim. Running state m, l: [R, 1], acc: [R, D], all float32.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# A finite "minus infinity": a row that has seen no key yet keeps m at this value, and
# the correction factor exp(MASK_VALUE - m) underflows to exactly 0 once it sees one,
# without the inf - inf = NaN an actual -inf would give.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def initial_state(rows: int, head_dim: int):
    return (jnp.full((rows, 1), MASK_VALUE, jnp.float32), jnp.zeros((rows, 1), jnp.float32),
            jnp.zeros((rows, head_dim), jnp.float32))


def mask_scores(scores, key_positions, query_positions, window: int | None):
    """scores [R, S]; key_positions [1, S]; query_positions [R, 1] -> masked scores."""
    visible = key_positions <= query_positions
    if window is not None:
        visible &= key_positions > query_positions - window
    return jnp.where(visible, scores, MASK_VALUE)


def fold_page(state, scores, values, dot):
    """Fold one page (masked scores [R, S], values [S, D]) into the running state.
    ``dot(a, b)``: the backend's matrix product [R, S] x [S, D] in float32."""
    m_prev, l_prev, acc_prev = state
    m_next = jnp.maximum(m_prev, scores.max(axis=-1, keepdims=True))
    correction = jnp.exp(m_prev - m_next)
    weights = jnp.exp(scores - m_next)
    return (m_next, correction * l_prev + weights.sum(axis=-1, keepdims=True),
            correction * acc_prev + dot(weights.astype(values.dtype), values))


def finish(state):
    """The attention output [R, D]; zeros for a row that saw no key."""
    m, l, acc = state
    return jnp.where(m > MASK_VALUE, acc / jnp.where(l > 0, l, 1.0), 0.0)
