"""The decoder callers use: a model, its KV slot pool, and the jitted hot functions.

Shapes: B rows, C token cap, E hidden size, V vocabulary.

Callers speak in slots: ``allocate`` slots, ``prefill`` prompts into them, ``fork`` a
node's slot into its children, ``sample_steps`` to extend slots by one reasoning step
(or ``sample_trie`` for several steps after one slot, shared prefixes computed once),
``append_token`` to write a token no step sampled (a line break where a step reached its
cap), ``free`` them when a node is done. Inputs are checked on the host before any device work
(``input_checks``);
row counts are padded to powers of two and lengths to buckets so that, after warm-up,
calls differing only in data never recompile (``trace_counts`` shows it). A step call's
attention reads a window of each slot, not its whole ``max_len`` row: the smallest power
of two (at least ``min_window_bucket``) that holds every row's length plus the call's
token cap, or the whole row when that would be over three quarters of it; one compiled
variant per window. With ``step_chunk`` a step (or a trie) runs as several calls, each
holding only the rows still going (``step_chunks``, run by ``step_calls``; a trie's
calls also a bounded number of spares: ``trie_chunks``, run by ``trie_calls``). On a
mesh each data shard holds its own slots and computes its own rows (``data_shards``):
new rows are spread over the shards, and a child or a trie's spare goes on its parent's
shard.
On a paged cache (``paged_cache``) pages are reserved, copied and trimmed around each call
(``page_bookkeeping``).
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qstar_jax.decoding import step_calls, trie_calls
from qstar_jax.decoding.data_shards import RowLayout
from qstar_jax.decoding.kv_cache import SlotPool, cache_shardings, init_cache
from qstar_jax.decoding.input_checks import (check_children_beside_parents,
                                             check_token_lists, checked_eos_ids,
                                             checked_slots, checked_token_table)
from qstar_jax.decoding.line_tables import LineTables
from qstar_jax.decoding.jit_calls import decoder_calls
from qstar_jax.decoding.page_bookkeeping import fork_pages, own_pages, trim_pages
from qstar_jax.decoding.page_table import PageTable
from qstar_jax.decoding.paged_cache import Paging, init_paged_cache, paged_cache_shardings
from qstar_jax.decoding.prefill import MIN_PREFILL_BUCKET
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.step_chunks import StepBatch
from qstar_jax.decoding.step_sampler import resolve_row_windows
from qstar_jax.decoding.token_batch import bucket_size, length_groups, pad_token_batch
from qstar_jax.decoding.trie_sampler import TrieOutput
from qstar_jax.decoding.weights import DecoderWeights
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.tokenizer import BlankStepTables
from qstar_jax.parallel import MODEL, ShardingRules, check_slots, place, weight_shardings
from qstar_jax.values import is_integer

MIN_STEP_BUCKET = 8
MIN_WINDOW_BUCKET = 128


class Decoder:
    """Batched KV-cache decoding of one model over a pool of ``num_slots`` sequences of up
    to ``max_len`` tokens.

    newline_table: [V] bool, True for the tokens whose text contains a newline (the step
    boundary; all False disables it). blank_steps: the tokenizer's ``BlankStepTables``: a
    newline ends no step that is blank so far, so blank lines join the line after them
    (``line_tables``); None: a blank line is a step like any other. eos_ids: the ids that
    end a trajectory (default: the model config's). cache_dtype: k/v storage dtype (default:
    the model's parameter dtype). Row counts are padded to powers of two of at least
    ``min_batch_bucket``, prompt lengths to at least ``min_prefill_bucket`` and step caps to
    at least ``min_step_bucket``: larger minimums mean fewer compiled variants. Step calls
    attend over windows of at least ``min_window_bucket`` positions (``attention_window``;
    at least ``max_len``: always the whole row). step_chunk: sample a step in chunks of at
    most this many tokens per row (a trie in chunks of as many rounds), each chunk holding
    only the rows whose step goes on, so rows that ended stop costing compute
    (``step_chunks``, ``trie_chunks``; every distinct padded row count is a compiled
    variant); 0: one call computes every row until the last one ends. layer_weights: how the
    token loops read the layers' weights, one of ``weights.LAYER_WEIGHTS`` ("per-layer"
    holds them twice; "auto": per layer on CPU and GPU, unless a mesh splits the heads
    on a CPU with every product as rows and on a GPU with the attention's projections
    transposed; see ``decoding/weights``). row_windows: a step call's token loop runs
    over a copy of its rows' cache windows instead of gathering them at every token
    (``models/row_windows``; for row slots or pages read by a per-layer copy and the jnp
    attention, on a mesh whose model axis is one device); None: on a CPU wherever it can
    (``resolve_row_windows``), on pages only for calls whose windows fit
    ``PAGED_WINDOWS_SHARE`` of the pool (SmolLM2's 64-row collect ran 12-14% faster on row
    slots, 14-25% on pages asked to copy, the default run no slower,
    docs/decoder_speed.md); untimed on a GPU or TPU, which gather.
    shared_prefix: a trie round's rows attend to their group's prefix once, all the
    group's queries together, and to their own steps apart (``models/shared_prefix``;
    not for a model with a sliding window). Off by default: on 2 CPU cores it did not
    make a search faster (docs/paged_cache.md).
    mesh: a (data, model) ``jax.sharding.Mesh`` to spread the weights and the slot pool
    over (``qstar_jax.parallel``), laid out by ``rules``; each shard of the slots' mesh axis
    computes the rows of its own slots, and outputs come back replicated, so every
    process of a multi-host run reads them. None: one device.
    paging: hold K/V in pages that forks share (``paged_cache``) instead of one max_len
    row per slot; on a mesh the pages split over the slots' axis with the slots (a
    multiple of its size). A trie's splits are page-table forks on it.
    """

    def __init__(self, model: LlamaModel, *, num_slots: int, max_len: int,
                 newline_table: np.ndarray, blank_steps: BlankStepTables | None = None,
                 eos_ids: Sequence[int] | None = None,
                 cache_dtype=None, min_batch_bucket: int = 1,
                 min_prefill_bucket: int = MIN_PREFILL_BUCKET,
                 min_step_bucket: int = MIN_STEP_BUCKET,
                 min_window_bucket: int = MIN_WINDOW_BUCKET,
                 step_chunk: int = 0, layer_weights: str = "auto",
                 row_windows: bool | None = None, shared_prefix: bool = False,
                 mesh: jax.sharding.Mesh | None = None,
                 rules: ShardingRules = ShardingRules(), paging: Paging | None = None):
        if getattr(model, "layers", None) is None:
            raise TypeError(f"Decoder takes the model itself (a LlamaModel: load_model(...)"
                            f".model), got {type(model).__name__}")
        for name, value in (("num_slots", num_slots), ("max_len", max_len)):
            if not (is_integer(value) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.config = model.config
        if paging is not None:
            paging = paging.for_heads(self.config.head_dim)
        vocab = self.config.vocab_size
        newline_table = checked_token_table(newline_table, vocab)
        if blank_steps is not None:
            blank_steps = BlankStepTables(*(
                checked_token_table(table, vocab, f"blank_steps.{name}",
                                    "Tokenizer.blank_step_tables")
                for name, table in zip(BlankStepTables._fields, blank_steps)))
        eos_ids = checked_eos_ids(self.config.eos_token_ids if eos_ids is None else eos_ids,
                                  vocab)
        self.max_len = max_len
        self.min_batch_bucket = min_batch_bucket
        self.min_prefill_bucket = min_prefill_bucket
        self.min_step_bucket = min_step_bucket
        self.min_window_bucket = min_window_bucket
        if step_chunk < 0:
            raise ValueError(f"step_chunk must be >= 0 (0: a step in one call), got {step_chunk}")
        self.step_chunk = step_chunk
        if shared_prefix and model.config.uniform_sliding_window is not None:
            raise ValueError("shared_prefix attention has no sliding window: build the "
                             "decoder without it for this model")
        self.shared_prefix = shared_prefix
        graphdef = nnx.graphdef(model)
        if mesh is not None:
            rules = rules.for_model(self.config, mesh)
        self._weights = DecoderWeights.of(
            model, layer_weights, heads_split=mesh is not None and rules.splits("heads", mesh))
        self._windows_bounded = row_windows is None  # auto: on pages, within their share
        self.row_windows = resolve_row_windows(
            row_windows, split_model=mesh is not None and mesh.shape[MODEL] > 1,
            per_layer=self._weights.layers is not None,
            paged_kernel=paging is not None and paging.uses_kernel())
        if cache_dtype is None:
            cache_dtype = model.embed_tokens.embedding[...].dtype
        make_cache = functools.partial(init_cache, self.config, slots=num_slots,
                                       max_len=max_len, dtype=cache_dtype)
        if paging is not None:
            make_cache = functools.partial(
                init_paged_cache, self.config, slots=num_slots, pages=paging.num_pages,
                page_size=paging.page_size, max_len=max_len, dtype=cache_dtype,
                attention=paging.attention)
        self.mesh = mesh
        slot_axis = None  # the mesh axis the slots are split over: None, all on each device
        cache_sharding = None  # the cache's layout on the mesh
        if mesh is None:
            # Committed to the weights' device from the start: a jitted call's results are
            # committed, and jit compiles apart for committed and uncommitted arguments,
            # so a fresh (uncommitted) cache would have its first call compiled twice.
            self.cache = jax.device_put(make_cache(), self._weights.device)
        else:
            check_slots(mesh, num_slots)
            slot_axis = rules.slots
            self._weights = place(self._weights, weight_shardings(self._weights, mesh, rules))
            cache_sharding = (cache_shardings(mesh, rules) if paging is None
                              else paged_cache_shardings(mesh, rules, paging))
            self.cache = jax.jit(make_cache, out_shardings=cache_sharding)()
        shards = 1 if slot_axis is None else mesh.shape[slot_axis]
        self.pages = None if paging is None else PageTable(
            num_slots=num_slots, num_pages=paging.num_pages, page_size=paging.page_size,
            max_len=max_len, shards=shards)
        self.pool = SlotPool(num_slots, shards) if self.pages is None else self.pages.slots
        self._lengths = np.zeros(num_slots, np.int64)  # host mirror of cache.lengths
        self._lines = LineTables.make(newline_table, blank_steps)
        self._text_lines = self._lines.without_newlines()  # texts: stop at EOS only
        self._whitespace = np.asarray(self._lines.whitespace)  # on the host, for chunks
        self._eos_ids = jnp.asarray(eos_ids)
        self.trace_counts: collections.Counter[str] = collections.Counter()
        # What the step calls computed: "calls", padded "rows" summed over them,
        # "row_tokens" (padded rows times the call's longest row: the loop's row-token
        # slots, on a mesh an upper bound), "sampled_tokens" and "row_window_calls" (the
        # calls that ran over row windows).
        self.step_work: collections.Counter[str] = collections.Counter()
        # What the trie calls computed: "calls", padded "rows" summed over them,
        # "row_rounds" (padded rows times the rounds the call ran, shard by shard on a
        # mesh) and "starved" (calls that stopped for want of spares: ``trie_chunks``).
        self.trie_work: collections.Counter[str] = collections.Counter()
        calls = decoder_calls(graphdef, mesh=mesh, slot_axis=slot_axis,
                              cache_sharding=cache_sharding, paging=paging,
                              counts=self.trace_counts)
        self._prefill, self._sample_step = calls.prefill, calls.sample_step
        self._sample_trie, self._fork = calls.sample_trie, calls.fork
        self._copy_pages = calls.copy_pages
        self._rows_logprobs, self._rows_hidden = calls.rows_logprobs, calls.rows_hidden

    @property
    def layer_weights(self) -> str:
        """How the token loops read the layers' weights: the resolved entry of
        ``weights.LAYER_WEIGHTS`` ("auto" never)."""
        return self._weights.mode

    @property
    def prefill_layer_weights(self) -> str:
        """How a prefill reads them (``DecoderWeights.prefill_mode``)."""
        return self._weights.prefill_mode

    @property
    def num_slots(self) -> int:
        return self.pool.num_slots

    def lengths(self, slots: Sequence[int]) -> np.ndarray:
        """Tokens held by each slot, [len(slots)]."""
        return self._lengths[self._checked_slots(slots, "slots")].copy()

    def attention_window(self, slots: Sequence[int], max_tokens: int | Sequence[int]) -> int:
        """The cache positions a step call for ``slots`` with token caps ``max_tokens``
        attends over: a bucket holding every row's length plus its cap, at most max_len
        (a row's tokens all lie below it, so the window changes what is read, not what is
        computed)."""
        slots = np.asarray(slots, np.int64)
        caps = np.maximum(np.broadcast_to(np.asarray(max_tokens, np.int64), slots.shape), 0)
        end = int(np.max(self._lengths[slots] + caps, initial=1))
        return self._window(end, self.min_window_bucket)

    def _window(self, end: int, minimum: int) -> int:
        """The window bucket holding positions below ``end``: a power of two of at least
        ``minimum``, or the whole row when that would read more than three quarters of
        it (a window so near max_len saves little and costs a compiled variant: the
        default run's 128 of 160 doubled its trie programs)."""
        window = bucket_size(end, minimum=minimum)
        return self.max_len if 4 * window > 3 * self.max_len else window

    def allocate(self, n: int, near: Sequence[int] | None = None) -> list[int]:
        """``n`` free slots: each beside its parent ``near[i]`` (on the parent's data shard,
        as ``fork`` and ``sample_trie`` need), or with ``near=None`` spread over the data
        shards. Raises SlotPoolExhausted when a shard is full."""
        return self.pool.allocate(n, near)

    def free(self, slots: Sequence[int]) -> None:
        slots = self._checked_slots(slots, "slots")
        (self.pool if self.pages is None else self.pages).free(slots)
        self._lengths[slots] = 0

    def prefill(self, slots: Sequence[int], token_lists: Sequence[Sequence[int]],
                starts: Sequence[int] | None = None) -> None:
        """Write each token list into its slot from position ``starts[i]`` (default 0: a
        whole prompt replacing the slot's contents). A slot keeps its first ``starts[i]``
        tokens, which the new ones attend to, so a prompt that continues a prefix the slot
        holds (a fork of a row that began the same way) computes only its own tokens.

        Every token of a padded row is computed, so rows and lengths go in fine buckets
        (``bucket_size(fine=True)``), and rows of very different lengths go in separate
        calls when that pads fewer tokens (``length_groups``)."""
        slots = self._checked_slots(slots, "slots")
        starts = np.zeros(len(slots), np.int64) if starts is None else np.asarray(starts,
                                                                                   np.int64)
        if starts.shape != slots.shape or np.any(starts < 0) or np.any(
                starts > self._lengths[slots]):
            raise ValueError(f"starts {starts.tolist()} must give each slot a position in "
                             f"[0, its length] (lengths {self._lengths[slots].tolist()})")
        check_token_lists(token_lists, slots=len(slots), room=self.max_len - starts,
                          vocab_size=self.config.vocab_size)
        groups = length_groups(
            [len(t) for t in token_lists],
            lambda n: min(bucket_size(n, minimum=self.min_prefill_bucket, fine=True),
                          self.max_len),
            lambda members: self._layout(slots[members], fine=True).size)
        for rows, length in groups:
            self._prefill_rows(slots[rows], [token_lists[i] for i in rows], starts[rows],
                               length)

    def _prefill_rows(self, slots: np.ndarray, token_lists: Sequence[Sequence[int]],
                      starts: np.ndarray, length: int) -> None:
        """One prefill call for these slots, each token list padded to ``length`` and
        written from its start."""
        num_tokens = np.array([len(t) for t in token_lists], np.int64)
        layout = self._layout(slots, fine=True)
        packed = pad_token_batch(token_lists, length=length)
        ends = starts + num_tokens
        # Attention reads the positions the rows can see: the call's own T when every row
        # starts at 0 (a whole prompt), else a window bucket over the longest row.
        key_len = length if not starts.any() else self._window(
            int(ends.max()), max(self.min_window_bucket, length))
        self.cache = own_pages(self.pages, self.cache, slots, starts, ends, self._copy_pages)
        self.cache = self._prefill(self._weights, self.cache, layout.place(packed.tokens, 0),
                                   layout.place(packed.lengths, 0),
                                   layout.place(starts.astype(np.int32), 0),
                                   self._local_slots(layout, slots), key_len)
        self._lengths[slots] = ends
        trim_pages(self.pages, slots, self._lengths)

    def fork(self, parents: Sequence[int], children: Sequence[int]) -> None:
        """Make each allocated ``children[i]`` continue exactly from ``parents[i]`` (parents
        may repeat; all are read before any child is written). A child lies on its
        parent's data shard (``allocate(n, near=parents)``)."""
        children = self._checked_slots(children, "children")
        parents = self._checked_slots(parents, "parents", distinct=False, filled=True)
        if len(parents) != len(children):
            raise ValueError(f"fork got {len(parents)} parents for {len(children)} children; "
                             "give one parent per child")
        check_children_beside_parents(self.pool, parents, children)
        layout = self._layout(children)
        if self.pages is not None:  # children share their parents' pages: nothing to copy
            self.cache = fork_pages(self.pages, self.cache, parents, children)
        self.cache = self._fork(self.cache, layout.place(self.pool.local_ids(parents), 0),
                                self._local_slots(layout, children))
        self._lengths[children] = self._lengths[parents]

    def append_token(self, slots: Sequence[int], token: int) -> tuple[np.ndarray, np.ndarray]:
        """Write ``token`` after each slot's tokens, as a step would had it sampled it
        there (a line break where a step reached its token cap). Returns float32 [n] its
        log-probability under each slot's next-token distribution, and float32 [n, E]
        each slot's hidden state after it (its new last hidden state)."""
        slots = self._checked_slots(slots, "slots", filled=True)
        # Rows padded to a power of two (repeating the first), so few shapes compile.
        rows = np.resize(slots, bucket_size(len(slots))).astype(np.int32)
        logprobs = self._rows_logprobs(self._weights, self.cache.last_hidden, rows, token)
        self.prefill(slots, [[token]] * len(slots), self._lengths[slots])
        hidden = self._rows_hidden(self.cache.last_hidden, rows)
        return (np.asarray(logprobs, np.float32)[:len(slots)],
                np.asarray(hidden, np.float32)[:len(slots)])

    def sample_steps(self, slots: Sequence[int], *, problem_keys: jax.Array,
                     node_ids: Sequence[int], params: SamplingParams,
                     max_tokens: int | Sequence[int], newline_ends: bool = True,
                     done: Callable[[int, list[int]], bool] | None = None) -> StepBatch:
        """Extend each slot by one sampled step (until a newline token, EOS, its token cap
        or a full slot, whichever comes first; ``newline_ends=False``: a whole text, which
        a newline does not end). ``done(row, tokens)``: a host check of a row's tokens so
        far (``row`` its index in ``slots``), run between chunks; True ends the row there
        (``EndReason.DONE``; the chunk's tokens past the point the check looks for stay
        sampled).

        problem_keys: [B] typed PRNG keys (``jax.random.key``); node_ids: [B] ints in
        [0, 2**31); together with a token's position they fix its random draw, so a row's
        result does not depend on which rows share the batch. params: SamplingParams [B];
        max_tokens: the token cap, one for all rows or one per row. With ``step_chunk``
        the step runs as chunks that hold only the rows still going (``step_chunks``).
        """
        return step_calls.sample_steps(self, slots, problem_keys=problem_keys,
                                       node_ids=node_ids, params=params,
                                       max_tokens=max_tokens, newline_ends=newline_ends,
                                       done=done)

    def sample_trie(self, slots: Sequence[int], counts: Sequence[int], spares: Sequence[int],
                    *, key_table: jax.Array, key_rows: Sequence[int], group_ids: Sequence[int],
                    params: SamplingParams, max_tokens: int) -> tuple[np.ndarray, TrieOutput]:
        """For group g, ``counts[g]`` independent steps after ``slots[g]``, each distinct
        token prefix computed once (see ``trie_sampler``). Each step ends as in
        ``sample_steps``. With ``step_chunk`` the trie runs as chunks that hold only the
        steps still going and a bounded number of the spares they may split into (a
        chunk that lacks one stops before the round that needs it, and the next one
        holds more: ``trie_chunks``); 0: one call holding every spare (``trie_calls``).

        spares: allocated slots for the steps that split off, ``sum(counts) - len(slots)``
        of them, ``counts[g] - 1`` beside each group's slot (``allocate(n, near=...)``; a
        step's slot is its group's or a spare; unused spares are left as they were).
        Group g draws with ``fold_in(key_table[key_rows[g]], group_ids[g])``;
        key_table: typed PRNG keys (e.g. one per problem, gathered on device); params:
        SamplingParams [G]. Returns (the slot of each row [R], TrieOutput of R = G +
        len(spares) rows on the host, whose ``group`` is -1 for an unused spare).
        On a paged cache each row takes pages as it reaches them, from pages lent to
        each call for what its rows may reach in its rounds (PagePoolExhausted, changing
        nothing, before the trie starts when the pool could not hold every step to its
        cap); afterwards each step's slot holds the pages of its tokens (a spare's full
        ones below its split shared with its parent) and the rest go back.
        """
        return trie_calls.sample_trie(self, slots, counts, spares, key_table=key_table,
                                      key_rows=key_rows, group_ids=group_ids, params=params,
                                      max_tokens=max_tokens)

    def _checked_slots(self, slots, what: str, **kwargs) -> np.ndarray:
        return checked_slots(slots, what, pool=self.pool, lengths=self._lengths, **kwargs)

    def _layout(self, slots: np.ndarray, *, fine: bool = False) -> RowLayout:
        """Where a call's rows go: with their slots' data shards (``fine``: in finer row
        buckets, ``RowLayout.of``)."""
        return RowLayout.of(self.pool.shard_of(slots), shards=self.pool.shards,
                            min_rows=self.min_batch_bucket, fine=fine)

    def _local_slots(self, layout: RowLayout, slots: np.ndarray) -> np.ndarray:
        """Each row's slot within its shard, padding rows marked one past a shard's last."""
        return layout.place(self.pool.local_ids(slots), self.pool.slots_per_shard)

    def compiled(self, name: str, device: jax.Device | None = None) -> jax.stages.Compiled:
        """The jitted ``name`` ("prefill", "fork", "sample_step", "sample_trie" or on pages
        "copy_pages") compiled for its last call's argument shapes and shardings (or all
        on ``device``: ``LastCall.compiled``)."""
        functions = {"prefill": self._prefill, "fork": self._fork,
                     "sample_step": self._sample_step, "sample_trie": self._sample_trie,
                     "copy_pages": self._copy_pages}
        return functions[name].compiled(device)

    def compiled_text(self, name: str, device: jax.Device | None = None) -> str:
        """The optimized HLO of ``compiled(name, device)``: what such a call computes and
        moves between devices."""
        return self.compiled(name, device).as_text()
