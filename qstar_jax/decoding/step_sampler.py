"""The step sampler: sample one reasoning step per row, entirely on device.

Shapes: B rows, C = the static token cap (a bucket), S slots, M max cache length,
E hidden size, V vocabulary.

One ``lax.while_loop`` repeatedly turns each row's last hidden state into logits,
samples a token, and feeds it to the model, until every row has ended its step. A row
ends on its own when its token contains a newline, is an EOS id, reaches the row's
token cap, or fills its slot; from then on it writes nothing (its position is M). Where
the line tables say so, a newline that would end a blank step ends nothing: the blank
lines join the line after them (``line_tables``).
Attention reads only a static window of W <= M positions of each row, one that holds
every row's start plus its cap (``window``): a row's tokens all lie below it. With
``row_windows`` the loop runs over a copy of its rows' windows, taken once a call, its
new positions written back at its end, rather than gathering them out of the slots (or
pages) at every token.
"""

from __future__ import annotations

import dataclasses
import enum
import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct

from qstar_jax.decoding.kv_cache import KVCache
from qstar_jax.decoding.line_tables import LineTables
from qstar_jax.decoding.paged_cache import PagedKVCache
from qstar_jax.decoding.sampling import SamplingParams, sample
from qstar_jax.decoding.weights import DecoderWeights
from qstar_jax.models import row_windows as windows
from qstar_jax.models.cache_pages import PagedRows


class EndReason(enum.IntEnum):
    """Why a row's step ended. When several hold at once the first listed wins."""

    EOS = 0         # the last token is an end-of-sequence id: the trajectory is over
    NEWLINE = 1     # the last token contains a newline: the step is complete
    CACHE_FULL = 2  # the slot holds max_len tokens and cannot grow
    CAP = 3         # the row produced its token cap without finishing the step
    DONE = 4        # host only: between chunks, the caller's check found the row complete


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["tokens", "logprobs", "num_tokens", "end_reason", "hidden"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True, kw_only=True)
class StepOutput:
    """tokens, logprobs: [B, C] (entries past num_tokens are 0); num_tokens, end_reason: [B]
    int32; hidden: [B, E] float32, the final-norm hidden state after the step's last token
    (the slot's new last_hidden; unchanged for a row that produced no token)."""

    tokens: jax.Array
    logprobs: jax.Array
    num_tokens: jax.Array
    end_reason: jax.Array
    hidden: jax.Array


@struct.dataclass
class StepRows:
    """What stays fixed while a step is sampled."""

    node_keys: jax.Array      # [B] typed PRNG keys: fold_in(problem key, node id)
    model_rows: jax.Array | PagedRows | windows.RowWindows  # the rows' slots clipped
                              # into the pool (a padding row reads slot S - 1 and writes
                              # nothing: it is done from the start), their page tables for
                              # a paged cache, or RowWindows over a copy of their windows
    params: SamplingParams    # [B] per-row settings
    caps: jax.Array           # [B] int32 token caps
    lines: LineTables         # [V] tables: which tokens end a step's line
    eos_ids: jax.Array        # [n] int32
    max_len: int = struct.field(pytree_node=False)  # M, the most tokens a slot holds
    window: int = struct.field(pytree_node=False)   # W, the cache positions attention reads


@struct.dataclass
class StepLoopState:
    """The while-loop's carry."""

    k: jax.Array | tuple   # [L, S, K, M, D] the pool's keys (or [L, P, K, page, D] pages),
                           # donated through the loop; over row windows, L [B, K, D, W]
    v: jax.Array | tuple   # its values, likewise; over row windows, L [B, K, W, D]
    done: jax.Array        # [B] bool, the row's step has ended
    blank: jax.Array       # [B] bool, the row's step is whitespace only so far
    positions: jax.Array   # [B] int32, where the row's next token is written
    num_tokens: jax.Array  # [B] int32 tokens sampled so far
    hidden: jax.Array      # [B, E] float32, after the row's last fed token
    end_reason: jax.Array  # [B] int32 EndReason, final once done
    tokens: jax.Array      # [B, C] int32 (0 past num_tokens)
    logprobs: jax.Array    # [B, C] float32 (0 past num_tokens)


