"""What the samplers read about each token's text: whether it ends a step, and whether it
may open one.

Shapes: V vocabulary, B rows.

A step is one line: a token whose text holds a newline ends it. A step that would end
blank (a newline with only whitespace before it on the step's line, as a chat model
leaves between paragraphs) gives a search nothing to weigh and spends one of the trace's
``decode.max_steps``. Built with ``BlankStepTables``, the tables keep such tokens from
being drawn while a row's step is still blank: they leave the row's distribution (a
greedy row takes the best token left), as HF's ``SuppressTokensAtBeginLogitsProcessor``
leaves tokens out at a generation's start; a drawn token's log-probability is still the
model's own. Without them (``LineTables.make(newline)``) a blank line is a step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from qstar_jax.models.tokenizer import BlankStepTables


@struct.dataclass
class LineTables:
    """[V] bool tables, on device."""

    newline: jax.Array     # the token's text holds a newline: it ends a step
    blank_line: jax.Array  # it holds a newline with only whitespace before it: never drawn
                           # while the row's step is blank (all False: always drawn)
    whitespace: jax.Array  # its text is whitespace only: a blank step stays blank after it

    @classmethod
    def make(cls, newline: np.ndarray, blank_steps: BlankStepTables | None = None
             ) -> "LineTables":
        """The tables for steps that end at ``newline`` tokens, blank steps left out where
        ``blank_steps`` is given."""
        if blank_steps is None:
            blank_steps = BlankStepTables(blank_line=np.zeros_like(newline),
                                          whitespace=np.zeros_like(newline))
        return cls(newline=jnp.asarray(newline), blank_line=jnp.asarray(blank_steps.blank_line),
                   whitespace=jnp.asarray(blank_steps.whitespace))

    def without_newlines(self) -> "LineTables":
        """Tables for whole texts: no token ends one, and none is left out."""
        return self.replace(newline=jnp.zeros_like(self.newline),
                            blank_line=jnp.zeros_like(self.blank_line))

    def banned(self, blank: jax.Array) -> jax.Array:
        """[B, V] bool: the tokens each row may not draw, given whether its step is blank
        so far (``blank`` [B] bool)."""
        return blank[:, None] & self.blank_line[None, :]

    def still_blank(self, blank: jax.Array, tokens: jax.Array) -> jax.Array:
        """[B] bool: whether each row's step is blank after it takes ``tokens`` [B]."""
        return blank & self.whitespace[tokens]


def blank_so_far(whitespace: jax.Array | np.ndarray, tokens, num_tokens):
    """[B] bool: whether each row's first ``num_tokens`` [B] of ``tokens`` [B, C] are all
    whitespace (a step with none is blank). Works on host and device arrays alike."""
    xp = jnp if isinstance(tokens, jax.Array) else np
    sampled = xp.arange(tokens.shape[1])[None, :] < num_tokens[:, None]
    return xp.all(whitespace[tokens] | ~sampled, axis=1)
