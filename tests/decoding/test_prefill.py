import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.kv_cache import init_cache
from qstar_jax.decoding.paged_cache import Paging
from qstar_jax.models.llama import LlamaModel, unstack_layers
from qstar_kernels import compiling_for
from tests.decoding.tiny_models import RANDOM_MAX_LEN, tiny_config

PROMPTS = [[3, 14, 15, 9, 26], [5, 35, 8, 9, 7, 9, 32, 3, 8, 4, 6], [2, 7, 1]]


def _last_hidden(decoder, slots) -> np.ndarray:
    return np.asarray(decoder.cache.last_hidden)[slots]


def test_prefill_sets_lengths_and_last_hidden_like_a_full_forward(random_decoder, full_forward):
    slots = random_decoder.allocate(3)
    random_decoder.prefill(slots, PROMPTS)
    np.testing.assert_array_equal(random_decoder.lengths(slots), [5, 11, 3])
    np.testing.assert_array_equal(np.asarray(random_decoder.cache.lengths)[slots], [5, 11, 3])
    for slot, prompt in zip(slots, PROMPTS):
        hidden, _ = full_forward(prompt)
        np.testing.assert_allclose(_last_hidden(random_decoder, slot), hidden[-1], atol=1e-5)


def test_prefill_replaces_what_a_slot_held(random_decoder, full_forward):
    slots = random_decoder.allocate(2)
    random_decoder.prefill(slots, PROMPTS[1:])
    random_decoder.prefill(slots[::-1], PROMPTS[:2])
    np.testing.assert_array_equal(random_decoder.lengths(slots), [11, 5])
    hidden, _ = full_forward(PROMPTS[0])
    np.testing.assert_allclose(_last_hidden(random_decoder, slots[1]), hidden[-1], atol=1e-5)


# How unstack_layers holds the copy: as the stack does; the attention's projections held
# transposed (q, k and v as one RowLinear); and every product as rows, run through
# qstar_kernels.rows_product, its GPU kernel interpreted or its jnp reference.
LAYOUTS = {"plain": {}, "transposed": {"transpose_projections": True},
           "row-kernels-pallas": {"row_kernels": "pallas"},
           "row-kernels-jnp": {"row_kernels": "jnp"}}


# Which products have biases: none (Llama's), q, k and v (Qwen2's), the MLP's (Llama's
# mlp_bias, which the row kernels' gated call cannot add: the gate and up rows run
# ungated, and the gating after them).
BIASES = {"none": ({}, ()),
          "attention": ({"attention_bias": True}, [("self_attn", n) for n in "qkv"]),
          "mlp": ({"mlp_bias": True}, [("mlp", n) for n in ("gate", "up", "down")])}


@pytest.mark.parametrize("tokens_per_row", [1, 5])  # the one-query attention path, and T > 1
@pytest.mark.parametrize("biases", list(BIASES))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_per_layer_weights_compute_what_the_scanned_stack_computes(tokens_per_row, biases,
                                                                    layout):
    """The decoder's loop over per-layer weights (``unstack_layers``) in each layout
    against the stacked layers under ``lax.scan``: same hidden states, same cache writes.
    The row kernels take the two rows' one token each (2 tokens a call, at most
    ``MAX_ROWS``), not their five (10 tokens: the jnp path)."""
    fields, biased = BIASES[biases]
    config = dataclasses.replace(tiny_config(64), **fields)
    model = LlamaModel(config, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    for block, name in biased:
        bias = getattr(getattr(model.layers, block), f"{name}_proj").bias  # zeros at first
        bias[...] = jnp.asarray(rng.standard_normal(bias.shape), jnp.float32)
    # Two rows into slots 2 and 0 of a 3-slot cache already holding 6 random positions.
    empty = init_cache(config, slots=3, max_len=RANDOM_MAX_LEN)
    cache = [jnp.asarray(rng.standard_normal(x.shape), jnp.float32) for x in (empty.k, empty.v)]
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, (2, tokens_per_row)), jnp.int32)
    positions = 6 + jnp.broadcast_to(jnp.arange(tokens_per_row, dtype=jnp.int32), tokens.shape)
    slots = jnp.array([2, 0], jnp.int32)
    scanned = model(tokens, positions, slots, *cache)
    layer_def, layers = unstack_layers(model, **LAYOUTS[layout])
    looped = model(tokens, positions, slots, *cache, layers=layers, layer_def=layer_def)
    for ours, reference in zip(looped, scanned):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), atol=1e-5, rtol=1e-5)
    attention, mlp = layers[0]["self_attn"], layers[0]["mlp"]
    assert ("qkv_proj" in attention) == (layout != "plain")
    assert ("q_proj" in attention) == (layout == "plain")
    assert ("gate_up_proj" in mlp) == layout.startswith("row-kernels")
    assert ("gate_proj" in mlp) != layout.startswith("row-kernels")
    assert ("bias" in mlp["down_proj"]) == (biases == "mlp")


