"""One step sampled in chunks of at most ``chunk`` tokens per row, the rows that have ended
dropped between chunks, and the ``StepBatch`` it comes back as: the host side of
``Decoder.sample_steps``.

Shapes: B rows, C the largest token cap, E hidden size.

The jitted step sampler computes every row of its batch until the last one ends, so one
long row keeps all the short ones' compute going. Run as chunks, a batch only holds the
rows still going: after each chunk every row whose step ended for a reason of its own
(EOS, newline, a full slot, or its whole cap spent) leaves, and the next chunk's padded
row count shrinks with it. A row that stopped only at the chunk's cap goes on. A token's
draw depends on its row's key, node id and position alone, so the chunks sample the
tokens one call would; only float rounding from other batch shapes may differ.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from qstar_jax.decoding.line_tables import blank_so_far
from qstar_jax.decoding.step_sampler import EndReason, StepOutput


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepBatch:
    """One sampled step per row, on the host.

    slots: [B]; tokens, logprobs: [B, C] with entries past num_tokens set to 0, where a
    logprob is under the model's unmodified distribution; num_tokens: [B];
    end_reason: [B] EndReason values; hidden: [B, E] float32 final-norm hidden state after
    the row's last token (what a Q-value head reads).
    """

    slots: np.ndarray
    tokens: np.ndarray
    logprobs: np.ndarray
    num_tokens: np.ndarray
    end_reason: np.ndarray
    hidden: np.ndarray

    def row_tokens(self, row: int) -> list[int]:
        return self.tokens[row, :self.num_tokens[row]].tolist()


class ChunkedStep:
    """The step of ``caps`` [B] rows as its chunks come back; ``chunk``: the most tokens a
    row samples per chunk (0: its whole cap in one chunk)."""

    def __init__(self, caps: np.ndarray, chunk: int):
        self.caps = np.asarray(caps, np.int64)
        rows, width = len(self.caps), int(self.caps.max())
        self.chunk = min(chunk, width) if chunk > 0 else width
        self.tokens = np.zeros((rows, width), np.int32)
        self.logprobs = np.zeros((rows, width), np.float32)
        self.num_tokens = np.zeros(rows, np.int32)
        self.end_reason = np.full(rows, EndReason.CAP, np.int32)
        self.hidden: np.ndarray | None = None  # [B, E] float32 once a chunk came back
        self.going = np.arange(rows)  # the rows the next chunk samples, in call order

    def chunk_caps(self) -> np.ndarray:
        """[len(going)] each going row's cap in the next chunk."""
        return np.minimum(self.caps[self.going] - self.num_tokens[self.going], self.chunk)

    def going_blank(self, whitespace: np.ndarray) -> np.ndarray:
        """[len(going)] bool: whether each going row's step so far is whitespace only
        (``whitespace``: the [V] bool table), as a step with no tokens is."""
        rows = self.going
        return blank_so_far(whitespace, self.tokens[rows], self.num_tokens[rows])

    def add(self, out: StepOutput) -> None:
        """Append a chunk's output, ``out`` [len(going)] on the host, and drop the rows that
        have ended."""
        rows = self.going
        if self.hidden is None:
            self.hidden = np.zeros((len(self.caps), out.hidden.shape[1]), np.float32)
        sampled = np.arange(out.tokens.shape[1])[None, :] < out.num_tokens[:, None]
        at_row = np.broadcast_to(rows[:, None], sampled.shape)[sampled]
        at_column = (self.num_tokens[rows, None] + np.arange(out.tokens.shape[1]))[sampled]
        self.tokens[at_row, at_column] = out.tokens[sampled]
        self.logprobs[at_row, at_column] = out.logprobs[sampled]
        self.num_tokens[rows] += out.num_tokens
        self.end_reason[rows] = out.end_reason
        self.hidden[rows] = out.hidden
        # Only the chunk's cap stopped it, and the row's own cap is not spent yet.
        self.going = rows[(out.end_reason == EndReason.CAP)
                          & (self.num_tokens[rows] < self.caps[rows])]

    def end_where(self, done: Callable[[int, list[int]], bool]) -> None:
        """End the going rows that ``done(row, its tokens so far)`` calls complete
        (EndReason.DONE)."""
        finished = np.array([done(int(row), self.tokens[row, :self.num_tokens[row]].tolist())
                             for row in self.going], bool)
        self.end_reason[self.going[finished]] = EndReason.DONE
        self.going = self.going[~finished]
