"""The row-products kernel against its jnp reference (Pallas interpret mode on CPU), the
reference against float64 numpy, and the kernel lowered to Triton for an H200."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qstar_kernels.row_products as row_products_module
from qstar_kernels import (compiling_for, resolve_rows_implementation, rows_product,
                           rows_product_gpu, rows_product_reference)
from qstar_kernels.row_products_gpu import MAX_ROWS, input_block, largest_block
from tests.kernels.test_paged_attention import lowered_for_h200

WIDTH, OUTPUTS = 64, 48
# The layer's four uses: normed q/k/v (Qwen2's with a bias), the output projection and the
# MLP's down onto the residual (Qwen2's o without a bias, some models' with), the gated
# gate/up.
USES = {"normed": dict(norm=True), "normed_bias": dict(norm=True, bias=True),
        "residual": dict(residual=True), "residual_bias": dict(residual=True, bias=True),
        "gated": dict(norm=True, gated=True)}


def operands(seed, tokens, *, norm=False, bias=False, residual=False, gated=False,
             dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    rows = 2 * OUTPUTS if gated else OUTPUTS

    def draw(*shape):
        return jnp.asarray(rng.normal(size=shape), dtype)
    x, weights = draw(tokens, WIDTH), draw(rows, WIDTH) / np.sqrt(WIDTH)
    options = dict(norm_weight=draw(WIDTH) if norm else None, gated=gated,
                   bias=draw(OUTPUTS) if bias else None,
                   residual=draw(tokens, OUTPUTS) if residual else None)
    return x, weights, options


def float64_rows_product(x, rows, *, norm_weight=None, gated=False, bias=None, residual=None,
                         eps=1e-6):
    x, rows = np.asarray(x, np.float64), np.asarray(rows, np.float64)
    if norm_weight is not None:
        x = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * np.asarray(norm_weight)
    out = x @ rows.T
    if gated:
        gate, up = np.split(out, 2, axis=-1)
        out = gate / (1 + np.exp(-gate)) * up
    if bias is not None:
        out = out + np.asarray(bias)
    return out if residual is None else out + np.asarray(residual)


@pytest.mark.parametrize("use", list(USES))
def test_reference_matches_float64(use):
    x, rows, options = operands(0, 3, **USES[use])
    np.testing.assert_allclose(np.asarray(rows_product_reference(x, rows, **options)),
                               float64_rows_product(x, rows, **options), atol=1e-5, rtol=1e-5)


def test_eps_reaches_the_norm_on_the_reference_and_the_kernel(monkeypatch):
    """eps=0.5, not the default 1e-6 (the models' norms have their own): the reference and
    the kernel normalise with it, and rows_product hands it, with interpret mode on this
    CPU, to the kernel for 2 tokens under "pallas"."""
    x, rows, options = operands(6, 2, **USES["normed"])
    expected = float64_rows_product(x, rows, **options, eps=0.5)
    assert np.abs(expected - float64_rows_product(x, rows, **options)).max() > 0.1
    np.testing.assert_allclose(np.asarray(rows_product_reference(x, rows, **options, eps=0.5)),
                               expected, atol=1e-5, rtol=1e-5)
    calls = []

    def recording_kernel(*args, **kwargs):
        calls.append({name: kwargs[name] for name in ("eps", "interpret")})
        return rows_product_gpu(*args, **kwargs)
    monkeypatch.setattr(row_products_module, "rows_product_gpu", recording_kernel)
    got = rows_product(x, rows, **options, eps=0.5, implementation="pallas")
    assert calls == [dict(eps=0.5, interpret=True)]
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5, rtol=2e-5)


def test_rows_product_hands_every_option_to_the_path_it_picks(monkeypatch):
    """Stand-ins for both paths record what rows_product hands them: under "pallas" for
    2 tokens the kernel gets x, the rows and every option as given (with interpret=True
    on this CPU); under "jnp", and under "pallas" for MAX_ROWS + 1 tokens, the reference
    gets them."""
    calls = []
    for name in ("rows_product_gpu", "rows_product_reference"):
        def record(*args, name=name, **options):
            calls.append((name, args, options))
        monkeypatch.setattr(row_products_module, name, record)
    options = dict(norm_weight="norm", eps=0.5, gated=True, bias="bias", residual="residual",
                   x_segments=(16, 32))
    few, many = jnp.zeros((2, WIDTH)), jnp.zeros((MAX_ROWS + 1, WIDTH))
    for x, implementation in ((few, "pallas"), (few, "jnp"), (many, "pallas")):
        rows_product(x, "rows", **options, implementation=implementation)
    assert calls == [("rows_product_gpu", (few, "rows"), dict(options, interpret=True)),
                     ("rows_product_reference", (few, "rows"), options),
                     ("rows_product_reference", (many, "rows"), options)]


@pytest.mark.parametrize("tokens", [1, 3, MAX_ROWS])  # 3 is padded to Triton's 4
@pytest.mark.parametrize("use", list(USES))
def test_gpu_kernel_matches_the_reference_in_interpret_mode(use, tokens):
    """Several programs (48 outputs, 8 a program: 6; gated, 48 gate and 48 up rows) and
    several steps of the loop over the width (64 columns, 16 a step: 4)."""
    x, rows, options = operands(1, tokens, **USES[use])
    got = rows_product_gpu(x, rows, **options, block_in=16, interpret=True)
    assert got.shape == (tokens, OUTPUTS) and got.dtype == x.dtype
    np.testing.assert_allclose(np.asarray(got),
                               np.asarray(rows_product_reference(x, rows, **options)),
                               atol=2e-5, rtol=2e-5)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu",
                    reason="compiles the Triton kernel: needs a GPU")
@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("use", list(USES))
def test_gpu_kernel_compiled_on_a_gpu_matches_the_reference(use, tokens):
    """The kernel as the decoder runs it on a GPU (compiled by Triton, not interpreted),
    at its default blocks (64 columns: one step of 64) and at 16 columns a step."""
    x, rows, options = operands(1, tokens, **USES[use])
    expected = np.asarray(rows_product_reference(x, rows, **options))
    for block_in in (512, 16):
        got = rows_product_gpu(x, rows, **options, block_in=block_in)
        np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=1e-4)
    if "residual" in use:  # the output projection reading the attention's padded rows
        got = rows_product_gpu(padded_inputs(x, 32, 128), rows, **options,
                               x_segments=(32, 128))
        np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=1e-4)


def padded_inputs(x, used: int, stride: int, seed: int = 7):
    """x [B, E] laid out as the attention kernel's rows: each ``used`` inputs followed by
    ``stride - used`` columns of noise (its padding rows' outputs are not zeros)."""
    tokens = x.shape[0]
    noise = np.random.default_rng(seed).normal(size=(tokens, x.shape[1] // used,
                                                     stride - used))
    segments = np.asarray(x).reshape(tokens, -1, used)
    return jnp.asarray(np.concatenate([segments, noise], axis=2).reshape(tokens, -1), x.dtype)


@pytest.mark.parametrize("tokens", [1, 3, MAX_ROWS])
@pytest.mark.parametrize("use", ["residual", "residual_bias"])  # the output projection's
@pytest.mark.parametrize("used,stride,block_in", [(16, 64, 16), (32, 128, 16), (16, 16, 16)])
def test_padded_inputs_read_in_place_are_the_unpadded_inputs(use, tokens, used, stride,
                                                             block_in):
    """``x_segments`` (used, stride): the inputs are the first ``used`` of every
    ``stride`` columns (a kv head's G query heads' outputs in the attention kernel's R
    padded rows); the kernel reads them where they lie, a step's block within a segment,
    and both paths give the product of the unpadded inputs."""
    x, rows, options = operands(5, tokens, **USES[use])
    padded = padded_inputs(x, used, stride)
    expected = np.asarray(rows_product_reference(x, rows, **options))
    np.testing.assert_array_equal(
        np.asarray(rows_product_reference(padded, rows, **options, x_segments=(used, stride))),
        expected)
    got = rows_product_gpu(padded, rows, **options, x_segments=(used, stride),
                           block_in=block_in, interpret=True)
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("use", ["normed_bias", "gated", "residual"])
def test_gpu_kernel_in_bfloat16_rounds_where_the_model_does(use):
    """bfloat16 in and out, float32 inside: within a rounding of the reference."""
    x, rows, options = operands(2, 1, **USES[use], dtype=jnp.bfloat16)
    got = rows_product_gpu(x, rows, **options, block_in=32, interpret=True)
    expected = rows_product_reference(x, rows, **options)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32),
                               atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("use", ["normed_bias", "gated", "residual"])
def test_gpu_kernel_lowers_to_triton_without_a_gpu(use):
    """Pallas' Triton lowering on a 1B layer's shapes in bfloat16 (q/k/v 3,072 rows of
    2,048; gate and up 8,192 each; down 2,048 rows of 8,192), one token."""
    bf16, spec = jnp.bfloat16, jax.ShapeDtypeStruct
    shapes = {"normed_bias": (2048, 3072), "gated": (2048, 2 * 8192), "residual": (8192, 2048)}
    width, rows = shapes[use]
    outputs = rows // 2 if use == "gated" else rows
    flags = USES[use]
    args = [spec((1, width), bf16), spec((rows, width), bf16)]
    names = []
    for name, shape in (("norm_weight", (width,)), ("bias", (outputs,)),
                        ("residual", (1, outputs))):
        if flags.get(name.split("_")[0]):
            args.append(spec(shape, bf16))
            names.append(name)

    def call(x, rows, *extra):
        return rows_product_gpu(x, rows, gated=flags.get("gated", False),
                                **dict(zip(names, extra)))
    assert "__gpu$xla.gpu.triton" in lowered_for_h200(call, *args)


def test_output_projection_on_padded_rows_lowers_to_triton_without_a_gpu():
    """The 1B layer's output projection reading the attention kernel's rows in place: 8
    kv heads' 16 padded rows of 64, of which each kv head's 4 query heads' are inputs."""
    bf16, spec = jnp.bfloat16, jax.ShapeDtypeStruct

    def call(x, rows, residual):
        return rows_product_gpu(x, rows, residual=residual, x_segments=(4 * 64, 16 * 64))
    assert "__gpu$xla.gpu.triton" in lowered_for_h200(
        call, spec((1, 8 * 16 * 64), bf16), spec((2048, 2048), bf16), spec((1, 2048), bf16))


def test_auto_takes_the_kernel_on_gpus_for_a_few_tokens_only():
    assert resolve_rows_implementation("auto") == "jnp"  # this CPU
    assert resolve_rows_implementation("pallas") == "pallas_interpret"
    assert resolve_rows_implementation("pallas", MAX_ROWS + 1) == "jnp"
    with compiling_for("gpu"):
        assert resolve_rows_implementation("auto", MAX_ROWS) == "pallas_gpu"
        assert resolve_rows_implementation("auto", MAX_ROWS + 1) == "jnp"
    with compiling_for("tpu"):  # no TPU version: XLA:TPU runs the layer as one program
        assert resolve_rows_implementation("auto") == "jnp"
        with pytest.raises(ValueError, match="no Pallas version for tpu"):
            resolve_rows_implementation("pallas")


def test_more_tokens_than_the_kernel_takes_run_the_reference():
    x, rows, options = operands(3, MAX_ROWS + 1, **USES["gated"])
    np.testing.assert_array_equal(
        np.asarray(rows_product(x, rows, **options, implementation="pallas")),
        np.asarray(rows_product_reference(x, rows, **options)))
    with pytest.raises(ValueError, match=f"at most {MAX_ROWS} tokens"):
        rows_product_gpu(x, rows, **options, interpret=True)


def test_bad_inputs_are_named():
    x, rows, _ = operands(4, 1)
    with pytest.raises(ValueError, match=r"x must be \[rows, width\], got shape \(64,\)"):
        rows_product_reference(x[0], rows)
    with pytest.raises(ValueError, match="rows must be"):
        rows_product_reference(x, rows[:, :-1])
    with pytest.raises(ValueError, match=r"rows must be \[outputs, 64\], got shape \(48, 64, 1\)"):
        rows_product_reference(x, rows[:, :, None])
    with pytest.raises(ValueError, match=r"bias must be \[48\] on ungated rows, got shape \(47,\)"):
        rows_product_reference(x, rows, bias=jnp.ones(OUTPUTS - 1))
    with pytest.raises(ValueError, match=r"0 < used <= stride .* got \(0, 16\)"):
        rows_product_reference(x, rows, x_segments=(0, 16))
    with pytest.raises(ValueError, match="norm_weight must be"):
        rows_product_reference(x, rows, norm_weight=jnp.ones(WIDTH + 1))
    with pytest.raises(ValueError, match="even count"):
        rows_product_reference(x, rows[:-1], gated=True)
    with pytest.raises(ValueError, match="bias must be"):
        rows_product_reference(x, rows, gated=True, bias=jnp.ones(OUTPUTS // 2))
    with pytest.raises(ValueError, match="residual must be"):
        rows_product_gpu(x, rows, residual=jnp.ones((2, OUTPUTS)), interpret=True)
    with pytest.raises(ValueError, match=r"x_segments .* stride dividing x's 64 columns"):
        rows_product_reference(x, rows, x_segments=(16, 48))
    with pytest.raises(ValueError, match=r"0 < used <= stride"):
        rows_product_gpu(x, rows, x_segments=(32, 16), interpret=True)
    with pytest.raises(ValueError, match=r"rows must be \[outputs, 32\]"):
        rows_product_reference(x, rows, x_segments=(16, 32))
    with pytest.raises(ValueError, match="give no norm_weight"):
        rows_product_reference(x, rows[:, :32], x_segments=(16, 32), norm_weight=jnp.ones(32))


@pytest.mark.parametrize("size,cap,block", [(3072, 8, 8), (576, 512, 64), (960, 8, 8),
                                            (1536, 512, 512), (12, 8, 4), (1024, 300, 256)])
def test_blocks_are_the_largest_power_of_two_dividing_the_size(size, cap, block):
    assert largest_block(size, cap) == block


@pytest.mark.parametrize("width,cap,held_per_column,block", [
    (2048, 512, 4 * 8, 128),  # 4,096 running products: 128 columns of 4 tokens x 8 outputs
    (2048, 512, 1 * 8, 512),  # one token: the cap binds
    (96, 512, 2 * 8, 32),  # 256 would fit; 32 divides 96
    (96, 512, 8192, 1),  # more than 4,096 a column: still a column a step
])
def test_a_step_reads_at_most_4096_running_products(width, cap, held_per_column, block):
    assert input_block(width, cap, held_per_column) == block


def test_a_layer_on_rows_lowers_to_four_triton_kernels_for_a_gpu():
    """The decoder's per-layer copy with every product as rows (``unstack_layers(
    row_kernels="auto")``), a batch-1 decode step traced for a GPU on this CPU: each
    layer's norms, products, SiLU and residuals are four Triton calls (the attention on
    row slots stays XLA's). Traced for this CPU, the same step has none."""
    from flax import nnx

    from qstar_jax.decoding.kv_cache import init_cache
    from qstar_jax.models.llama import LlamaModel, unstack_layers
    from tests.decoding.tiny_models import tiny_config
    config = tiny_config(64)
    model = LlamaModel(config, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    layer_def, layers = unstack_layers(model, row_kernels="auto")
    cache = init_cache(config, slots=2, max_len=16, dtype=jnp.bfloat16)

    def step(tokens, positions, slots, cache_k, cache_v):
        return model(tokens, positions, slots, cache_k, cache_v, layers=layers,
                     layer_def=layer_def)[0]
    args = (jnp.zeros((1, 1), jnp.int32), jnp.full((1, 1), 3, jnp.int32),
            jnp.zeros((1,), jnp.int32), cache.k, cache.v)
    with compiling_for("gpu"):
        lowered = lowered_for_h200(step, *args)
    # Each distinct kernel's function is lowered once and called from every layer.
    assert lowered.count("call @rows_product_gpu") == 4 * config.num_layers
    assert lowered.count("__gpu$xla.gpu.triton") == 4
    assert "custom_call" not in jax.jit(step).lower(*args).as_text()
