"""The weights the decoder's jitted functions read, and how its token loops read the
layers' weights (``LAYER_WEIGHTS``).

``LlamaModel`` stacks every layer's weights on a leading [L] axis and scans over them. A
scan slices each layer's weights out of the stacked arrays, and XLA's CPU and GPU
backends do that by copying them, at every token (XLA:TPU's program, compiled here for a
v5e, reads them in place): on the CPU the copies cost more than a batch-1 step's matrix
products (``experiments/decode_step_breakdown.py``), and on an H200
they held a 1B model's bfloat16 decode to 26% of the memory roofline, against 43% reading
one array per layer (docs/gpu_tpu.md). So the token loops read a copy of the
weights split per layer there, at the cost of holding the layers' weights twice. A
prefill reads that copy too on a GPU, and keeps the scan on a CPU
(``DecoderWeights.prefill_layer_arguments``). The copy may hold the attention's
projections transposed (``per-layer-transposed``, ``RowLinear``): the same products,
laid out for the reductions XLA:GPU makes of batch-1 ones, each then one kernel reading
its weights once (compiled for an H200 here, ``experiments/device_program.py``; not yet
timed on one); "auto" holds it so on a GPU. On a CPU "auto" holds every product of the
copy as rows, [out, in], the MLP's gate and up as one (``per-layer-kernels``, run by the
row kernels' ``jnp`` path there): XLA:CPU's products over rows run faster at 32 rows
(``experiments/cpu_products.py``), and with the fused products SmolLM2 decodes 3-10%
faster than on the copy as loaded (docs/decoder_speed.md).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
from flax import nnx

from qstar_jax.models.llama import LlamaModel, unstack_layers
from qstar_kernels import target_platform

# How the token loops read the layers' weights: "per-layer" (a copy split per layer,
# looped over in Python), "per-layer-transposed" (the same with the attention's
# projections held [out, in]: ``RowLinear``), "per-layer-kernels" (the same with the
# MLP's products as rows too, each layer's norms, products, SiLU and residuals run as
# ``qstar_kernels.rows_product`` calls: four Pallas kernels a layer on a GPU at decode
# steps of a few rows, the jnp reference elsewhere; untimed on a GPU, so "auto" picks it
# on a CPU only),
# "stacked" (slices of the stacked arrays under a scan), or "unrolled" (the same scan
# fully unrolled, so every slice is at a constant index); "auto" picks a per-layer copy
# on CPU and GPU, where it was measured faster than the scan: every product as rows on a
# CPU (measured faster than the copy as loaded), transposed on a GPU (where
# XLA:GPU otherwise stores each batch-1 projection's products to reduce them in a second
# kernel: experiments/device_program.py), and the scan elsewhere (TPU), which holds the
# weights once: compiled for a TPU v5e, XLA:TPU reads each layer's slice in place
# (experiments/device_program.py; untimed).
LAYER_WEIGHTS = ("auto", "per-layer", "per-layer-transposed", "per-layer-kernels", "stacked",
                 "unrolled")
# The modes that hold a copy of the layers beside the stacked weights.
COPYING_LAYER_WEIGHTS = ("per-layer", "per-layer-transposed", "per-layer-kernels")


@functools.partial(jax.tree_util.register_dataclass, data_fields=["model", "layers"],
                   meta_fields=["layer_def", "unroll"])
@dataclasses.dataclass(frozen=True)
class DecoderWeights:
    model: nnx.State  # everything; the embeddings, final norm and LM head are read from it
    layers: list[nnx.State] | None  # layer i's weights without the [L] axis; None: scan
    layer_def: nnx.GraphDef | None = None  # the graph ``layers`` fill
    unroll: bool = False  # with layers None: unroll the scan

    @classmethod
    def of(cls, model: LlamaModel, layer_weights: str = "auto", *,
           heads_split: bool = False) -> DecoderWeights:
        """The weights for token loops that read the layers as ``layer_weights`` says
        (``resolve_layer_weights``)."""
        mode = resolve_layer_weights(layer_weights, heads_split=heads_split)
        if mode in COPYING_LAYER_WEIGHTS:
            layer_def, layers = unstack_layers(
                model, transpose_projections=mode == "per-layer-transposed",
                row_kernels="auto" if mode == "per-layer-kernels" else None)
            return cls(model=nnx.state(model), layers=layers, layer_def=layer_def)
        return cls(model=nnx.state(model), layers=None, unroll=mode == "unrolled")

    @property
    def mode(self) -> str:
        """The resolved ``LAYER_WEIGHTS`` entry these weights were made for."""
        if self.layers is not None:
            if self.layers[0]["mlp"].get("gate_up_proj") is not None:
                return "per-layer-kernels"
            transposed = self.layers[0]["self_attn"].get("qkv_proj") is not None
            return "per-layer-transposed" if transposed else "per-layer"
        return "unrolled" if self.unroll else "stacked"

    @property
    def prefill_mode(self) -> str:
        """The ``LAYER_WEIGHTS`` entry a prefill reads the layers as
        (``prefill_layer_arguments``): the copy's, or the scan's."""
        return self.mode if self.prefill_layer_arguments() else "stacked"

    @property
    def device(self) -> jax.Device:
        """The device the weights are on (one device: a mesh places them itself)."""
        (device,) = jax.tree.leaves(self.model)[0].devices()
        return device

    def layer_arguments(self) -> dict:
        """The keyword arguments of ``LlamaModel.__call__`` that read the layers this way."""
        return {"layers": self.layers, "layer_def": self.layer_def, "unroll": self.unroll}

    def prefill_layer_arguments(self) -> dict:
        """How a prefill reads the layers, on the platform it is traced for
        (``qstar_kernels.target_platform``): on a GPU the per-layer copy where the
        decoder holds one, and the scan over the stacked weights otherwise.

        On a GPU the scan copies every layer's weights out of the stacked arrays each
        call: 1.95 GB written a call for the 1B shape, compiled for an H200
        (``experiments/device_program.py --functions prefill``), some 1 ms a call written
        and read again, where a short prompt's products take tens of µs and reading the
        weights once 0.6 ms (docs/gpu_tpu.md; estimates, untimed). The copy avoids them,
        at 3.8 s of compile a prefill variant there against 1.3 s. On a CPU a prefill's
        products dwarf the copies, and the unrolled stack compiles much more slowly; a
        TPU reads the scan's slices in place and holds no copy."""
        if self.layers is None or target_platform() != "gpu":
            return {}
        return self.layer_arguments()


def resolve_layer_weights(layer_weights: str, backend: str | None = None, *,
                          heads_split: bool = False) -> str:
    """``layer_weights`` with "auto" resolved for ``backend`` ("cpu", "gpu", "tpu", ...;
    default: JAX's default backend). ``heads_split``: a mesh splits the attention heads
    over devices, which a transposed copy's fused q/k/v rows would not be (they would be
    held whole on every device), so "auto" keeps the plain copy there."""
    if layer_weights not in LAYER_WEIGHTS:
        raise ValueError(f"layer_weights must be one of {LAYER_WEIGHTS}, got {layer_weights!r}")
    if layer_weights == "per-layer-kernels" and heads_split:
        raise ValueError("layer_weights='per-layer-kernels' runs each layer's products as "
                         "kernels over whole weights, and this mesh splits the attention "
                         "heads over devices: use 'auto' or a mesh with model=1")
    if layer_weights != "auto":
        return layer_weights
    backend = backend or jax.default_backend()
    if backend in ("gpu", "cuda", "rocm"):
        return "per-layer" if heads_split else "per-layer-transposed"
    if backend == "cpu":
        return "per-layer" if heads_split else "per-layer-kernels"
    return "stacked"
