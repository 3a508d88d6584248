"""Token sampling as pure functions with per-row parameters.

Shapes: B rows, V vocabulary.

The logits are transformed in the order HF ``generate`` and vLLM use: temperature, then
top-k, then top-p (the nucleus is taken over the temperature-scaled, top-k-filtered
distribution).

Tokens tied at a threshold are all kept. At top-k this is HF's rule: every token whose
logit equals the k-th largest stays, so a tie may keep more than k. At top-p it is not:
the nucleus is the fewest most likely tokens whose mass reaches top_p, and every token
whose logit equals that of the nucleus's least likely token stays beside them, so the kept
mass may pass top_p by a whole tie. HF's ``TopPLogitsWarper`` cuts inside the tie instead,
keeping only as many of the tied tokens as the mass needs (which ones, by its sort order):
on logits [2, 2, 2, 2, 1] at top_p 0.5 it keeps tokens 1, 2 and 3, where we keep tokens 0
to 3 (``filtered_logits`` shows it).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["temperature", "top_k", "top_p"], meta_fields=[])
@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """Per-row sampling settings, each a [B] array (``make`` builds them from scalars or
    lists; ``check`` refuses anything else).

    temperature: float32, 0 means greedy (argmax; top-k and top-p are then ignored).
    top_k: int32, 0 means off. top_p: float32 in (0, 1], 1 means off.
    """

    temperature: jax.Array | np.ndarray
    top_k: jax.Array | np.ndarray
    top_p: jax.Array | np.ndarray

    @classmethod
    def make(cls, batch: int, *, temperature=0.0, top_k=0, top_p=1.0) -> "SamplingParams":
        """Host-side params for ``batch`` rows; each setting is a scalar or a [batch] list."""
        def per_row(value, dtype):
            value = np.asarray(value, dtype)
            return np.full((batch,), value) if value.ndim == 0 else value

        params = cls(temperature=per_row(temperature, np.float32), top_k=per_row(top_k, np.int32),
                     top_p=per_row(top_p, np.float32))
        params.check(batch)
        return params

    def check(self, batch: int) -> None:
        """Raise ValueError unless these are valid host-side params for ``batch`` rows."""
        for name in ("temperature", "top_k", "top_p"):
            value = getattr(self, name)
            if not isinstance(value, (np.ndarray, jax.Array)):
                raise ValueError(f"SamplingParams.{name} must be an array, got "
                                 f"{type(value).__name__}; SamplingParams.make takes scalars "
                                 "and lists")
            shape = np.shape(value)
            if shape != (batch,):
                raise ValueError(f"SamplingParams.{name} has shape {shape}, expected ({batch},) "
                                 "— one entry per row; SamplingParams.make broadcasts scalars")
        temperature, top_k, top_p = (np.asarray(self.temperature), np.asarray(self.top_k),
                                     np.asarray(self.top_p))
        if not np.all(np.isfinite(temperature) & (temperature >= 0)):
            raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {temperature}")
        if np.any(top_k < 0):
            raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
        if not np.all((top_p > 0) & (top_p <= 1)):
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")


def filtered_logits(logits: jax.Array, params: SamplingParams) -> jax.Array:
    """Temperature-scaled logits [B, V] float32 with tokens outside top-k / top-p at -inf.

    Greedy rows (temperature 0) are returned unscaled and unfiltered. A tie at the top-p
    threshold is kept whole (the module's docstring says how HF differs):

    >>> params = SamplingParams.make(1, temperature=1.0, top_p=0.5)
    >>> kept = filtered_logits(jnp.array([[2.0, 2.0, 2.0, 2.0, 1.0]]), params) > -jnp.inf
    >>> kept.astype(int).tolist()
    [[1, 1, 1, 1, 0]]
    """
    scaled = temperature_scaled_logits(logits, params)
    ranked = -jnp.sort(-scaled, axis=-1)  # descending
    vocab = logits.shape[-1]
    k = jnp.where(params.top_k > 0, jnp.minimum(params.top_k, vocab), vocab)
    kth_value = jnp.take_along_axis(ranked, (k - 1)[:, None], axis=-1)  # [B, 1]
    ranked = jnp.where(ranked >= kth_value, ranked, -jnp.inf)
    probs = jax.nn.softmax(ranked, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # The nucleus: the most likely tokens until their mass reaches top_p (at least one).
    in_nucleus = (mass_before < params.top_p[:, None]) | (params.top_p[:, None] >= 1.0)
    in_nucleus &= ranked > -jnp.inf
    num_kept = jnp.maximum(jnp.sum(in_nucleus, axis=-1), 1)
    cutoff = jnp.take_along_axis(ranked, (num_kept - 1)[:, None], axis=-1)
    filtered = jnp.where(scaled >= cutoff, scaled, -jnp.inf)
    return jnp.where((params.temperature == 0)[:, None], scaled, filtered)


def temperature_scaled_logits(logits: jax.Array, params: SamplingParams) -> jax.Array:
    """The logits [B, V] float32 divided by each row's temperature (greedy rows, at 0, by
    1: unchanged): what ``filtered_logits`` filters, and all it returns for rows that
    filter nothing (top_k 0, top_p 1)."""
    greedy = params.temperature == 0
    return logits.astype(jnp.float32) / jnp.where(greedy, 1.0, params.temperature)[:, None]


def sample(logits: jax.Array, keys: jax.Array, params: SamplingParams):
    """Draw one token per row.

    logits: [B, V]; keys: [B] typed PRNG keys, one per row.
    Returns (tokens [B] int32, logprobs [B] float32), where a logprob is the log-probability
    of the chosen token under the model's unmodified distribution ``log_softmax(logits)``
    (no temperature, no top-k/top-p renormalisation): the quantity a search scores paths by.
    """
    logits = logits.astype(jnp.float32)
    greedy_tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def draw(_):
        # Sorting the vocabulary for top-k/top-p is the costly part (on CPU it took half a
        # SmolLM2 token step at 16 rows, ``experiments/profile_decode.py``). Where no
        # sampled row filters, it keeps every finite logit: the logits are only scaled,
        # exactly as ``filtered_logits`` would leave them.
        filters = (params.temperature > 0) & ((params.top_k > 0) | (params.top_p < 1))
        perturbed = jax.lax.cond(jnp.any(filters), gumbel_perturbed(filtered_logits),
                                 gumbel_perturbed(temperature_scaled_logits), logits, params,
                                 keys)
        drawn = jnp.argmax(perturbed, axis=-1).astype(jnp.int32)
        return jnp.where(params.temperature == 0, greedy_tokens, drawn)

    # Every row greedy: no draw at all.
    tokens = jax.lax.cond(jnp.all(params.temperature == 0), lambda _: greedy_tokens, draw, None)
    logprobs = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, None],
                                   axis=-1)[:, 0]
    return tokens, logprobs


def gumbel_perturbed(candidates):
    """``candidates(logits, params)`` [B, V] plus each row's Gumbel noise from its key:
    what ``jax.random.categorical`` takes the argmax of (the same noise, added the same
    way), so the argmax is the token it would draw. Returned from a ``lax.cond`` branch,
    the sum is computed in a fusion of its own: left to ``categorical``, XLA:CPU fused
    the noise's two logarithms into the argmax's reduction, which evaluates them a
    scalar at a time (64 rows of SmolLM2's 49,152 logits: 76 ms a draw, 43 ms so)."""
    def perturbed(logits: jax.Array, params: SamplingParams, keys: jax.Array) -> jax.Array:
        noise = jax.vmap(lambda key: jax.random.gumbel(key, logits.shape[-1:], jnp.float32))
        return noise(keys) + candidates(logits, params)

    return perturbed
