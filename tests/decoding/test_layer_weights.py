"""How the decoder's token loops read the layers' weights when told "auto"."""

import numpy as np
import pytest
from jax.sharding import AbstractMesh

from qstar_jax.decoding import weights
from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.weights import LAYER_WEIGHTS, DecoderWeights, resolve_layer_weights
from qstar_jax.models.config import ModelConfig
from qstar_jax.parallel import ShardingRules


@pytest.mark.parametrize("backend, heads_split, resolved", [
    # On a CPU every product as rows, run by the row kernels' jnp path (faster there:
    # docs/decoder_speed.md), unless a mesh splits the heads, which rows would not be.
    ("cpu", False, "per-layer-kernels"), ("cpu", True, "per-layer"),
    # On a GPU the attention's projections transposed (one kernel per batch-1 product
    # rather than a stored product and a reduction: experiments/device_program.py) ...
    ("gpu", False, "per-layer-transposed"), ("cuda", False, "per-layer-transposed"),
    ("rocm", False, "per-layer-transposed"),
    # ... unless a mesh splits the heads, which the fused q/k/v rows would not be.
    ("gpu", True, "per-layer"),
    ("tpu", False, "stacked"), ("tpu", True, "stacked")])
def test_auto_resolves_by_backend_and_mesh(backend, heads_split, resolved):
    assert resolve_layer_weights("auto", backend, heads_split=heads_split) == resolved


def test_a_named_reading_is_kept_and_a_bad_one_refused():
    assert resolve_layer_weights("stacked", "gpu") == "stacked"
    assert resolve_layer_weights("per-layer-transposed", "gpu", heads_split=True) == \
        "per-layer-transposed"
    assert resolve_layer_weights("per-layer-kernels", "gpu") == "per-layer-kernels"
    with pytest.raises(ValueError, match="must be one of"):
        resolve_layer_weights("per_layer", "gpu")
    with pytest.raises(ValueError, match="splits the attention heads"):
        resolve_layer_weights("per-layer-kernels", "gpu", heads_split=True)


def test_a_mesh_splits_the_heads_only_over_a_model_axis_that_divides_them():
    config = ModelConfig(model_type="llama", vocab_size=64, hidden_size=32,
                         intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                         head_dim=8, rms_norm_eps=1e-5)
    rules = ShardingRules()
    for shape, split in (((4, 1), False), ((2, 2), True), ((1, 4), True), ((1, 3), False)):
        mesh = AbstractMesh(shape, ("data", "model"))
        assert rules.for_model(config, mesh).splits("heads", mesh) == split, shape


def test_a_decoder_on_a_gpu_reads_the_transposed_copy(monkeypatch, random_model):
    """What a one-GPU decoder holds, its backend faked on this CPU."""
    newlines = np.zeros(random_model.config.vocab_size, bool)
    assert Decoder(random_model, num_slots=2, max_len=16,
                   newline_table=newlines).layer_weights == "per-layer-kernels"
    monkeypatch.setattr(weights.jax, "default_backend", lambda: "gpu")
    assert Decoder(random_model, num_slots=2, max_len=16,
                   newline_table=newlines).layer_weights == "per-layer-transposed"


@pytest.mark.parametrize("platform, layer_weights, prefill_reads", [
    ("cpu", "auto", "stacked"), ("cpu", "per-layer", "stacked"),
    ("gpu", "per-layer-transposed", "per-layer-transposed"), ("gpu", "stacked", "stacked"),
    ("gpu", "unrolled", "stacked")])
def test_a_prefill_reads_the_copy_on_a_gpu_and_the_scan_elsewhere(
        monkeypatch, random_model, platform, layer_weights, prefill_reads):
    monkeypatch.setattr(weights, "target_platform", lambda: platform)
    decoder = Decoder(random_model, num_slots=2, max_len=16, layer_weights=layer_weights,
                      newline_table=np.zeros(random_model.config.vocab_size, bool))
    assert decoder.prefill_layer_weights == prefill_reads


@pytest.mark.parametrize("mode", [m for m in LAYER_WEIGHTS if m != "auto"])
def test_the_weights_hold_the_layers_as_each_named_reading_says(random_model, mode):
    """And the token loops' model calls get that reading: the per-layer states and their
    graph, or the scan, unrolled for 'unrolled' only."""
    held = DecoderWeights.of(random_model, mode)
    assert held.mode == mode
    assert (held.layers is None, held.unroll) == (mode in ("stacked", "unrolled"),
                                                  mode == "unrolled")
    arguments = held.layer_arguments()
    assert arguments.keys() == {"layers", "layer_def", "unroll"}
    assert arguments["layers"] is held.layers and arguments["layer_def"] is held.layer_def
    assert arguments["unroll"] is (mode == "unrolled")
    assert (arguments["layer_def"] is None) == (mode in ("stacked", "unrolled"))
