"""``Decoder.sample_steps`` on the host: the checks, the pages reserved around the step,
and its chunks (``step_chunks``), each one call of the decoder's jitted step sampler
(``step_sampler``) for the rows still going.

A step's pages are reserved up to each row's cap before its first chunk and what the rows
left unwritten goes back after its last, or when a chunk fails. A chunk's call runs over
a copy of its rows' cache windows where the decoder's ``row_windows`` holds and, on
pages, the windows fit their share of the pool (``step_sampler.paged_windows_fit``).
``Decoder.step_work`` counts what the calls computed.

The functions here are the decoder's own: they use its jitted call, row layout, pages
and host mirrors as ``Decoder`` methods would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import jax
import numpy as np

from qstar_jax.decoding.data_shards import padded_params
from qstar_jax.decoding.input_checks import check_step_inputs
from qstar_jax.decoding.page_bookkeeping import own_pages, trim_pages
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.step_chunks import ChunkedStep, StepBatch
from qstar_jax.decoding.step_sampler import StepOutput, paged_windows_fit
from qstar_jax.decoding.token_batch import bucket_size

if TYPE_CHECKING:
    from qstar_jax.decoding.engine import Decoder


def sample_steps(decoder: Decoder, slots: Sequence[int], *, problem_keys: jax.Array,
                 node_ids: Sequence[int], params: SamplingParams,
                 max_tokens: int | Sequence[int], newline_ends: bool = True,
                 done: Callable[[int, list[int]], bool] | None = None) -> StepBatch:
    """``Decoder.sample_steps``: its arguments and results."""
    slots = decoder._checked_slots(slots, "slots", filled=True)
    rows = len(slots)
    node_ids = np.asarray(node_ids)
    caps = np.broadcast_to(np.asarray(max_tokens), (rows,))
    check_step_inputs(rows, problem_keys, node_ids, params, caps)
    step = ChunkedStep(caps, decoder.step_chunk)
    host_params = jax.tree.map(np.asarray, params)  # once: each chunk takes its rows
    # One cap bucket for all of a step's chunks: it sizes the outputs, not the work.
    cap_bucket = bucket_size(step.chunk, minimum=decoder.min_step_bucket)
    lengths = decoder._lengths
    decoder.cache = own_pages(decoder.pages, decoder.cache, slots, lengths[slots],
                              np.minimum(lengths[slots] + caps, decoder.max_len),
                              decoder._copy_pages)
    try:
        while step.going.size:
            going = step.going
            out = _sample_chunk(decoder, slots[going], problem_keys, going, node_ids[going],
                                jax.tree.map(lambda x: x[going], host_params),
                                step.chunk_caps(), step.going_blank(decoder._whitespace),
                                cap_bucket, newline_ends)
            lengths[slots[going]] += out.num_tokens
            step.add(out)
            if done is not None:
                step.end_where(done)
    finally:  # the pages reserved up to the cap and left unwritten go back
        trim_pages(decoder.pages, slots, lengths)
    return StepBatch(slots=slots, tokens=step.tokens, logprobs=step.logprobs,
                     num_tokens=step.num_tokens, end_reason=step.end_reason,
                     hidden=step.hidden)


def _sample_chunk(decoder: Decoder, slots: np.ndarray, problem_keys: jax.Array,
                  key_rows: np.ndarray, node_ids: np.ndarray, params: SamplingParams,
                  caps: np.ndarray, blank: np.ndarray, cap_bucket: int,
                  newline_ends: bool) -> StepOutput:
    """One jitted step-sampler call for ``slots`` [n] (row i draws with
    ``problem_keys[key_rows[i]]``), their pages already owned up to ``caps``, whose steps
    so far are whitespace only where ``blank``; the output [n] on the host, in call
    order."""
    layout = decoder._layout(slots)
    # One gather with unsigned indices (no negative-index fix-up ops), padding rows
    # repeating row 0: each eager op compiles once per distinct row count.
    padded_keys = problem_keys[layout.place(key_rows, 0).astype(np.uint32)]
    window = decoder.attention_window(slots, caps)
    pages = decoder.pages
    row_windows = decoder.row_windows and (
        pages is None or not decoder._windows_bounded or paged_windows_fit(
            layout.size, window, pages.page_size, pages.num_pages))
    decoder.cache, out = decoder._sample_step(
        decoder._weights, decoder.cache, decoder._local_slots(layout, slots), padded_keys,
        layout.place(node_ids, 0), padded_params(params, layout), layout.place(caps, 0),
        layout.place(blank, True),
        decoder._lines if newline_ends else decoder._text_lines, decoder._eos_ids,
        cap_bucket, window, row_windows)
    out = layout.take(jax.device_get(out))
    work = decoder.step_work
    work["calls"] += 1
    work["row_window_calls"] += row_windows
    work["rows"] += layout.size
    work["row_tokens"] += layout.size * int(out.num_tokens.max())
    work["sampled_tokens"] += int(out.num_tokens.sum())
    return out
