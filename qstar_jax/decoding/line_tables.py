"""What the samplers read about each token's text: whether it ends a step's line.

Shapes: V vocabulary, B rows.

A step is one line: a token whose text holds a newline ends it. A line that would end
blank (a newline with only whitespace before it, as a chat model leaves between
paragraphs) gives a search nothing to weigh and would spend one of the trace's
``decode.max_steps``. Built with ``BlankStepTables``, the tables make such a newline end
nothing while the row's step is still blank: the blank lines join the line after them,
and the step ends at the first newline after some text (its text then begins with the
blank lines, which the row holds as they were sampled). Nothing is left out of any
distribution: the model writes what it would, only the step boundary moves. Without
them (``LineTables.make(newline)``) a blank line is a step.
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

    newline: jax.Array     # the token's text holds a newline: it ends a step's line
    blank_line: jax.Array  # it holds a newline with only whitespace before it: it ends no
                           # step that is blank so far (all False: it always ends one)
    whitespace: jax.Array  # its text is whitespace only: a blank step stays blank after it

    @classmethod
    def make(cls, newline: np.ndarray, blank_steps: BlankStepTables | None = None
             ) -> "LineTables":
        """The tables for steps that end at ``newline`` tokens, blank lines joining the
        next line where ``blank_steps`` is given."""
        if blank_steps is None:
            blank_steps = BlankStepTables(blank_line=np.zeros_like(newline),
                                          whitespace=np.zeros_like(newline))
        return cls(newline=jnp.asarray(newline), blank_line=jnp.asarray(blank_steps.blank_line),
                   whitespace=jnp.asarray(blank_steps.whitespace))

    def without_newlines(self) -> "LineTables":
        """Tables for whole texts: no token ends one."""
        return self.replace(newline=jnp.zeros_like(self.newline))

    def ends_line(self, blank: jax.Array, tokens: jax.Array) -> jax.Array:
        """[B] bool: whether ``tokens`` [B] end their rows' steps, given whether each
        row's step was blank before it (``blank`` [B] bool)."""
        return self.newline[tokens] & ~(blank & self.blank_line[tokens])

    def still_blank(self, blank: jax.Array, tokens: jax.Array) -> jax.Array:
        """[B] bool: whether each row's step is blank after it takes ``tokens`` [B]."""
        return blank & self.whitespace[tokens]


def blank_so_far(whitespace: jax.Array | np.ndarray, tokens, num_tokens):
    """[B] bool: whether each row's first ``num_tokens`` [B] of ``tokens`` [B, C] are all
    whitespace (a step with none is blank). Works on host and device arrays alike."""
    xp = jnp if isinstance(tokens, jax.Array) else np
    sampled = xp.arange(tokens.shape[1])[None, :] < num_tokens[:, None]
    return xp.all(whitespace[tokens] | ~sampled, axis=1)