def end_reason_after(tokens: jax.Array, positions: jax.Array, num_tokens: jax.Array,
                     caps: jax.Array, ends_line: jax.Array, eos_ids: jax.Array,
                     max_len: int) -> jax.Array:
    """[B] int32: the EndReason of a row that just fed ``tokens`` and now stands at
    ``positions`` with ``num_tokens`` sampled, or -1 while its step goes on; ``ends_line``
    [B] bool: the token ends the step's line (``LineTables.ends_line``)."""
    return jnp.select(
        [jnp.isin(tokens, eos_ids), ends_line, positions >= max_len,
         num_tokens >= caps],
        [EndReason.EOS, EndReason.NEWLINE, EndReason.CACHE_FULL, EndReason.CAP], -1
    ).astype(jnp.int32)


# decode.row_windows's settings (and the experiments' --row-windows), as Decoder's
# row_windows argument: "copy" runs over row windows, "gather" gathers at every token,
# "auto" copies on a CPU wherever it can (``resolve_row_windows``). (Not on/off, which
# YAML reads as booleans.)
ROW_WINDOWS = {"auto": None, "gather": False, "copy": True}


def resolve_row_windows(requested: bool | None, *, split_model: bool, per_layer: bool,
                        paged_kernel: bool, backend: str | None = None) -> bool:
    """Whether step calls run over a copy of their rows' windows (``row_windows``): as
    ``requested``, or where None on a CPU (``backend``, default JAX's) wherever they can
    (untimed on a GPU or TPU). They can where each data shard's rows are computed whole
    on one device (not ``split_model``: a mesh whose model axis has several devices),
    written by one token loop per layer (``per_layer``: weights split per layer,
    ``DecoderWeights.layers``), and attended by the model's own jnp attention, over row
    slots or pages (not ``paged_kernel``: a paged cache whose decode step runs the
    paged-attention kernel, ``Paging.uses_kernel``); requested where they cannot, it
    raises."""
    possible = not split_model and per_layer and not paged_kernel
    if requested is None:
        return possible and (backend or jax.default_backend()) == "cpu"
    if requested and not possible:
        raise ValueError("row_windows needs whole layers on each device (no mesh model "
                         "axis of more than one device), read by a per-layer copy of the "
                         "weights (layer_weights per-layer, per-layer-transposed or "
                         "per-layer-kernels), and on pages the jnp attention (not the "
                         "paged-attention kernel)")
    return requested


# On pages, the most positions a step call's row windows may hold, as a share of the
# pool's: rows share the pages of the tokens they share, and their windows copy those
# once a row, so the copies could outgrow the pages. A sixteenth of the cache's bytes
# is at most 5.6% of the memory (``memory_plan`` lets weights and cache take 90%),
# about half of what the plan leaves free; a call of more windows gathers. (On row
# slots a call's windows are at most its rows' slots.)
PAGED_WINDOWS_SHARE = 1 / 16


