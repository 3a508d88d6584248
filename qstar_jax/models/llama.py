"""The Llama-family decoder as Flax NNX modules, attending through a KV slot pool.

Shapes: B rows, T new tokens per row, S cache slots, M = max cache length, L layers,
H query heads, K kv heads, D head_dim, E hidden size, V vocab.

A forward call writes the new tokens' keys and values into the cache at
``cache[layer, slot[b], :, position[b, t]]`` and lets every query attend to the entries of
its slot at positions ``<= position`` (and inside the sliding window). Rows with a
position of ``M`` or more are padding: their writes are dropped, their outputs ignored.
A caller that knows no query of the call stands at ``key_len`` or beyond passes that
static bound, and attention reads only positions ``< key_len`` of each row instead of all
``M``: what it computes is the same (the positions left out are masked), what it reads
is less (``Decoder`` picks the bound from its rows' lengths).
The layers are stacked and run under ``jax.lax.scan`` so compile time does not grow
with depth.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from qstar_jax.models.cache_pages import PagedRows
from qstar_jax.models.config import ModelConfig
from qstar_jax.models.row_linear import RowLinear
from qstar_jax.models.row_windows import RowWindows
from qstar_jax.models.shared_prefix import SharedPrefixRows, write_slot_rows
from qstar_kernels import rows_product
from qstar_kernels.row_products_reference import finish_products, rms_normalise


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, dtype, rngs: nnx.Rngs):
        del rngs
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = eps

    def __call__(self, x):
        return rms_normalise(x, self.weight[...], self.eps)


def _linear(n_in, n_out, bias, dtype, rngs):
    return nnx.Linear(n_in, n_out, use_bias=bias, dtype=dtype, param_dtype=dtype, rngs=rngs,
                      kernel_init=nnx.initializers.normal(0.02))


def rotate_half_rope(x, positions, inv_freq):
    """x: [B, T, heads, D]; positions: [B, T]; inv_freq: [D // 2]."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, D/2]
    cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None, :]
    sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None, :]
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], -1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        e, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = _linear(e, cfg.num_heads * d, cfg.attention_bias, dtype, rngs)
        self.k_proj = _linear(e, cfg.num_kv_heads * d, cfg.attention_bias, dtype, rngs)
        self.v_proj = _linear(e, cfg.num_kv_heads * d, cfg.attention_bias, dtype, rngs)
        self.o_proj = _linear(cfg.num_heads * d, e, cfg.attention_out_bias, dtype, rngs)
        # q, k and v as one: set in a transposed copy (unstack_layers), None otherwise
        self.qkv_proj: RowLinear | None = nnx.data(None)
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, d
        self.window = cfg.uniform_sliding_window
        self.scale = cfg.attention_scale

    def __call__(self, x, positions, slots, cache_k, cache_v, layer, inv_freq, key_len=None):
        """x: [B, T, E]; cache_k/v: [L, S, K, M, D]; layer: this layer's index. For a
        paged cache, ``slots`` is the rows' PagedRows and cache_k/v are [L, P, K, S, D].
        key_len: static, every real query's position is below it: attend over cache
        positions [0, key_len) only (None: all M).

        Returns (out, cache_k, cache_v). The cache travels whole so XLA updates it in place.
        With ``cache_k is None`` the rows attend only to their own T tokens (training).
        """
        q, k, v = self._project_qkv(x)
        out, cache_k, cache_v = self.attend(q, k, v, positions, slots, cache_k, cache_v, layer,
                                            inv_freq, key_len)
        return self.o_proj(out), cache_k, cache_v

    def attend(self, q, k, v, positions, slots, cache_k, cache_v, layer, inv_freq,
               key_len=None):
        """The attention between the projections: q [B, T, H * D], k and v [B, T, K * D],
        before RoPE -> (the heads' outputs [B, T, H * D], cache_k, cache_v), as
        ``__call__`` says."""
        b, t, _ = q.shape
        q = q.reshape(b, t, self.num_heads, self.head_dim)
        k = k.reshape(b, t, self.num_kv_heads, self.head_dim)
        v = v.reshape(b, t, self.num_kv_heads, self.head_dim)
        q = rotate_half_rope(q, positions, inv_freq)
        k = rotate_half_rope(k, positions, inv_freq)
        if cache_k is None:
            keys, values = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, D]
            key_pos = positions  # [B, T]
        elif isinstance(slots, SharedPrefixRows):  # a trie round: one token per row
            cache_k = slots.write(cache_k, layer, k, positions)
            cache_v = slots.write(cache_v, layer, v, positions)
            out = slots.attend_one_token(q, cache_k, cache_v, layer, positions, self.scale)
            return out.reshape(b, t, -1), cache_k, cache_v
        elif isinstance(slots, RowWindows):  # a step loop's copy: one token per row
            cache_k, cache_v, keys, values = slots.write(cache_k, cache_v, layer, k, v,
                                                         positions)
            key_pos = jnp.arange(values.shape[2])[None, :]
            out = self._attend_one_token(self._grouped(q), keys, values, positions, key_pos,
                                         keys_transposed=True)
            return out.reshape(b, t, -1), cache_k, cache_v
        elif isinstance(slots, PagedRows):
            cache_k = slots.write(cache_k, layer, k, positions)
            cache_v = slots.write(cache_v, layer, v, positions)
            if t == 1 and slots.uses_kernel():
                out = slots.attend_one_token(q, cache_k, cache_v, layer, positions, self.window,
                                             self.scale)
                return out.reshape(b, t, -1), cache_k, cache_v
            keys = slots.gather(cache_k, layer, key_len)
            values = slots.gather(cache_v, layer, key_len)
            key_pos = jnp.arange(keys.shape[2])[None, :]  # [1, N * S]
        else:
            cache_k = write_slot_rows(cache_k, layer, slots, k, positions)
            cache_v = write_slot_rows(cache_v, layer, slots, v, positions)
            # Only the window of positions a query can see: the gather copies [B, K, W, D]
            # per layer and token, and the attention reads it, rather than whole rows.
            window = cache_k.shape[3] if key_len is None else min(key_len, cache_k.shape[3])
            keys = cache_k[layer, slots, :, :window]  # [B, K, W, D]
            values = cache_v[layer, slots, :, :window]
            key_pos = jnp.arange(window)[None, :]  # [1, W]
        out = self.attend_keys(q, keys, values, positions, key_pos)
        return out.reshape(b, t, -1), cache_k, cache_v

    def _project_qkv(self, x):
        if self.qkv_proj is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return jnp.split(self.qkv_proj(x), self.qkv_split(), axis=-1)

    def qkv_split(self) -> list[int]:
        """Where q ends and k ends in the fused q/k/v outputs."""
        q_width, kv_width = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return [q_width, q_width + kv_width]

    def attend_keys(self, q, keys, values, positions, key_pos):
        """Queries at ``positions`` [B, T] over keys at ``key_pos``, causal (and windowed
        where the model is): q [B, T, H, D]; keys/values [B, K, M, D]; key_pos [B or 1, M]
        -> [B, T, H, D]. Public for the experiments that attend over keys they gather."""
        b, t = positions.shape
        q = self._grouped(q)
        if t == 1:
            return self._attend_one_token(q, keys, values, positions, key_pos)
        scores = jnp.einsum("btkgd,bkmd->bkgtm", q, keys,
                            preferred_element_type=jnp.float32) * self.scale
        visible = key_pos[:, None, :] <= positions[:, :, None]  # [B, T, M]
        if self.window is not None:
            visible &= key_pos[:, None, :] > positions[:, :, None] - self.window
        scores = jnp.where(visible[:, None, None], scores, jnp.finfo(jnp.float32).min)
        # The weighted sum in float32 too, as the decode step does. With bfloat16
        # probabilities and values its result hung on XLA's version: over a cached window
        # a two-layer model's logits drifted 0.10 from float32's on JAX 0.11.2's XLA:CPU
        # and 0.04 on 0.10.2; in float32 both drift 0.04 (docs/gpu_tpu.md).
        probs = jax.nn.softmax(scores, axis=-1)
        return jnp.einsum("bkgtm,bkmd->btkgd", probs,
                          values.astype(jnp.float32)).astype(values.dtype)

    def _grouped(self, q):
        """q [B, T, H, D] -> [B, T, K, G, D]: each kv head's G query heads."""
        b, t = q.shape[:2]
        groups = self.num_heads // self.num_kv_heads
        return q.reshape(b, t, self.num_kv_heads, groups, self.head_dim)

    def _attend_one_token(self, q, keys, values, positions, key_pos, keys_transposed=False):
        """The decode step (T = 1) as multiply-and-reduce: q [B, 1, K, G, D] -> [B, 1, H, D].

        For one query per row the einsums above lower to B·K tiny matrix products, which
        XLA's CPU backend runs at a fraction of the bandwidth of a fused elementwise
        product summed over D (``experiments/decode_step_breakdown.py``: a batch-32
        SmolLM2 token drops from 123 to 110 ms). The arithmetic is the same, in float32
        whatever the cache dtype. Transposed keys [B, K, D, M] sum over D as their
        second-minor axis (``row_windows``).
        """
        f32 = jnp.float32
        if keys_transposed:
            scores = (q[:, 0, :, :, :, None].astype(f32)
                      * keys[:, :, None].astype(f32)).sum(-2) * self.scale  # [B, K, G, M]
        else:
            scores = (q[:, 0, :, :, None, :].astype(f32)
                      * keys[:, :, None].astype(f32)).sum(-1) * self.scale
        visible = key_pos <= positions  # [B, M]
        if self.window is not None:
            visible &= key_pos > positions - self.window
        scores = jnp.where(visible[:, None, None], scores, jnp.finfo(f32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        out = (probs[..., None] * values[:, :, None].astype(f32)).sum(-2)  # [B, K, G, D]
        return out.astype(values.dtype)[:, None]


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        e, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = _linear(e, f, cfg.mlp_bias, dtype, rngs)
        self.up_proj = _linear(e, f, cfg.mlp_bias, dtype, rngs)
        self.down_proj = _linear(f, e, cfg.mlp_bias, dtype, rngs)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.self_attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype,
                                                rngs=rngs)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)
        # Set in a copy whose products all run over rows (unstack_layers(row_kernels=...)):
        # the qstar_kernels.rows_product implementation its calls ask for; None otherwise.
        self.row_kernels: str | None = None

    def __call__(self, x, positions, slots, cache_k, cache_v, layer, inv_freq, key_len=None):
        if self.row_kernels is not None:
            return self._call_on_rows(x, positions, slots, cache_k, cache_v, layer, inv_freq,
                                      key_len)
        attn, cache_k, cache_v = self.self_attn(self.input_layernorm(x), positions, slots,
                                                cache_k, cache_v, layer, inv_freq, key_len)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), cache_k, cache_v

    def _call_on_rows(self, x, positions, slots, cache_k, cache_v, layer, inv_freq, key_len):
        """The same layer with its norms, products, SiLU and residuals as four
        ``rows_product`` calls on the tokens [B * T, E]: on a GPU and a few tokens, four
        Pallas kernels (``qstar_kernels/row_products_gpu.py``). A decode step on pages
        read by the GPU's attention kernel takes the first with RoPE and the cache writes
        as one kernel (``PagedRows.project_write_attend``), and the output projection reads
        the attention kernel's padded rows as they are (``x_segments``). With MLP biases
        (Llama's mlp_bias) the gate and up products take theirs ungated, and the SiLU
        gating runs after the call."""
        b, t, e = x.shape
        attention, mlp = self.self_attn, self.mlp
        rows = functools.partial(rows_product, implementation=self.row_kernels)
        norm, post_norm = self.input_layernorm, self.post_attention_layernorm
        x = x.reshape(b * t, e)
        fused = (isinstance(slots, PagedRows) and t == 1
                 and slots.fused_qkv_implementation(self.row_kernels, b, attention.head_dim))
        if fused:  # q/k/v, RoPE and the cache writes in one kernel, then the attention's
            out, segments, cache_k, cache_v = slots.project_write_attend(
                x, norm.weight[...], norm.eps, attention.qkv_proj.rows[...],
                RowLinear.bias_of(attention.qkv_proj), cache_k, cache_v, layer, positions,
                inv_freq, num_heads=attention.num_heads, window=attention.window,
                scale=attention.scale, implementation=fused)
        else:
            qkv = rows(x, attention.qkv_proj.rows[...], norm_weight=norm.weight[...],
                       eps=norm.eps, bias=RowLinear.bias_of(attention.qkv_proj))
            q, k, v = jnp.split(qkv.reshape(b, t, -1), attention.qkv_split(), axis=-1)
            out, cache_k, cache_v = attention.attend(q, k, v, positions, slots, cache_k,
                                                     cache_v, layer, inv_freq, key_len)
            out, segments = out.reshape(b * t, -1), None
        x = rows(out, attention.o_proj.rows[...], residual=x, x_segments=segments,
                 bias=RowLinear.bias_of(attention.o_proj))
        gate_up_bias = RowLinear.bias_of(mlp.gate_up_proj)
        hidden = rows(x, mlp.gate_up_proj.rows[...], norm_weight=post_norm.weight[...],
                      eps=post_norm.eps, gated=gate_up_bias is None, bias=gate_up_bias)
        if gate_up_bias is not None:  # a gated call adds no bias: the gating after it
            gate, up = jnp.split(hidden, 2, axis=-1)
            hidden = finish_products(gate, hidden.dtype, up=up)
        x = rows(hidden, mlp.down_proj.rows[...], residual=x,
                 bias=RowLinear.bias_of(mlp.down_proj))
        return x.reshape(b, t, e), cache_k, cache_v