def test_rows_prefilled_in_calls_of_their_own_length_are_what_one_call_gives(random_decoder,
                                                                            monkeypatch):
    """Five short prompts and a long one go in two calls (``length_groups``): the five
    padded to 16 tokens (the minimum prefill bucket), the long one's 56 to 64 (6 x 64 rows
    in one call would be 384 padded tokens, the two 6 x 16 + 2 x 64 = 224); each slot then
    holds what prefilling its prompt alone gives."""
    rng = np.random.default_rng(3)
    prompts = [rng.integers(1, 64, n).tolist() for n in (5, 7, 6, 5, 7, RANDOM_MAX_LEN - 8)]
    slots = random_decoder.allocate(len(prompts))
    calls, prefill_rows = [], random_decoder._prefill_rows

    def recording_prefill_rows(slots, token_lists, starts, length):
        calls.append((slots.tolist(), length))
        prefill_rows(slots, token_lists, starts, length)

    monkeypatch.setattr(random_decoder, "_prefill_rows", recording_prefill_rows)
    random_decoder.prefill(slots, prompts)
    assert calls == [(slots[:5], 16), (slots[5:], RANDOM_MAX_LEN)]
    together = _last_hidden(random_decoder, slots)
    np.testing.assert_array_equal(random_decoder.lengths(slots), [len(p) for p in prompts])
    for slot, prompt, hidden in zip(slots, prompts, together):
        random_decoder.prefill([slot], [prompt])
        np.testing.assert_allclose(_last_hidden(random_decoder, slot), hidden, atol=1e-5)


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("layer_weights", ["per-layer", "per-layer-transposed", "stacked"])
def test_a_prefill_traced_for_a_gpu_reads_the_decoders_per_layer_copy(random_model,
                                                                       layer_weights, paged):
    """Traced for a GPU (``compiling_for``), a prefill reads the per-layer copy the decoder
    holds for its token loops, not the scan over the stacked weights, whose slices XLA:GPU
    copies every call; on a CPU, and with no copy, it keeps the scan (a while loop in
    its program). Both write the same cache, prompts and then their continuations (on
    pages, a shared partly filled page at each start; read by the jnp path, as nothing
    here runs a GPU kernel)."""
    def prefilled(platform):
        decoder = Decoder(random_model, num_slots=4, max_len=RANDOM_MAX_LEN,
                          newline_table=np.zeros(64, bool), eos_ids=[],
                          layer_weights=layer_weights,
                          paging=Paging(page_size=4, num_pages=32, attention="jnp")
                          if paged else None)
        slots = decoder.allocate(3)
        with compiling_for(platform):
            decoder.prefill(slots, PROMPTS)
            decoder.prefill(slots, [[7, 8], [9], [10, 11, 12]],
                            starts=decoder.lengths(slots))
            program = decoder.compiled_text("prefill")
        hidden = np.asarray(decoder.cache.last_hidden)[slots]
        return decoder.cache, hidden, program

    (on_cpu, cpu_hidden, cpu_program), (for_gpu, gpu_hidden, gpu_program) = \
        prefilled("cpu"), prefilled("gpu")
    assert " while(" in cpu_program
    assert (" while(" in gpu_program) == (layer_weights == "stacked")
    np.testing.assert_array_equal(np.asarray(for_gpu.lengths), np.asarray(on_cpu.lengths))
    for ours, reference in ((for_gpu.k, on_cpu.k), (for_gpu.v, on_cpu.v),
                            (gpu_hidden, cpu_hidden)):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), atol=1e-5,
                                   rtol=1e-5)
