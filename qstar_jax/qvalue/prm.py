"""A Math-Shepherd style process reward model over our ``LlamaModel``.

The PRM reads ``question Step 1: step_1 TAG\\nStep 2: step_2 TAG ...``, as Math-Shepherd's
training data and its model card's example number the steps, and, at the last step tag,
the probability of the "good" token against the "bad" one (a softmax over those two
logits) is the probability that the latest step is good.

Shapes: B rows (padded to a power of two), T tokens (padded to a power of two), E hidden.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qstar_jax.decoding.kv_cache import init_cache
from qstar_jax.decoding.token_batch import bucket_size, last_positions, pad_token_batch
from qstar_jax.models.llama import LlamaModel
from qstar_jax.qvalue.scorers import ForwardTokens
from qstar_jax.search.interface import QItem


def shepherd_text(question: str, steps: Sequence[str], step_tag: str) -> str:
    """The PRM's input: the question, then each step numbered ("Step 1: ") and followed by
    the tag, one per line, each step's own line breaks and edge spaces aside (the tag
    closes a line of Math-Shepherd's data)."""
    return f"{question} " + "\n".join(
        f"Step {number}: {' '.join(step.split())} {step_tag}"
        for number, step in enumerate(steps, start=1))


class ShepherdPRM:
    """``ProcessRewardModel`` reading the good/bad token at the latest step tag.

    ``encode`` turns text into token ids (BOS included if the model wants one; nothing
    after the text, so the last token is the tag's). ``question(problem_index)`` gives
    the question text of a problem. The forward pass is one ``jax.jit`` of a pure
    function of the model state, compiled once per (B, T) bucket, over each item's whole
    text, uncached: ``forward_tokens`` counts those tokens per problem.
    """

    def __init__(self, model: LlamaModel, *, encode: Callable[[str], list[int]],
                 question: Callable[[int], str], step_tag: str, good_token_id: int,
                 bad_token_id: int):
        vocab = model.config.vocab_size
        for name, token in (("good_token_id", good_token_id), ("bad_token_id", bad_token_id)):
            if not 0 <= token < vocab:
                raise ValueError(f"{name}={token} is outside the model's vocabulary [0, {vocab})")
        graphdef, self._state = nnx.split(model)
        self._encode, self._question, self._step_tag = encode, question, step_tag
        self.forward_tokens = ForwardTokens()
        self._good_probability = jax.jit(
            functools.partial(_good_probability, graphdef, good_token_id, bad_token_id))

    def score_steps(self, items: Sequence[QItem]) -> np.ndarray:
        """float [len(items)]: P(good) at the tag after each item's step."""
        if not items:
            return np.zeros(0, np.float64)
        rows = [self._encode(shepherd_text(self._question(item.problem_index),
                                           item.prefix_steps + (item.step_text,),
                                           self._step_tag))
                for item in items]
        if any(not row for row in rows):
            raise ValueError("encode() returned no tokens for a PRM input")
        self.forward_tokens.add([item.problem_index for item in items], rows)
        batch = pad_token_batch(rows, batch=bucket_size(len(rows)), min_length=1)
        length = batch.tokens.shape[1]
        steps = np.arange(length)
        # A position >= the cache's length (here the row length) marks a padding token.
        positions = np.where(steps < batch.lengths[:, None], steps, length).astype(np.int32)
        probs = self._good_probability(self._state, batch.tokens, positions,
                                       last_positions(batch))
        return np.asarray(probs[:len(rows)], np.float64)


def _good_probability(graphdef, good_token_id, bad_token_id, state, tokens, positions, last):
    """tokens, positions: [B, T]; last: [B] index of each row's tag -> P(good) [B]."""
    model = nnx.merge(graphdef, state)
    batch, length = tokens.shape
    cache = init_cache(model.config, slots=batch, max_len=length,
                       dtype=model.embed_tokens.embedding[...].dtype)
    hidden, _, _ = model(tokens, positions, jnp.arange(batch, dtype=jnp.int32), cache.k,
                         cache.v)
    at_tag = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]  # [B, E]
    logits = model.logits(at_tag)
    pair = jnp.stack([logits[:, good_token_id], logits[:, bad_token_id]], axis=-1)
    return jax.nn.softmax(pair, axis=-1)[:, 0]