class LlamaModel(nnx.Module):
    """Embedding, a scanned stack of decoder layers, the final norm and the LM head."""

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype,
                                      param_dtype=dtype, rngs=rngs,
                                      embedding_init=nnx.initializers.normal(0.02))

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_layers(layer_rngs):
            return DecoderLayer(cfg, dtype=dtype, rngs=layer_rngs)

        self.layers = make_layers(rngs)  # every parameter has a leading [L] axis
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.lm_head = (None if cfg.tie_word_embeddings
                        else _linear(cfg.hidden_size, cfg.vocab_size, False, dtype, rngs))
        self.inv_freq = nnx.Variable(jnp.asarray(cfg.rope_inv_freq()))

    def __call__(self, tokens, positions, slots, cache_k, cache_v, *,
                 layers: Sequence[nnx.State] | None = None,
                 layer_def: nnx.GraphDef | None = None, key_len: int | None = None,
                 unroll: bool = False):
        """tokens, positions: [B, T] int32; slots: [B] int32; cache_k/v: [L, S, K, M, D].

        ``layers``: the layer weights one state per layer (``unstack_layers``), run in a
        Python loop instead of scanned over the stacked weights. A scan slices every
        layer's weights out of the stacked arrays, which XLA's CPU backend does by copying
        them: at batch 1 that costs more than the matrix products
        (``experiments/decode_step_breakdown.py``). The decoder passes them on CPU.
        ``layer_def``: the graph those states fill (``unstack_layers``' first result;
        None: the stacked layers', which a copy of the same structure shares).

        ``key_len``: static; every row's real positions are below it, so attention reads
        cache positions [0, key_len) only (None: all M). A row at position ``M`` or more
        is padding as always, whatever ``key_len``.

        ``unroll``: without ``layers``, unroll the scan, so each layer's slice of the stacked
        weights is at a constant index.

        Returns (hidden [B, T, E] after the final norm, cache_k, cache_v).
        """
        x = self.embed_tokens(tokens)
        inv_freq = self.inv_freq[...]
        if layers is not None:
            if layer_def is None:
                layer_def = nnx.graphdef(self.layers)
            for index, state in enumerate(layers):
                x, cache_k, cache_v = nnx.merge(layer_def, state)(
                    x, positions, slots, cache_k, cache_v, index, inv_freq, key_len)
            return self.norm(x), cache_k, cache_v
        layer_def, layer_state = nnx.split(self.layers)

        def one_layer(carry, per_layer):
            x, cache_k, cache_v = carry
            state, index = per_layer
            layer = nnx.merge(layer_def, state)
            return layer(x, positions, slots, cache_k, cache_v, index, inv_freq,
                         key_len), None

        indices = jnp.arange(self.config.num_layers)
        (x, cache_k, cache_v), _ = jax.lax.scan(one_layer, (x, cache_k, cache_v),
                                                (layer_state, indices), unroll=unroll)
        return self.norm(x), cache_k, cache_v

    def forward_sequence(self, tokens):
        """Whole sequences without a KV cache (training): tokens [B, T] -> hidden [B, T, E]."""
        b, t = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        layer_def, layer_state = nnx.split(self.layers)
        inv_freq = self.inv_freq[...]

        def one_layer(x, state):
            layer = nnx.merge(layer_def, state)
            x, _, _ = layer(x, positions, None, None, None, None, inv_freq)
            return x, None

        x, _ = jax.lax.scan(one_layer, self.embed_tokens(tokens), layer_state)
        return self.norm(x)

    def logits(self, hidden):
        """hidden: [..., E] -> float32 logits [..., V]."""
        if self.lm_head is None:
            return self.embed_tokens.attend(hidden).astype(jnp.float32)
        return self.lm_head(hidden).astype(jnp.float32)


