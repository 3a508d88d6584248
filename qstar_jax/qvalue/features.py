"""What Q̂ reads of each labelled (s, a): the policy's hidden state at a's last token, and
a's log-probability under the policy.

These are the features Q̂ reads at search time (the decoder's hidden after the step's
final newline, and the sampled step's summed log-probability under the unmodified
distribution), recomputed here with full-sequence passes. The model is causal, so one
pass over a text gives the features of every (s, a) whose tokens begin it: the pairs
along one trace share a row (a carrier), and a label set of traces costs one row per
trace instead of one per step.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from qstar_jax.decoding.token_batch import bucket_size, pad_token_batch
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.tokenizer import Tokenizer
from qstar_jax.parallel import replicated
from qstar_jax.tasks.base import state_text


class NamedStep(Protocol):
    """A step that names its problem and the steps before it (search's ``QItem``, the
    labels' ``StepPair`` and ``LabelledStep``)."""

    problem_index: int
    prefix_steps: tuple[str, ...]
    step_text: str


def step_texts(prompts: Sequence[str], steps: Sequence[NamedStep]
               ) -> tuple[list[str], list[str]]:
    """What ``StepFeatures`` reads of each step: its state's text (prompt ⊕ steps so far)
    and its own (the step ⊕ separator)."""
    return ([state_text(prompts[s.problem_index], s.prefix_steps) for s in steps],
            [state_text("", (s.step_text,)) for s in steps])


class StepFeatures:
    """``last_step_features`` for one model, its jitted pass built once: what scores the
    steps of every search round (``scorers.SecondOpinion``) without tracing again."""

    def __init__(self, model: LlamaModel, tokenizer: Tokenizer, *, batch_size: int = 64,
                 fine_rows: bool = False):
        """fine_rows: pad a call's rows to the finer buckets (24, 48, ...: ``bucket_size``),
        for a one-off call, where a shape compiles once anyway and padding is pure cost."""
        self._tokenizer, self._batch_size, self._fine_rows = tokenizer, batch_size, fine_rows
        self._hidden_size = model.config.hidden_size
        graphdef, self._state = nnx.split(model)

        def forward(state, tokens, lasts, step_positions, step_targets, in_step):
            """tokens [R, T] carriers; lasts [R, M] each query's last token; step_positions
            and step_targets [R, P] where the row's step tokens are predicted and which;
            in_step [R, M, P] which of them are each query's step."""
            module = nnx.merge(graphdef, state)
            hidden = module.forward_sequence(tokens)
            # Logits only where a step's token is predicted, not at every position of
            # every row: the vocabulary projection and its softmax over [R, T, V] cost
            # more than the whole pass otherwise.
            at_steps = jnp.take_along_axis(hidden, step_positions[..., None], axis=1)
            logprobs = jax.nn.log_softmax(module.logits(at_steps), axis=-1)
            token_logprobs = jnp.take_along_axis(logprobs, step_targets[..., None], axis=-1)[..., 0]
            step_logprob = jnp.sum(jnp.where(in_step, token_logprobs[:, None], 0.0), axis=-1)
            return jnp.take_along_axis(hidden, lasts[..., None], axis=1), step_logprob

        # A model restored onto a mesh returns its results replicated, which every process
        # can read whole.
        mesh = getattr(jax.tree.leaves(self._state)[0].sharding, "mesh", None)
        self._forward = jax.jit(forward, out_shardings=None if mesh is None else replicated(mesh))

    def __call__(self, states: Sequence[str], steps: Sequence[str], *,
                 progress: str | None = None,
                 rows_read: Callable[[dict[int, list[int]]], None] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """progress: a bar's description, for a long one-off pass (None: no bar).
        rows_read: told {text: its token ids} of the texts whose rows the pass reads (a
        text whose tokens begin another's is read in that one's row: ``shared_carriers``)."""
        tokenizer, batch_size = self._tokenizer, self._batch_size
        state_lengths = [len(tokenizer.encode_input(s)) for s in states]
        token_lists = [tokenizer.encode_input(s + a) for s, a in zip(states, steps)]
        hidden_out = np.zeros((len(states), self._hidden_size), np.float32)
        logprob_out = np.zeros(len(states), np.float32)
        carriers = shared_carriers(token_lists)
        if rows_read is not None:
            rows_read({c: token_lists[c] for c in carriers})
        # Similar lengths share a call (in the texts' order where lengths tie).
        order = sorted(carriers, key=lambda c: (len(token_lists[c]), c))
        for start in tqdm(range(0, len(order), batch_size), desc=progress, unit="call",
                          mininterval=2.0, disable=progress is None):
            rows = order[start:start + batch_size]
            lists = [token_lists[c] for c in rows]
            queries = [carriers[c] for c in rows]
            # A few texts (a search round's children, a small label set) pad to a few rows.
            padded_rows = min(bucket_size(len(rows), minimum=8, fine=self._fine_rows), batch_size)
            batch = pad_token_batch(lists, pad_id=tokenizer.pad_id, batch=padded_rows,
                                    length=bucket_size(max(map(len, lists)), minimum=16,
                                                       fine=True))
            hidden, step_logprob = self._forward(
                self._state, batch.tokens,
                *_query_positions(lists, queries, token_lists, state_lengths, padded_rows))
            hidden, step_logprob = np.asarray(hidden, np.float32), np.asarray(step_logprob)
            for row, members in enumerate(queries):
                hidden_out[members] = hidden[row, :len(members)]
                logprob_out[members] = step_logprob[row, :len(members)]
        return hidden_out, logprob_out


def shared_carriers(token_lists: Sequence[Sequence[int]]) -> dict[int, list[int]]:
    """{carrier: the texts it carries}: every text is carried by one text whose tokens
    begin with all of its own (itself, when no longer one does), so one pass over the
    carrier gives the text's features. Longest texts first, through a token trie."""
    root: dict = {}  # a node: {token: the node after it, None: the first text through it}
    carriers: dict[int, list[int]] = {}
    for text in sorted(range(len(token_lists)), key=lambda i: -len(token_lists[i])):
        node = root
        for token in token_lists[text]:
            node = node.get(token)
            if node is None:
                break
        if node is not None:  # a prefix of a longer text: that text carries it
            carriers[node[None]].append(text)
            continue
        carriers[text] = [text]
        node = root
        for token in token_lists[text]:
            node = node.setdefault(token, {None: text})
    return carriers


def _query_positions(carrier_lists: Sequence[Sequence[int]], queries: Sequence[list[int]],
                     token_lists: Sequence[Sequence[int]], state_lengths: Sequence[int],
                     rows: int) -> tuple[np.ndarray, ...]:
    """The gather points of one call: [rows, M] int32 each query's last token; [rows, P]
    int32 positions where some query's step tokens are predicted (the token before each
    step token) and int32 those tokens; [rows, M, P] bool which belong to which query.
    M and P are powers of two, so calls share a few compiled shapes."""
    # A step shorter than nothing (its first token merged into the state's last) has none.
    spans = [[(state_lengths[q] - 1, len(token_lists[q]) - 1) for q in members]
             for members in queries]
    predicted = [sorted({p for start, end in row for p in range(start, end)}) for row in spans]
    width = bucket_size(max(map(len, predicted)), minimum=8)
    per_row = bucket_size(max(map(len, queries)))
    lasts = np.zeros((rows, per_row), np.int32)
    positions = np.zeros((rows, width), np.int32)
    targets = np.zeros((rows, width), np.int32)
    in_step = np.zeros((rows, per_row, width), bool)
    for row, (tokens, members, row_spans, row_predicted) in enumerate(
            zip(carrier_lists, queries, spans, predicted)):
        lasts[row, :len(members)] = [len(token_lists[q]) - 1 for q in members]
        positions[row, :len(row_predicted)] = row_predicted
        targets[row, :len(row_predicted)] = [tokens[p + 1] for p in row_predicted]
        at = np.asarray(row_predicted)
        for query, (start, end) in enumerate(row_spans):
            in_step[row, query, :len(at)] = (at >= start) & (at < end)
    return lasts, positions, targets, in_step


def last_step_features(model: LlamaModel, tokenizer: Tokenizer, states: Sequence[str],
                       steps: Sequence[str], *, batch_size: int = 64
                       ) -> tuple[np.ndarray, np.ndarray]:
    """For each text ``states[i] + steps[i]``: float32 [N, E], the final-norm hidden state
    at its last token, and float32 [N], the summed log-probability of the step's tokens
    after the state's (the state is tokenized alone, so a step starts on a token
    boundary, as it does when the decoder samples it)."""
    return StepFeatures(model, tokenizer, batch_size=batch_size, fine_rows=True)(
        states, steps, progress="step features")
