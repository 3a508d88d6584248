"""The weights the decoder's jitted functions read: the model's state and, beside it, a
copy of its layer weights split into one state per layer (see ``LlamaModel.__call__``'s
``layers``: looping over separate arrays avoids copying each layer out of the stacked
ones at every token)."""

from __future__ import annotations

from typing import NamedTuple

from flax import nnx

from qstar_jax.models.llama import LlamaModel, unstack_layers


class DecoderWeights(NamedTuple):
    model: nnx.State  # everything; the embeddings, final norm and LM head are read from it
    layers: list[nnx.State]  # layer i's weights, without the stacked [L] axis

    @classmethod
    def of(cls, model: LlamaModel) -> DecoderWeights:
        return cls(model=nnx.state(model), layers=unstack_layers(model))