def paged_windows_fit(rows: int, window: int, page_size: int, num_pages: int) -> bool:
    """Whether ``rows`` row windows of ``window`` positions (whole pages) fit in
    ``PAGED_WINDOWS_SHARE`` of a pool of ``num_pages`` pages."""
    positions = rows * -(-window // page_size) * page_size
    return positions <= PAGED_WINDOWS_SHARE * num_pages * page_size


def sample_step(graphdef: nnx.GraphDef, weights: DecoderWeights,
                cache: KVCache | PagedKVCache,
                slots: jax.Array, problem_keys: jax.Array, node_ids: jax.Array,
                params: SamplingParams, caps: jax.Array, blank: jax.Array,
                lines: LineTables, eos_ids: jax.Array, max_tokens: int,
                window: int, row_windows: bool) -> tuple[KVCache | PagedKVCache, StepOutput]:
    """Sample one step for each row.

    slots: [B] int32 (``S`` marks a padding row); problem_keys: [B] typed PRNG keys;
    node_ids: [B] int32. The token at absolute position p of row b is drawn with
    ``fold_in(fold_in(problem_keys[b], node_ids[b]), p)``, so it does not depend on the
    other rows. params: per-row SamplingParams [B]; caps: [B] int32 per-row token caps
    <= max_tokens; blank: [B] bool, the row's step so far (an earlier chunk's tokens) is
    whitespace only, as it is with none; lines: the LineTables; eos_ids: [n] int32;
    max_tokens: C, static. window: W, static, at least every real row's start position
    plus its cap (``Decoder.attention_window``; M or more: whole rows): attention reads
    cache positions [0, W) only. row_windows: static; read by per-layer weights and the
    jnp attention only: the loop runs over a copy of the rows' windows (``row_windows``;
    on pages, of the pages holding them). Pure:
    jit it with the cache donated. On a PagedKVCache every row must own its pages up to
    its cap (``PageTable.reserve``).
    """
    model = nnx.merge(graphdef, weights.model)
    num_slots, max_len = cache.num_slots, cache.max_len
    batch = slots.shape[0]
    model_slots = jnp.minimum(slots, num_slots - 1)
    is_padding = slots >= num_slots
    start_positions = jnp.where(is_padding, max_len, cache.lengths[model_slots])
    full_at_start = start_positions >= max_len
    pool_rows = cache.model_rows(model_slots)
    k, v, model_rows = cache.k, cache.v, pool_rows
    if row_windows:
        k, v = windows.take(cache.k, cache.v, pool_rows, window)
        model_rows = windows.RowWindows()
    rows = StepRows(node_keys=jax.vmap(jax.random.fold_in)(problem_keys, node_ids),
                    model_rows=model_rows, params=params, caps=caps,
                    lines=lines, eos_ids=eos_ids, max_len=max_len,
                    window=window)
    initial = StepLoopState(
        k=k, v=v, done=is_padding | full_at_start | (caps <= 0), blank=blank,
        positions=start_positions, num_tokens=jnp.zeros((batch,), jnp.int32),
        hidden=cache.last_hidden[model_slots],
        end_reason=jnp.where(full_at_start, EndReason.CACHE_FULL, EndReason.CAP).astype(jnp.int32),
        tokens=jnp.zeros((batch, max_tokens), jnp.int32),
        logprobs=jnp.zeros((batch, max_tokens), jnp.float32))
    final = jax.lax.while_loop(lambda state: ~jnp.all(state.done),
                               functools.partial(_feed_one_token, model, weights, rows),
                               initial)
    k, v = final.k, final.v
    if row_windows:  # a padding row's end is its start: it writes nothing back
        k, v = windows.put(cache.k, cache.v, pool_rows, k, v, start_positions,
                           final.positions, max_tokens)
    cache = dataclasses.replace(
        cache, k=k, v=v,
        lengths=cache.lengths.at[slots].set(final.positions, mode="drop"),
        last_hidden=cache.last_hidden.at[slots].set(final.hidden, mode="drop"))
    return cache, StepOutput(tokens=final.tokens, logprobs=final.logprobs,
                             num_tokens=final.num_tokens, end_reason=final.end_reason,
                             hidden=final.hidden)


def _feed_one_token(model, weights: DecoderWeights, rows: StepRows,
                    state: StepLoopState) -> StepLoopState:
    """One round: every unfinished row samples a token and feeds it to the model."""
    max_len, max_tokens = rows.max_len, state.tokens.shape[1]
    done, positions, num = state.done, state.positions, state.num_tokens
    keys = jax.vmap(jax.random.fold_in)(rows.node_keys, positions)
    tokens, logprobs = sample(model.logits(state.hidden), keys, rows.params)
    feed_positions = jnp.where(done, max_len, positions)
    hidden, k, v = model(tokens[:, None], feed_positions[:, None], rows.model_rows,
                         state.k, state.v, key_len=rows.window, **weights.layer_arguments())
    write_at = jnp.where(done, max_tokens, num)  # out of range: dropped
    positions = jnp.where(done, positions, positions + 1)
    num = jnp.where(done, num, num + 1)
    reason = end_reason_after(tokens, positions, num, rows.caps,
                              rows.lines.ends_line(state.blank, tokens),
                              rows.eos_ids, max_len)
    ends_now = ~done & (reason >= 0)
    batch_rows = jnp.arange(tokens.shape[0])
    return StepLoopState(
        k=k, v=v, done=done | ends_now, positions=positions, num_tokens=num,
        blank=jnp.where(done, state.blank, rows.lines.still_blank(state.blank, tokens)),
        hidden=jnp.where(done[:, None], state.hidden, hidden[:, 0].astype(jnp.float32)),
        end_reason=jnp.where(ends_now, reason, state.end_reason),
        tokens=state.tokens.at[batch_rows, write_at].set(tokens, mode="drop"),
        logprobs=state.logprobs.at[batch_rows, write_at].set(logprobs, mode="drop"))
