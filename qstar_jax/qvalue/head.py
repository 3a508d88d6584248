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
    # The head also reads the step's log-probability under the policy (one more input
    # column, ``head_inputs``): the policy's own confidence in a step is evidence about it
    # that its hidden state at the step's end does not carry.
    step_logprob: bool = False
    # And the step's log-probability under a second policy trained apart (a second
    # opinion: its mistakes are partly not the policy's), as one more column.
    second_opinion: bool = False
    output: Literal["sigmoid", "raw"] = "sigmoid"

    def __post_init__(self):
        if self.output not in OUTPUTS:
            raise ValueError(f"output={self.output!r}: choose one of {OUTPUTS}")
        if self.hidden_size < 1 or any(w < 1 for w in self.mlp_widths):
            raise ValueError(f"hidden_size={self.hidden_size} and mlp_widths="
                             f"{self.mlp_widths} must be positive")


# A log-probability below this says "very unlikely" as well as any lower one; the clip
# keeps the head's input in a range an initialised layer handles.
MIN_STEP_LOGPROB = -30.0
# The column enters as 10 x the log-probability: beside ~100 hidden-state entries of unit
# scale, an unscaled column is learned too weakly. On the arithmetic world's validation
# labels the head's held-out AUC within each step (experiments/label_quality.py) was
# 0.75-0.87 on steps 1-4 unscaled and 0.80-0.88 scaled by 10 (0.2 gave 0.60-0.76).
STEP_LOGPROB_SCALE = 10.0


def head_inputs(hidden: np.ndarray, step_logprob: np.ndarray | None,
                config: QHeadConfig, second_logprob: np.ndarray | None = None) -> np.ndarray:
    """The head's input rows [N, width]: hidden states [N, E], then the steps'
    log-probabilities [N] under the policy and under the second opinion, each as one more
    column (clipped at ``MIN_STEP_LOGPROB``) when the head reads it."""
    columns = [np.asarray(hidden, np.float32)]
    for reads, values, what in ((config.step_logprob, step_logprob, "log-probability"),
                                (config.second_opinion, second_logprob,
                                 "log-probability under the second opinion")):
        if not reads:
            continue
        if values is None:
            raise ValueError(f"this Q̂ head reads each step's {what}, and none was given")
        columns.append(STEP_LOGPROB_SCALE * np.clip(np.asarray(values, np.float32),
                                                    MIN_STEP_LOGPROB, 0.0).reshape(-1, 1))
    return np.concatenate(columns, axis=1) if len(columns) > 1 else columns[0]


def input_width(config: QHeadConfig) -> int:
    return config.hidden_size + int(config.step_logprob) + int(config.second_opinion)


def to_value(raw: jax.Array, output: str) -> jax.Array:
    """The head's raw output -> Q̂ value (sigmoid of a logit, or the raw value)."""
    return jax.nn.sigmoid(raw) if output == "sigmoid" else raw


class QHead(nnx.Module):
    def __init__(self, config: QHeadConfig, *, rngs: nnx.Rngs):
        self.head_config = config
        widths = (input_width(config), *config.mlp_widths)
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
        width = input_width(self.head_config)
        if hiddens.ndim not in (2, 3) or hiddens.shape[-1] != width:
            raise ValueError(f"head inputs must be [K, W] or [B, K, W] with W={width}, got "
                             f"shape {hiddens.shape}")
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
        """hiddens [N, E] at each candidate step's last token -> Q̂ values [N] (float32).
        Any array-like of that shape (a list of rows too)."""
        # On the host: an eager op shaped by N would compile once per distinct N.
        hiddens = np.asarray(hiddens)
        width = input_width(self.head_config)
        if hiddens.ndim != 2 or hiddens.shape[1] != width:
            raise ValueError(f"score_hidden takes [N, W={width}] head inputs (head_inputs), "
                             f"got shape {hiddens.shape}")
        n = hiddens.shape[0]
        padded = np.zeros((bucket_size(n, minimum=8), hiddens.shape[1]), hiddens.dtype)
        padded[:n] = hiddens
        return np.asarray(self._values(self._params, padded), np.float32)[:n]
