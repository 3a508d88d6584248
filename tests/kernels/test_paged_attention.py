"""The paged decode-attention kernels against their jnp reference (Pallas interpret mode on
CPU; the GPU kernel compiled too where a GPU is present), and the reference against a
float64 loop over contiguous sequences."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas.ops.gpu import paged_attention as jax_paged_attention

import qstar_kernels.paged_attention as dispatch_module
from qstar_jax.decoding import paged_cache
from qstar_jax.decoding.paged_cache import Paging
from qstar_kernels import paged_attention_gpu
from qstar_kernels import (compiling_for, paged_decode_attention, paged_decode_attention_gpu,
                           paged_decode_attention_reference, paged_decode_attention_tpu,
                           resolve_implementation, target_platform)
from qstar_kernels.paged_attention_gpu import gpu_kernel_refusal

LAYERS, HEAD_DIM = 2, 16


def random_paged_cache(seed, *, lengths, page_size, kv_heads, heads, queries, entries=4):
    """Random sequences scattered over shuffled pages. Returns (args of the kernels,
    contiguous keys and values [B, K, max_len, D] of the layer read)."""
    rng = np.random.default_rng(seed)
    batch = len(lengths)
    num_pages = batch * entries + 1
    k_pages = rng.normal(size=(LAYERS, num_pages, kv_heads, page_size, HEAD_DIM))
    v_pages = rng.normal(size=k_pages.shape)
    page_table = rng.permutation(num_pages)[:batch * entries].reshape(batch, entries)
    q = rng.normal(size=(batch, queries, heads, HEAD_DIM))
    args = tuple(jnp.asarray(x, jnp.float32) for x in (q, k_pages, v_pages)) + (
        jnp.asarray(page_table, jnp.int32), jnp.asarray(lengths, jnp.int32), jnp.int32(1))

    def contiguous(pages):
        return pages[1][page_table].transpose(0, 2, 1, 3, 4).reshape(batch, kv_heads, -1,
                                                                       HEAD_DIM)
    return args, contiguous(k_pages), contiguous(v_pages)


def float64_attention(q, keys, values, lengths, window, scale=HEAD_DIM ** -0.5):
    q = np.asarray(q, np.float64)
    batch, queries, heads, _ = q.shape
    group = heads // keys.shape[1]
    out = np.zeros_like(q)
    for b in range(batch):
        for t in range(queries):
            pos = lengths[b] - queries + t
            seen = [i for i in range(pos + 1) if window is None or i > pos - window]
            for h in range(heads):
                if not seen:
                    continue
                k, v = keys[b, h // group, seen], values[b, h // group, seen]
                scores = k @ q[b, t, h] * scale
                weights = np.exp(scores - scores.max())
                out[b, t, h] = weights @ v / weights.sum()
    return out


@pytest.mark.parametrize("queries,window", [(1, None), (3, None), (2, 5)])
def test_reference_matches_float64_attention_over_contiguous_keys(queries, window):
    lengths = [0, 1, 17, 40, 64]
    args, keys, values = random_paged_cache(0, lengths=lengths, page_size=16, kv_heads=2,
                                            heads=6, queries=queries)
    out = paged_decode_attention_reference(*args, window=window)
    np.testing.assert_allclose(np.asarray(out), float64_attention(args[0], keys, values,
                                                                  lengths, window),
                               atol=2e-6)


CASES = [  # page size, kv heads, query heads, queries per slot, window
    dict(page_size=16, kv_heads=2, heads=2, queries=1, window=None),   # MHA
    dict(page_size=16, kv_heads=3, heads=9, queries=1, window=None),   # SmolLM2's 3:1 GQA
    dict(page_size=32, kv_heads=1, heads=4, queries=1, window=None),   # MQA, larger pages
    dict(page_size=16, kv_heads=2, heads=8, queries=3, window=None),   # a few queries per slot
    dict(page_size=16, kv_heads=2, heads=4, queries=2, window=20),     # sliding window
    dict(page_size=8, kv_heads=3, heads=9, queries=1, window=None),    # smaller pages
    dict(page_size=4, kv_heads=2, heads=4, queries=2, window=7),       # tiny pages, window
]
RAGGED_LENGTHS = [0, 1, 16, 33, 64, 2]  # empty, one token, page edges, full table, < queries


def ragged_lengths(case):
    """RAGGED_LENGTHS, and for a window case a slot whose first visible key (that of its
    earliest query, length - queries - window + 1) is its first page's last: a kernel
    that skipped one page too many would miss that key."""
    if case["window"] is None:
        return RAGGED_LENGTHS
    edge = case["page_size"] + case["queries"] + case["window"] - 2
    assert edge <= max(RAGGED_LENGTHS)  # fits the table RAGGED_LENGTHS sizes
    return [*RAGGED_LENGTHS, edge]


KERNELS = {"gpu": paged_decode_attention_gpu,  # the default blocks: 64 keys, 4 or 2 pages
           "gpu-page-per-step": functools.partial(paged_decode_attention_gpu,
                                                  keys_per_block=16),
           "gpu-8-pages-per-step": functools.partial(paged_decode_attention_gpu,
                                                     keys_per_block=128),
           "tpu": paged_decode_attention_tpu}


@pytest.mark.parametrize("kernel", KERNELS.values(), ids=KERNELS.keys())
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_pallas_kernel_matches_reference_in_interpret_mode(kernel, case):
    got, expected = _kernel_and_reference(kernel, case, interpret=True)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    empty_queries = np.asarray(ragged_lengths(case))[:, None] - case["queries"] + np.arange(
        case["queries"]) < 0
    assert np.all(got[empty_queries] == 0)


def test_the_tpu_kernel_and_the_reference_take_the_given_softmax_scale():
    """A YaRN model's logits scale (not head_dim ** -0.5 = 0.25); the GPU kernel's:
    ``tests/decoding/test_attention_scale.py``."""
    lengths = [5, 20, 33]
    args, keys, values = random_paged_cache(6, lengths=lengths, page_size=16, kv_heads=1,
                                            heads=2, queries=2)
    expected = float64_attention(args[0], keys, values, lengths, None, scale=0.7)
    assert np.abs(expected - float64_attention(args[0], keys, values, lengths, None)).max() \
        > 0.1
    np.testing.assert_allclose(np.asarray(paged_decode_attention_reference(*args, scale=0.7)),
                               expected, atol=2e-6)
    np.testing.assert_allclose(np.asarray(paged_decode_attention_tpu(*args, scale=0.7,
                                                                     interpret=True)),
                               expected, atol=2e-6)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu",
                    reason="compiles the Triton kernel: needs a GPU")
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_gpu_kernel_compiled_on_a_gpu_matches_reference(case):
    """The kernel as the decoder runs it on a GPU (compiled by Triton, not interpreted).
    Both sides' float32 products run at full precision; the tolerance leaves room for the
    kernel's own accumulation order over pages."""
    got, expected = _kernel_and_reference(paged_decode_attention_gpu, case, interpret=False)
    np.testing.assert_allclose(got, expected, atol=2e-3)


