"""A model's logits by one forward pass over the whole sequence, and greedy decoding by
them: the references the decoder's steps are checked against."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qstar_jax.decoding.kv_cache import init_cache
from qstar_jax.models.llama import LlamaModel
from tests.decoding.tiny_models import RANDOM_MAX_LEN


def full_forward_of(model: LlamaModel):
    """tokens (list) -> (hidden [n, E], logits [n, V]) of ``model`` on the whole sequence
    in one fresh forward pass, with no incremental decoding."""
    graphdef, state = nnx.split(model)
    cfg = model.config

    @jax.jit
    def forward(tokens, positions):
        cache = init_cache(cfg, slots=1, max_len=RANDOM_MAX_LEN)
        merged = nnx.merge(graphdef, state)
        hidden, _, _ = merged(tokens[None], positions[None], jnp.zeros((1,), jnp.int32),
                              cache.k, cache.v)
        return hidden[0], merged.logits(hidden[0])

    def run(tokens):
        n = len(tokens)
        padded = np.zeros(RANDOM_MAX_LEN, np.int32)
        padded[:n] = tokens
        positions = np.where(np.arange(RANDOM_MAX_LEN) < n, np.arange(RANDOM_MAX_LEN),
                             RANDOM_MAX_LEN).astype(np.int32)
        hidden, logits = forward(padded, positions)
        return np.asarray(hidden[:n]), np.asarray(logits[:n])

    return run


def greedy_reference(full_forward, tokens, n):
    """Greedy continuation by re-running the whole sequence each token: (tokens, logprobs,
    hidden after the last one)."""
    tokens, new, logprobs = list(tokens), [], []
    for _ in range(n):
        _, logits = full_forward(tokens)
        log_probs = jax.nn.log_softmax(logits[-1])
        new.append(int(np.argmax(logits[-1])))
        logprobs.append(float(log_probs[new[-1]]))
        tokens.append(new[-1])
    hidden, _ = full_forward(tokens)
    return new, np.array(logprobs), hidden[-1]
