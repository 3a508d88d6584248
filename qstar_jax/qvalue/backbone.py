"""Q̂ on a separate, trainable Llama-family backbone: the head reads the backbone's final
hidden state at each sequence's last real token.

Shapes: B sequences, T padded length (right padding), E hidden size, L layers.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qstar_jax.decoding.token_batch import TokenBatch, bucket_size, pad_token_batch
from qstar_jax.models.config import ModelConfig
from qstar_jax.models.llama import LlamaModel
from qstar_jax.qvalue.head import QHead, QHeadConfig, to_value


class BackboneQ(nnx.Module):
    """A ``LlamaModel`` and a ``QHead`` on its last-token hidden state."""

    def __init__(self, model_config: ModelConfig, head_config: QHeadConfig, *,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        if head_config.hidden_size != model_config.hidden_size:
            raise ValueError(f"head_config.hidden_size={head_config.hidden_size} does not match "
                             f"the backbone's hidden_size={model_config.hidden_size}")
        self.backbone = LlamaModel(model_config, dtype=dtype, rngs=rngs)
        self.head = QHead(head_config, rngs=rngs)

    @property
    def head_config(self) -> QHeadConfig:
        return self.head.head_config

    def last_token_hidden(self, batch: TokenBatch) -> jax.Array:
        """[B, T] right-padded tokens -> final hidden state at each row's last real token [B, E].

        One cache-free pass over the whole rows: padding sits after each row's last real
        token, so the causal mask keeps it out of every hidden state read here.
        """
        tokens, lengths = jnp.asarray(batch.tokens), jnp.asarray(batch.lengths)
        hidden = self.backbone.forward_sequence(tokens)
        return hidden[jnp.arange(tokens.shape[0]), jnp.maximum(lengths - 1, 0)]

    def raw_scores(self, batch: TokenBatch) -> jax.Array:
        """[B] float32 logits (or raw values) for the B sequences."""
        return self.head.raw_scores(self.last_token_hidden(batch))


def backbone_update_mask(model: BackboneQ, trainable_layers: int | None) -> dict:
    """Which parameters AdamW may change, as a pytree like the model's Param pure dict.

    Each leaf is a float32 array broadcastable to its parameter: 1 = trainable, 0 =
    frozen. ``None`` trains everything the Q̂ score depends on; ``n`` trains the last n
    of the L stacked layers (rows L-n..L-1 of every layer parameter's leading axis), the
    final norm and the head. The LM head never feeds Q̂, so it is always frozen.
    """
    num_layers = model.backbone.config.num_layers
    if trainable_layers is not None and not 0 <= trainable_layers <= num_layers:
        raise ValueError(f"trainable_layers={trainable_layers} must lie in [0, {num_layers}] "
                         "(or be None to train the whole backbone)")
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    train_all = trainable_layers is None
    rows = np.arange(num_layers) >= num_layers - (trainable_layers or 0)

    def leaf_mask(path, leaf):
        top, part = path[0].key, path[1].key
        if top == "head":
            trainable = True
        elif part == "layers":
            layer_rows = np.ones(num_layers, bool) if train_all else rows
            return layer_rows.astype(np.float32).reshape((num_layers,) + (1,) * (leaf.ndim - 1))
        elif part == "norm":
            trainable = train_all or trainable_layers > 0
        else:  # the embeddings train only with everything; the LM head never does
            trainable = train_all and part == "embed_tokens"
        return np.array(trainable, np.float32)

    return jax.tree_util.tree_map_with_path(leaf_mask, params)


class BackboneQModel:
    """Q̂ on a separate backbone, for search: ``score_texts``.

    Split once into (graphdef, state); rows and length are padded to power-of-two buckets
    so repeated calls reuse a few compiled shapes.
    """

    def __init__(self, model: BackboneQ, *, pad_id: int = 0):
        self.model_config = model.backbone.config
        self._pad_id = pad_id
        graphdef, self._state = nnx.split(model)
        output = model.head_config.output

        def values(state, tokens, lengths):
            scorer = nnx.merge(graphdef, state)
            return to_value(scorer.raw_scores(TokenBatch(tokens, lengths)), output)

        self._values = jax.jit(values)

    def score_texts(self, token_id_lists: Sequence[Sequence[int]], *,
                    keep_last: bool = False) -> np.ndarray:
        """Token ids of each (question ⊕ steps so far ⊕ candidate step) -> Q̂ values [N].

        A sequence longer than the backbone's max_position_embeddings is an error, or with
        ``keep_last`` is scored on its last max_position_embeddings tokens (search can grow
        a path past what the Q̂ backbone was built for; its latest steps matter most).
        """
        limit = self.model_config.max_position_embeddings
        if keep_last:
            token_id_lists = [ids[-limit:] for ids in token_id_lists]
        n = len(token_id_lists)
        longest = max((len(ids) for ids in token_id_lists), default=0)
        if longest > limit:
            raise ValueError(f"a sequence of {longest} tokens exceeds the Q̂ backbone's "
                             f"max_position_embeddings={limit}; shorten it, or pass "
                             "keep_last=True to score its last tokens")
        batch = pad_token_batch(token_id_lists, pad_id=self._pad_id, batch=bucket_size(n))
        return np.asarray(self._values(self._state, batch.tokens, batch.lengths)[:n], np.float32)
