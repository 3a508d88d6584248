"""The scalar Q̂ head on a transformer hidden state, and Q̂ on the policy's own features.

The head maps the hidden state at a step's last token, [E], to one score. Its raw output
is a logit when ``output="sigmoid"`` (value = sigmoid(logit) in [0, 1], trained with BCE
or MSE) and the value itself when ``output="raw"`` (MSE only). An expansion's K candidates
are scored with ``jax.vmap`` over that per-candidate function.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qstar_jax.decoding.token_batch import bucket_size

OUTPUTS = ("sigmoid", "raw")


@dataclasses.dataclass(frozen=True, kw_only=True)
class QHeadConfig:
    hidden_size: int  # E of the backbone whose hidden states the head reads
    mlp_widths: tuple[int, ...] = ()  # widths of hidden GELU layers; () is a linear head
    output: Literal["sigmoid", "raw"] = "sigmoid"

    def __post_init__(self):
        if self.output not in OUTPUTS:
            raise ValueError(f"output={self.output!r}: choose one of {OUTPUTS}")
        if self.hidden_size < 1 or any(w < 1 for w in self.mlp_widths):
            raise ValueError(f"hidden_size={self.hidden_size} and mlp_widths="
                             f"{self.mlp_widths} must be positive")


def to_value(raw: jax.Array, output: str) -> jax.Array:
    """The head's raw output -> Q̂ value (sigmoid of a logit, or the raw value)."""
    return jax.nn.sigmoid(raw) if output == "sigmoid" else raw


class QHead(nnx.Module):
    def __init__(self, config: QHeadConfig, *, rngs: nnx.Rngs):
        self.head_config = config
        widths = (config.hidden_size, *config.mlp_widths)
        self.hidden_layers = nnx.List([nnx.Linear(w_in, w_out, rngs=rngs)
                                       for w_in, w_out in zip(widths[:-1], widths[1:])])
        self.out = nnx.Linear(widths[-1], 1, rngs=rngs)

    def raw_score(self, hidden: jax.Array) -> jax.Array:
        """hidden [E] (any float dtype) -> float32 scalar: a logit, or the raw value."""
        x = hidden.astype(jnp.float32)
        for layer in self.hidden_layers:
            x = jax.nn.gelu(layer(x))
        return self.out(x)[0]

    def raw_scores(self, hiddens: jax.Array) -> jax.Array:
        """Each candidate scored alone: [K, E] -> [K], or [B, K, E] -> [B, K]."""
        if hiddens.ndim not in (2, 3) or hiddens.shape[-1] != self.head_config.hidden_size:
            raise ValueError(f"hidden states must be [K, E] or [B, K, E] with "
                             f"E={self.head_config.hidden_size}, got shape {hiddens.shape}")
        score = jax.vmap(self.raw_score)
        return jax.vmap(score)(hiddens) if hiddens.ndim == 3 else score(hiddens)

    def values(self, hiddens: jax.Array) -> jax.Array:
        """Q̂ values: [K, E] -> [K], or [B, K, E] -> [B, K]."""
        return to_value(self.raw_scores(hiddens), self.head_config.output)


class QHeadModel:
    """Q̂ on the frozen policy's own hidden states, for search: ``score_hidden``.

    The head is split once into (graphdef, params); scoring is one jitted pure function.
    """

    def __init__(self, head: QHead):
        self.head_config = head.head_config
        graphdef, self._params = nnx.split(head)
        self._values = jax.jit(lambda params, hiddens: nnx.merge(graphdef, params).values(hiddens))

    def score_hidden(self, hiddens: np.ndarray | jax.Array) -> np.ndarray:
        """hiddens [N, E] at each candidate step's last token -> Q̂ values [N] (float32)."""
        n = hiddens.shape[0]
        if hiddens.ndim != 2 or hiddens.shape[1] != self.head_config.hidden_size:
            raise ValueError(f"score_hidden takes [N, E={self.head_config.hidden_size}] hidden "
                             f"states, got shape {hiddens.shape}")
        # Padded on the host: an eager op shaped by N would compile once per distinct N.
        hiddens = np.asarray(hiddens)
        padded = np.zeros((bucket_size(n, minimum=8), hiddens.shape[1]), hiddens.dtype)
        padded[:n] = hiddens
        return np.asarray(self._values(self._params, padded), np.float32)[:n]
