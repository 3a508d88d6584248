"""The q/k/v-into-pages kernel (interpret mode on CPU) against what the decoder computes
without it: the normed q/k/v rows (``rows_product``), RoPE, the paged writes and the
query's rows for the attention kernel; and the kernel lowered to Triton for an H200."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qstar_jax.models.cache_pages import PagedRows
from qstar_jax.models.llama import rotate_half_rope
from qstar_kernels import rows_product_reference
from qstar_kernels.paged_attention_layout import to_rows
from qstar_kernels.qkv_into_pages_gpu import qkv_into_pages_gpu
from tests.kernels.test_paged_attention import lowered_for_h200

HEADS, KV_HEADS, HEAD_DIM, WIDTH, LAYERS, PAGE_SIZE, ROWS = 4, 2, 16, 64, 2, 4, 16


def case(seed, positions, *, bias=False, dtype=jnp.float32):
    """Random inputs: every token's row has a 3-entry page table over a shuffled pool."""
    rng = np.random.default_rng(seed)
    tokens = len(positions)

    def draw(*shape, scale=1.0):
        return jnp.asarray(rng.normal(size=shape) * scale, dtype)
    outputs = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    pool = 3 * tokens + 1
    table = jnp.asarray(rng.permutation(pool)[:3 * tokens].reshape(tokens, 3), jnp.int32)
    pages = [draw(LAYERS, pool, KV_HEADS, PAGE_SIZE, HEAD_DIM) for _ in range(2)]
    return dict(x=draw(tokens, WIDTH), norm_weight=draw(WIDTH),
                qkv_rows=draw(outputs, WIDTH, scale=WIDTH ** -0.5),
                bias=draw(outputs) if bias else None,
                positions=jnp.asarray(positions, jnp.int32), table=table,
                k_pages=pages[0], v_pages=pages[1],
                inv_freq=jnp.asarray(1e4 ** -(np.arange(HEAD_DIM // 2) * 2 / HEAD_DIM),
                                     jnp.float32))


def decoders_path(c, layer):
    """What ``DecoderLayer._call_on_rows`` and ``Attention.attend`` compute on the jnp
    path: (q as the attention kernel's rows, k_pages, v_pages)."""
    qkv = rows_product_reference(c["x"], c["qkv_rows"], norm_weight=c["norm_weight"],
                                 bias=c["bias"])
    q, k, v = jnp.split(qkv[:, None], [HEADS * HEAD_DIM, (HEADS + KV_HEADS) * HEAD_DIM], -1)
    positions = c["positions"][:, None]
    tokens = len(c["positions"])
    q = rotate_half_rope(q.reshape(tokens, 1, HEADS, HEAD_DIM), positions, c["inv_freq"])
    k = rotate_half_rope(k.reshape(tokens, 1, KV_HEADS, HEAD_DIM), positions, c["inv_freq"])
    v = v.reshape(tokens, 1, KV_HEADS, HEAD_DIM)
    rows = PagedRows(page_table=c["table"])
    return (to_rows(q, KV_HEADS, ROWS), rows.write(c["k_pages"], layer, k, positions),
            rows.write(c["v_pages"], layer, v, positions))


def kernels_path(c, layer, **options):
    rows = PagedRows(page_table=c["table"])
    page, offset = rows.targets(c["positions"][:, None], PAGE_SIZE, c["k_pages"].shape[1])
    pool = c["k_pages"].shape[1]
    return qkv_into_pages_gpu(
        c["x"], c["norm_weight"], c["qkv_rows"], c["bias"], c["positions"], page[:, 0],
        offset[:, 0], page[:, 0] < pool, c["k_pages"], c["v_pages"], jnp.int32(layer),
        c["inv_freq"], num_heads=HEADS, num_kv_heads=KV_HEADS, query_rows=ROWS, **options)


@pytest.mark.parametrize("bias", [False, True])  # Llama's projections, Qwen2's
@pytest.mark.parametrize("positions", [[5], [0, 11, 7], [3, 6, 9, 2]])
def test_kernel_computes_what_the_decoder_computes(positions, bias):
    """One to four tokens (a row's page table holds positions up to 11): the query rows
    (with the padding rows zero), and the pools with exactly the tokens' keys and values
    written, everything else as it was."""
    c = case(len(positions), positions, bias=bias)
    expected = decoders_path(c, 1)
    got = kernels_path(c, 1, interpret=True)
    for ours, theirs in zip(got, expected):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=2e-5, rtol=2e-5)
    assert np.all(np.asarray(got[0])[:, :, HEADS // KV_HEADS:] == 0)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu",
                    reason="compiles the Triton kernel: needs a GPU")
@pytest.mark.parametrize("bias", [False, True])
def test_kernel_compiled_on_a_gpu_computes_what_the_decoder_computes(bias):
    """The kernel as the decoder runs it on a GPU (compiled by Triton), with a padding
    row; head_dim 16 of pairs 4 at a time: two programs a head."""
    c = case(11, [0, 11, 12], bias=bias)
    with jax.default_matmul_precision("highest"):
        expected = decoders_path(c, 1)
    for ours, theirs in zip(kernels_path(c, 1), expected):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-4, rtol=1e-4)


def test_a_padding_row_writes_nothing():
    """A token past the row's page table (the decoder's padding rows) leaves both pools
    as they were, and its query rows are still computed."""
    c = case(7, [2, 12])  # 12: past the 3 entries of 4-token pages
    q_rows, k_pages, v_pages = kernels_path(c, 0, interpret=True)
    expected = decoders_path(c, 0)
    np.testing.assert_allclose(np.asarray(k_pages), np.asarray(expected[1]), atol=2e-5)
    changed = np.asarray(k_pages != c["k_pages"]).any(axis=(0, 2, 4))  # [pages, offsets]
    assert changed.sum() == 1  # the first token's one (page, offset)
    np.testing.assert_allclose(np.asarray(q_rows), np.asarray(expected[0]), atol=2e-5)


def test_bad_shapes_are_named():
    """Fused rows one short of (4 + 2 * 2) heads of 16, a head_dim of 12 (pairs of 4 a
    program: a multiple of 8), and 1 query row for the 2 query heads of a kv head."""
    c = case(5, [3])
    table = PagedRows(page_table=c["table"])
    page, offset = table.targets(c["positions"][:, None], PAGE_SIZE, c["k_pages"].shape[1])

    def call(qkv_rows, k_pages, v_pages, query_rows=ROWS):
        return qkv_into_pages_gpu(
            c["x"], c["norm_weight"], qkv_rows, None, c["positions"], page[:, 0], offset[:, 0],
            jnp.ones(1, jnp.int32), k_pages, v_pages, 0, c["inv_freq"], num_heads=HEADS,
            num_kv_heads=KV_HEADS, query_rows=query_rows, interpret=True)
    with pytest.raises(ValueError, match=r"qkv_rows must be \[128, 64\], got \(127, 64\)"):
        call(c["qkv_rows"][:-1], c["k_pages"], c["v_pages"])
    with pytest.raises(ValueError, match="head_dim must be a multiple of 8, got 12"):
        call(c["qkv_rows"][:96], c["k_pages"][..., :12], c["v_pages"][..., :12])
    with pytest.raises(ValueError, match="query_rows 1 is under the 2 query heads"):
        call(c["qkv_rows"], c["k_pages"], c["v_pages"], query_rows=1)


def test_kernel_in_bfloat16_rounds_where_the_decoder_does():
    c = case(3, [4, 9], bias=True, dtype=jnp.bfloat16)
    for ours, theirs in zip(kernels_path(c, 1, interpret=True), decoders_path(c, 1)):
        np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(theirs, np.float32),
                                   atol=3e-2, rtol=3e-2)


