"""Running a LlamaModel in tests: a jitted forward over (graphdef, state) and a greedy loop.

The real decoder lives in qstar_jax.decoding; these helpers only need a cache and a call.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qstar_jax.decoding.kv_cache import init_cache
from qstar_jax.models import LlamaModel


def empty_cache(model: LlamaModel, *, slots: int, max_len: int):
    """Zeroed (cache_k, cache_v) in the model's dtype (``init_cache``'s layout)."""
    cache = init_cache(model.config, slots=slots, max_len=max_len,
                       dtype=model.embed_tokens.embedding.get_value().dtype)
    return cache.k, cache.v


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, tokens, positions, slots, cache_k, cache_v):
    model = nnx.merge(graphdef, state)
    hidden, cache_k, cache_v = model(tokens, positions, slots, cache_k, cache_v)
    return model.logits(hidden), cache_k, cache_v


def forward(model: LlamaModel, tokens, positions, slots, cache):
    """tokens, positions [B, T]; slots [B]; returns (float32 logits [B, T, V] numpy, cache)."""
    graphdef, state = nnx.split(model)
    logits, cache_k, cache_v = _forward(graphdef, state, jnp.asarray(tokens, jnp.int32),
                                        jnp.asarray(positions, jnp.int32),
                                        jnp.asarray(slots, jnp.int32), *cache)
    return np.asarray(logits), (cache_k, cache_v)


def sequence_logits(model: LlamaModel, token_ids, *, max_len: int | None = None) -> np.ndarray:
    """Logits [T, V] of one sequence, prefilled in one call into a cache of ``max_len``."""
    n = len(token_ids)
    logits, _ = forward(model, [token_ids], [list(range(n))], [0],
                        empty_cache(model, slots=1, max_len=max_len or n))
    return logits[0]


def greedy_generate(model: LlamaModel, prompt_ids, *, new_tokens: int,
                    eos_ids=()) -> list[int]:
    """Greedy continuation of ``prompt_ids``: prefill once, then one token per call."""
    cache = empty_cache(model, slots=1, max_len=len(prompt_ids) + new_tokens)
    logits, cache = forward(model, [prompt_ids], [list(range(len(prompt_ids)))], [0], cache)
    generated = [int(np.argmax(logits[0, -1]))]
    while len(generated) < new_tokens and generated[-1] not in eos_ids:
        position = len(prompt_ids) + len(generated) - 1
        logits, cache = forward(model, [[generated[-1]]], [[position]], [0], cache)
        generated.append(int(np.argmax(logits[0, -1])))
    return generated