def _kernel_and_reference(kernel, case, *, interpret):
    """``kernel``'s output and the reference's on the ragged slots of ``case``."""
    lengths, case = ragged_lengths(case), dict(case)
    window = case.pop("window")
    args, _, _ = random_paged_cache(1, lengths=lengths,
                                    entries=max(RAGGED_LENGTHS) // case["page_size"], **case)
    with jax.default_matmul_precision("highest"):
        expected = np.asarray(paged_decode_attention_reference(*args, window=window))
    return np.asarray(kernel(*args, window=window, interpret=interpret)), expected


@pytest.mark.parametrize("kernel", KERNELS.values(), ids=KERNELS.keys())
def test_kernels_never_read_entries_past_a_slots_last_page(kernel):
    """The paged cache marks a slot's unused entries with the pool size, a page that does
    not exist: a kernel that read one would, on a device, read past the pool. Here the
    entries point (in interpret mode, clipped) at a last page full of NaN that no slot
    uses, so a kernel that read it, even masked, would return NaN. A slot of 32 tokens
    fills its first two pages exactly: its third entry, the first it must not read, is
    where a kernel that counted its pages as 32 // 16 + 1 would read."""
    args, _, _ = random_paged_cache(8, lengths=[0, 1, 17, 32, 33, 50, 64], page_size=16,
                                    kv_heads=2, heads=4, queries=1)
    q, k_pages, v_pages, page_table, lengths, layer = args
    pool = k_pages.shape[1]
    used = -(-lengths // 16)
    page_table = jnp.where(jnp.arange(page_table.shape[1]) < used[:, None], page_table, pool)
    unused_page = int(np.setdiff1d(np.arange(pool), np.asarray(page_table)).max())
    assert unused_page == pool - 1  # where the sentinel's reads are clipped to
    poisoned = [pages.at[:, unused_page].set(jnp.nan) for pages in (k_pages, v_pages)]
    expected = paged_decode_attention_reference(q, k_pages, v_pages, page_table, lengths,
                                                layer)
    got = kernel(q, *poisoned, page_table, lengths, layer, interpret=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=2e-6)


@pytest.mark.parametrize("page_size,keys_per_block",
                         [(16, 64), (16, 16), (32, 128), (8, 64), (8, 16), (4, 64)])
def test_gpu_kernel_lowers_to_triton_without_a_gpu(page_size, keys_per_block):
    """Interpret mode runs the kernel as jnp: it does not check that Triton can express
    it. Lowering for CUDA here, on CPU, runs Pallas' Triton lowering on the decoder's own
    shapes (bfloat16, SmolLM2's 3:1 heads of 64) for an H200: what a GPU would compile,
    short of Triton's own compiler."""
    q = jax.ShapeDtypeStruct((32, 1, 9, 64), jnp.bfloat16)
    pages = jax.ShapeDtypeStruct((30, 700, 3, page_size, 64), jnp.bfloat16)
    table = jax.ShapeDtypeStruct((32, 352 // page_size), jnp.int32)
    lengths, layer = jax.ShapeDtypeStruct((32,), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32)
    attention = functools.partial(paged_decode_attention_gpu, keys_per_block=keys_per_block)
    assert "__gpu$xla.gpu.triton" in lowered_for_h200(attention, q, pages, pages, table,
                                                      lengths, layer)


def test_gpu_kernel_pads_query_rows_past_16_to_a_power_of_two():
    """6 queries a slot (a trie round's) of SmolLM2's 3 query heads per kv head: 18 rows,
    which Triton takes only padded to 32; lowered for an H200 as above."""
    assert [paged_attention_gpu.query_rows(t, g) for t, g in ((1, 3), (6, 3), (1, 32))] == \
        [16, 32, 32]
    q = jax.ShapeDtypeStruct((4, 6, 9, 64), jnp.bfloat16)
    pages = jax.ShapeDtypeStruct((2, 70, 3, 16, 64), jnp.bfloat16)
    table, lengths = (jax.ShapeDtypeStruct(shape, jnp.int32) for shape in ((4, 8), (4,)))
    assert "__gpu$xla.gpu.triton" in lowered_for_h200(
        paged_decode_attention_gpu, q, pages, pages, table, lengths,
        jax.ShapeDtypeStruct((), jnp.int32))


def lowered_for_h200(function, *args) -> str:
    """``function`` jitted, traced on ``args`` and lowered for CUDA on this CPU: its
    StableHLO text."""
    # JAX 0.11 asks which GPU the Triton code is for where none is present (0.10 does not).
    h200 = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132,
                                       platform="gpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",),
                                                                  abstract_device=h200)):
        return jax.jit(function).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def test_compiling_for_a_gpu_traces_its_kernel_on_a_cpu_machine():
    """experiments/device_program.py compiles the decoder on this CPU for a GPU: traced
    within ``compiling_for("gpu")``, "auto" takes the GPU's kernel (not interpreted)
    where the default backend's choice is the jnp path."""
    assert resolve_implementation("auto") == "jnp"
    with compiling_for("gpu"):
        assert resolve_implementation("auto") == "pallas_gpu"
        assert resolve_implementation("pallas") == "pallas_gpu"
        assert resolve_implementation("auto", "tpu") == "pallas_tpu"  # named: that one
    assert resolve_implementation("pallas") == "pallas_interpret"
    with pytest.raises(RuntimeError, match="a failed compile"), compiling_for("gpu"):
        raise RuntimeError("a failed compile")
    assert target_platform() == "cpu"  # not left on the GPU by the error
    args, _, _ = random_paged_cache(5, lengths=[5, 20], page_size=16, kv_heads=1, heads=2,
                                    queries=1)
    with compiling_for("gpu"):
        assert "__gpu$xla.gpu.triton" in lowered_for_h200(paged_decode_attention, *args)
    assert "custom_call" not in jax.jit(paged_decode_attention).lower(*args).as_text()


def test_gpu_kernel_agrees_with_jax_shipped_paged_attention():
    """JAX's kernel takes one layer's pages as [K, P, S, D], one query per slot, and a
    softmax scale of 1: give it the same data laid out its way."""
    args, _, _ = random_paged_cache(2, lengths=[1, 30, 64, 47], page_size=16, kv_heads=2,
                                    heads=4, queries=1)
    q, k_pages, v_pages, page_table, lengths, layer = args
    theirs = jax_paged_attention.paged_attention(
        q[:, 0] * HEAD_DIM ** -0.5, k_pages[layer].transpose(1, 0, 2, 3),
        v_pages[layer].transpose(1, 0, 2, 3), page_table, lengths, k_splits=2,
        pages_per_compute_block=2, interpret=True)
    ours = paged_decode_attention_gpu(*args, interpret=True)
    np.testing.assert_allclose(np.asarray(ours[:, 0]), np.asarray(theirs), atol=2e-6)


def test_auto_takes_jnp_on_cpu_and_pallas_on_accelerators():
    assert resolve_implementation("auto", "cpu") == "jnp"
    assert resolve_implementation("auto", "gpu") == "pallas_gpu"
    # JAX's platform names of a GPU device are GPUs too, named or compiled for.
    assert resolve_implementation("auto", "cuda") == "pallas_gpu"
    assert resolve_implementation("pallas", "rocm") == "pallas_gpu"
    with compiling_for("cuda"):
        assert target_platform() == "gpu"
        assert resolve_implementation("auto") == "pallas_gpu"
    assert resolve_implementation("auto", "tpu") == "pallas_tpu"
    assert resolve_implementation("pallas", "cpu") == "pallas_interpret"
    assert resolve_implementation("jnp", "tpu") == "jnp"
    with pytest.raises(ValueError, match="one of"):
        resolve_implementation("triton")


def test_the_dispatch_hands_window_and_scale_to_the_implementation_it_picks(monkeypatch):
    """paged_decode_attention with window 5 and scale 0.7 calls, with both and the same
    arguments: the reference under "jnp" and "auto" on this CPU, the GPU kernel
    interpreted under "pallas" and compiled for a GPU, the TPU kernel for a TPU."""
    calls = []
    for name in ("reference", "gpu", "tpu"):
        def record(*args, name=name, **options):
            calls.append((name, args, options))
        monkeypatch.setattr(dispatch_module, f"paged_decode_attention_{name}", record)
    args = ("q", "k_pages", "v_pages", "page_table", "lengths", 1)
    for implementation, platform in (("jnp", "cpu"), ("auto", "cpu"), ("pallas", "cpu"),
                                     ("auto", "gpu"), ("auto", "tpu"), ("jnp", "tpu")):
        with compiling_for(platform):
            paged_decode_attention(*args, window=5, scale=0.7, implementation=implementation)
    chosen = dict(window=5, scale=0.7)
    assert calls == [("reference", args, chosen), ("reference", args, chosen),
                     ("gpu", args, dict(chosen, interpret=True)),
                     ("gpu", args, dict(chosen, interpret=False)), ("tpu", args, chosen),
                     ("reference", args, chosen)]


def test_a_jax_without_pallas_triton_takes_the_jnp_path_on_gpus(monkeypatch):
    """JAX 0.11 deprecates Pallas' Triton backend: once a JAX drops it, ``auto`` decodes
    on the jnp path on a GPU, and the kernel, asked for, says why it cannot run."""
    monkeypatch.setattr(paged_attention_gpu, "plgpu", None)
    assert resolve_implementation("auto", "gpu") == "jnp"
    assert resolve_implementation("auto", "tpu") == "pallas_tpu"
    args, _, _ = random_paged_cache(3, lengths=[5, 20], page_size=16, kv_heads=1, heads=2,
                                    queries=1)
    # Not jitted, so no trace another test cached before the patch answers for it.
    with jax.disable_jit(), pytest.raises(RuntimeError, match="no Pallas Triton backend"):
        paged_decode_attention_gpu(*args, interpret=True)


def test_forced_pallas_on_cpu_interprets_the_gpu_kernel():
    args, _, _ = random_paged_cache(3, lengths=[5, 20], page_size=16, kv_heads=1, heads=2,
                                    queries=1)
    np.testing.assert_allclose(np.asarray(paged_decode_attention(*args, implementation="pallas")),
                               np.asarray(paged_decode_attention(*args)), atol=2e-6)


def test_bad_inputs_are_named():
    args, _, _ = random_paged_cache(4, lengths=[5, 20], page_size=16, kv_heads=2, heads=3,
                                    queries=1)
    with pytest.raises(ValueError, match="cannot share"):
        paged_decode_attention_reference(*args)
    args, _, _ = random_paged_cache(4, lengths=[5, 20], page_size=12, kv_heads=1, heads=2,
                                    queries=1)
    with pytest.raises(ValueError, match="page size that is a power of two, got 12"):
        paged_decode_attention_gpu(*args)  # refused before Triton compiles anything
    args, _, _ = random_paged_cache(4, lengths=[5, 20], page_size=8, kv_heads=1, heads=2,
                                    queries=1)
    with pytest.raises(ValueError, match="keys a step reads of at least 16 .*, got 8"):
        paged_decode_attention_gpu(*args, keys_per_block=8)
    with pytest.raises(ValueError, match="lengths must be"):
        paged_decode_attention_reference(*args[:4], args[4][:1], args[5])


def test_bad_shapes_and_sizes_are_named_by_argument():
    args, _, _ = random_paged_cache(4, lengths=[5, 20], page_size=16, kv_heads=1, heads=2,
                                    queries=1)
    q, k_pages, v_pages, page_table, lengths, layer = args
    refused = [
        ((q[:, 0], k_pages, v_pages, page_table),
         r"q must be \[slots, queries, heads, head_dim\], got shape \(2, 2, 16\)"),
        ((q, k_pages, v_pages[..., :8], page_table),
         r"k_pages and v_pages must both be .* got \(2, 9, 1, 16, 16\) and \(2, 9, 1, 16, 8\)"),
        ((q[..., :8], k_pages, v_pages, page_table), "q's head_dim 8 differs from the pages' 16"),
        ((q, k_pages, v_pages, page_table.astype(jnp.float32)),
         r"page_table must be integer \[2, pages_per_slot\], got float32 \(2, 4\)"),
        ((q, k_pages, v_pages, page_table[:1]),
         r"page_table must be integer \[2, pages_per_slot\], got int32 \(1, 4\)")]
    for kernel in (paged_decode_attention_reference, paged_decode_attention_gpu,
                   paged_decode_attention_tpu):
        for bad, message in refused:
            with pytest.raises(ValueError, match=message):
                kernel(*bad, lengths, layer)
    with pytest.raises(ValueError, match="keys_per_block must be a power of two, got 48"):
        paged_decode_attention_gpu(*args, keys_per_block=48)
    narrow = (q[..., :8], k_pages[..., :8], v_pages[..., :8], page_table, lengths, layer)
    with pytest.raises(ValueError, match=r"head_dim of at least 16 .*, got 8"):
        paged_decode_attention_gpu(*narrow)
    wide = [jnp.concatenate([x, x[..., :8]], axis=-1) for x in (q, k_pages, v_pages)]
    with pytest.raises(ValueError, match="a head_dim that is a power of two, got 24"):
        paged_decode_attention_gpu(*wide, page_table, lengths, layer)


@pytest.mark.parametrize("page_size, head_dim, refusal", [
    (16, 64, None), (8, 64, None), (4, 16, None),
    (24, 64, "the GPU kernel needs a page size that is a power of two, got 24"),
    (16, 24, "the GPU kernel needs a head_dim that is a power of two, got 24"),
    (16, 8, "the GPU kernel needs head_dim of at least 16 (Triton's matrix product), got 8"),
])
def test_a_gpu_run_whose_pages_or_heads_the_kernel_cannot_read_takes_the_jnp_attention(
        monkeypatch, page_size, head_dim, refusal):
    """Met at the first decode step of a run on a GPU before (decode.page_size=24, or the
    default world's 24-wide heads on 16-token pages); now "auto" decodes on the jnp path
    there and a forced "pallas" is refused when the decoder is built."""
    assert gpu_kernel_refusal(page_size, head_dim) == refusal
    monkeypatch.setattr(paged_cache, "resolve_implementation",
                        lambda attention: "jnp" if attention == "jnp" else "pallas_gpu")
    auto = Paging(page_size=page_size, num_pages=8)
    assert auto.for_heads(head_dim).attention == ("auto" if refusal is None else "jnp")
    forced = Paging(page_size=page_size, num_pages=8, attention="pallas")
    if refusal is None:
        assert forced.for_heads(head_dim) == forced
    else:
        with pytest.raises(ValueError, match=re.escape(
                f"Paging(attention='pallas') with {page_size}-token pages and heads of "
                f"{head_dim}: {refusal}")):
            forced.for_heads(head_dim)
    monkeypatch.setattr(paged_cache, "resolve_implementation", lambda attention: "jnp")
    assert Paging(page_size=24, num_pages=8).for_heads(24).attention == "auto"  # a CPU