def unstack_layers(model: LlamaModel, transpose_projections: bool = False,
                   row_kernels: str | None = None) -> tuple[nnx.GraphDef, list[nnx.State]]:
    """A copy of the model's stacked layer weights as one state per layer, and the graph
    they fill (``layer_def=`` and ``layers=`` of ``LlamaModel.__call__``).

    transpose_projections: hold each layer's q, k and v projections as one ``RowLinear``
    and its output projection as another, [out, in], instead of ``nnx.Linear``'s [in, out]
    (the same products; see ``RowLinear`` for why a GPU may want them so).
    row_kernels: hold the MLP's products as rows too (gate and up as one), and run each
    layer's norms, products, SiLU and residuals through ``qstar_kernels.rows_product``
    with this implementation ("auto", "pallas" or "jnp"); implies transposed projections.
    """
    stacked_def, stacked = nnx.split(model.layers)
    layer_def, states = stacked_def, []
    for index in range(model.config.num_layers):
        state = jax.tree.map(lambda x: x[index], stacked)
        if transpose_projections or row_kernels is not None:
            # layer by layer: its untransposed slices go at once
            layer = nnx.merge(stacked_def, state)
            attention = layer.self_attn
            attention.qkv_proj = RowLinear.of(attention.q_proj, attention.k_proj,
                                              attention.v_proj)
            attention.o_proj = RowLinear.of(attention.o_proj)
            del attention.q_proj, attention.k_proj, attention.v_proj
            if row_kernels is not None:
                mlp = layer.mlp
                mlp.gate_up_proj = RowLinear.of(mlp.gate_proj, mlp.up_proj)
                mlp.down_proj = RowLinear.of(mlp.down_proj)
                del mlp.gate_proj, mlp.up_proj
                layer.row_kernels = row_kernels
            layer_def, state = nnx.split(layer)
        states.append(state)
    return layer_def, states