def test_kernel_lowers_to_triton_without_a_gpu():
    """Pallas' Triton lowering on a 1B layer's shapes in bfloat16 (32:8 heads of 64,
    hidden 2,048), one token, the pools of 16 layers of 16-token pages."""
    bf16, spec = jnp.bfloat16, jax.ShapeDtypeStruct
    i32 = jnp.int32
    pages = spec((16, 512, 8, 16, 64), bf16)
    args = (spec((1, 2048), bf16), spec((2048,), bf16), spec((48 * 64, 2048), bf16), None,
            spec((1,), i32), spec((1,), i32), spec((1,), i32), spec((1,), jnp.bool_), pages,
            pages, spec((), i32), spec((32,), jnp.float32))

    def call(x, norm, rows, positions, page, offset, valid, k, v, layer, inv_freq):
        return qkv_into_pages_gpu(x, norm, rows, None, positions, page, offset, valid, k, v,
                                  layer, inv_freq, num_heads=32, num_kv_heads=8,
                                  query_rows=16)
    assert "__gpu$xla.gpu.triton" in lowered_for_h200(call, *(a for a in args if a is not None))


@pytest.mark.parametrize("variant", ["plain RoPE", "YaRN", "sliding window"])
def test_a_decoder_layer_on_pages_takes_the_kernel_and_computes_what_the_stack_does(variant):
    """A tiny model's per-layer copy with the row kernels forced (interpreted) on pages
    read by the attention kernel (interpreted): a decode step runs through
    ``qkv_into_pages`` and gives the stacked layers' jnp-path hidden state and pools; the
    second row is padding (past its page table) and writes nothing. With YaRN the
    attention factor reaches the kernel's logits as it does the jnp path's; with a
    sliding window of 3 the token at position 6 sees 3 of its 7 keys, as on the jnp path."""
    from flax import nnx

    from qstar_jax.models.llama import LlamaModel, unstack_layers
    from tests.decoding.tiny_models import YARN, tiny_config
    config = dataclasses.replace(tiny_config(64),
                                 rope_scaling=YARN if variant == "YaRN" else None,
                                 sliding_windows=(3, 3) if variant == "sliding window" else ())
    model = LlamaModel(config, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    shape = (config.num_layers, 9, config.num_kv_heads, 4, config.head_dim)
    pools = [jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(2)]
    table = jnp.asarray(rng.permutation(8).reshape(2, 4), jnp.int32)
    tokens, positions = jnp.asarray([[5], [9]], jnp.int32), jnp.asarray([[6], [16]], jnp.int32)
    stacked = model(tokens, positions, PagedRows(page_table=table, attention="jnp"), *pools)
    layer_def, layers = unstack_layers(model, row_kernels="pallas")

    def kernels(*pools):
        return model(tokens, positions, PagedRows(page_table=table, attention="pallas"),
                     *pools, layers=layers, layer_def=layer_def)
    assert "qkv_into_pages" in str(jax.make_jaxpr(kernels)(*pools))
    hidden, k_pages, v_pages = kernels(*pools)
    np.testing.assert_allclose(np.asarray(hidden[0]), np.asarray(stacked[0][0]), atol=1e-5)
    for ours, theirs, before in zip((k_pages, v_pages), stacked[1:], pools):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)
        assert np.asarray((ours != before).any(axis=(0, 2, 4))).sum() == 1  # row 0's token


def test_the_layer_takes_the_kernel_only_where_it_applies():
    """Both kernels on the GPU's path (here forced and interpreted), a few tokens, and a
    head_dim the programs' rotary pairs divide; the jnp path otherwise."""
    from qstar_kernels import compiling_for
    rows = PagedRows(page_table=jnp.zeros((1, 2), jnp.int32), attention="pallas")
    assert rows.fused_qkv_implementation("pallas", 4, 64) == "pallas_interpret"
    assert rows.fused_qkv_implementation("pallas", 5, 64) is None  # more than MAX_ROWS
    assert rows.fused_qkv_implementation("pallas", 1, 12) is None
    assert rows.fused_qkv_implementation("auto", 1, 64) is None  # auto on this CPU: jnp
    assert PagedRows(page_table=rows.page_table, attention="jnp").fused_qkv_implementation(
        "pallas", 1, 64) is None
    with compiling_for("gpu"):
        assert PagedRows(page_table=rows.page_table).fused_qkv_implementation(
            "auto", 1, 64) == "pallas_gpu"
