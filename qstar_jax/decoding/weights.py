"""The weights the decoder's jitted functions read: the model's state and, on CPU, beside
it a copy of its layer weights split into one state per layer (see
``LlamaModel.__call__``'s ``layers``: looping over separate arrays avoids copying each
layer out of the stacked ones at every token)."""

from __future__ import annotations

from typing import NamedTuple

import jax
from flax import nnx

from qstar_jax.models.llama import LlamaModel, unstack_layers


class DecoderWeights(NamedTuple):
    model: nnx.State  # everything; the embeddings, final norm and LM head are read from it
    layers: list[nnx.State] | None  # layer i's weights without the [L] axis; None: scan

    @classmethod
    def of(cls, model: LlamaModel, *, per_layer: bool | None = None) -> DecoderWeights:
        """``per_layer``: keep the per-layer copy (default: on the CPU backend, where the
        scan's copies were measured to cost more than the matrix products; elsewhere the
        scan is kept, so accelerator memory holds the weights once)."""
        if per_layer is None:
            per_layer = jax.default_backend() == "cpu"
        return cls(model=nnx.state(model), layers=unstack_layers(model) if per_layer else None)
