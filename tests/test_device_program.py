"""experiments/device_program.py: one token's kernels read from a step loop's optimized HLO
(a GPU-like module written out here, since compiling for a GPU needs JAX's CUDA plugin),
and the script end to end on this CPU."""

import json
import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "experiments/device_program.py"

# A token loop as XLA:GPU compiles a batch-1 projection over an [in, out] kernel sliced
# from stacked layers: the slice copied out (8 MiB), the product stored by one kernel
# (8 MiB) and reduced by another; the cache updated in place; the sampler under a
# conditional whose larger branch has two kernels; a cuBLAS call.
TOKEN_LOOP = """\
%fused_multiply (p0: bf16[2048,2048], p1: bf16[1,2048]) -> bf16[2048,2048] {
  %p0 = bf16[2048,2048]{1,0} parameter(0)
  %p1 = bf16[1,2048]{1,0} parameter(1)
  %b = bf16[2048,2048]{1,0} broadcast(%p1), dimensions={0,1}, metadata={op_name="jit(f)/dot_general"}
  ROOT %m = bf16[2048,2048]{1,0} multiply(%b, %p0), metadata={op_name="jit(f)/dot_general"}
}
%fused_slice (p0.4: bf16[4,2048,2048], p1.4: s32[]) -> bf16[1,2048,2048] {
  %p0.4 = bf16[4,2048,2048]{2,1,0} parameter(0)
  %p1.4 = s32[] parameter(1)
  %z = s32[] constant(0)
  %ds = bf16[1,2048,2048]{2,1,0} dynamic-slice(%p0.4, %p1.4, %z, %z), dynamic_slice_sizes={1,2048,2048}, metadata={op_name="jit(f)/dynamic_slice"}
  ROOT %cp = bf16[1,2048,2048]{2,1,0} copy(%ds), metadata={op_name="jit(f)/dynamic_slice"}
}
%fused_reduce (p0.1: bf16[2048,2048]) -> bf16[2048] {
  %p0.1 = bf16[2048,2048]{1,0} parameter(0)
  %c = f32[] constant(0)
  ROOT %r = bf16[2048]{0} reduce(%p0.1, %c), dimensions={0}, to_apply=%add, metadata={op_name="jit(f)/dot_general"}
}
%fused_write (p0.2: bf16[2,1,256,64], p1.2: bf16[1,1,1,64]) -> bf16[2,1,256,64] {
  %p0.2 = bf16[2,1,256,64]{3,2,1,0} parameter(0)
  %p1.2 = bf16[1,1,1,64]{3,2,1,0} parameter(1)
  ROOT %s = bf16[2,1,256,64]{3,2,1,0} scatter(%p0.2, %p1.2), metadata={op_name="jit(f)/scatter"}
}
%fused_exp (p0.3: f32[1,512]) -> f32[1,512] {
  %p0.3 = f32[1,512]{1,0} parameter(0)
  ROOT %e = f32[1,512]{1,0} exponential(%p0.3), metadata={op_name="jit(f)/exp"}
}
%greedy (g: f32[1,512]) -> f32[1,512] {
  %g = f32[1,512]{1,0} parameter(0)
  ROOT %fusion.9 = f32[1,512]{1,0} fusion(%g), kind=kLoop, calls=%fused_exp
}
%sampled (h: f32[1,512]) -> f32[1,512] {
  %h = f32[1,512]{1,0} parameter(0)
  %fusion.7 = f32[1,512]{1,0} fusion(%h), kind=kLoop, calls=%fused_exp
  ROOT %fusion.8 = f32[1,512]{1,0} fusion(%fusion.7), kind=kLoop, calls=%fused_exp
}
%body (state: (bf16[2048,2048], bf16[1,2048], bf16[2,1,256,64], f32[1,512])) -> (bf16[2048,2048], bf16[1,2048], bf16[2,1,256,64], f32[1,512]) {
  %state = (bf16[2048,2048], bf16[1,2048], bf16[2,1,256,64], f32[1,512]) parameter(0)
  %w = bf16[2048,2048]{1,0} get-tuple-element(%state), index=0
  %x = bf16[1,2048]{1,0} get-tuple-element(%state), index=1
  %cache = bf16[2,1,256,64]{3,2,1,0} get-tuple-element(%state), index=2
  %logits = f32[1,512]{1,0} get-tuple-element(%state), index=3
  %stack = bf16[4,2048,2048]{2,1,0} parameter(1)
  %i = s32[] constant(2)
  %loop_dynamic_slice_fusion = bf16[1,2048,2048]{2,1,0} fusion(%stack, %i), kind=kLoop, calls=%fused_slice
  %loop_multiply_fusion = bf16[2048,2048]{1,0} fusion(%w, %x), kind=kLoop, calls=%fused_multiply
  %input_reduce_fusion = bf16[2048]{0} fusion(%loop_multiply_fusion), kind=kInput, calls=%fused_reduce
  %new = bf16[1,1,1,64]{3,2,1,0} bitcast(%input_reduce_fusion)
  %written = bf16[2,1,256,64]{3,2,1,0} fusion(%cache, %new), kind=kLoop, calls=%fused_write
  %gemm = f32[1,512]{1,0} custom-call(%logits), custom_call_target="__cublas$gemm"
  %pred = pred[] constant(true)
  %drawn = f32[1,512]{1,0} conditional(%pred, %gemm, %gemm), true_computation=%sampled, false_computation=%greedy
  ROOT %next = (bf16[2048,2048], bf16[1,2048], bf16[2,1,256,64], f32[1,512]) tuple(%w, %x, %written, %drawn)
}
ENTRY %main (w0: bf16[2048,2048]) -> bf16[2048,2048] {
  %w0 = bf16[2048,2048]{1,0} parameter(0)
  %loop = (bf16[2048,2048], bf16[1,2048], bf16[2,1,256,64], f32[1,512]) while(%w0), condition=%cond, body=%body
  ROOT %out = bf16[2048,2048]{1,0} get-tuple-element(%loop), index=0
}
"""


@pytest.fixture(autouse=True)
def experiments_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))


def test_one_tokens_kernels_are_counted_with_the_products_they_store():
    import device_program
    figures = device_program.analyse(TOKEN_LOOP, num_layers=1)
    # the slice's copy, multiply, reduce, the cache write, the cuBLAS call, the sampled
    # branch's two.
    assert figures["kernels_per_token"] == 7
    # Only the stored product: the reduction writes 4 KiB, the cache write is in place.
    assert figures["products_written_mb_per_token"] == round(2048 * 2048 * 2 / 1e6, 1)
    assert figures["copies_written_mb_per_token"] == round(2048 * 2048 * 2 / 1e6, 1)
    kinds = figures["kinds"]
    assert kinds["custom call __cublas$gemm"] == 1
    assert figures["custom_calls"] == {"__cublas$gemm": 1}
    assert kinds["exponential (from exp); reads f32[1,512]{1,0}; writes f32[1,512]{1,0}"] == 2
    assert kinds["broadcast, multiply (from dot_general); reads bf16[2048,2048]{1,0} "
                 "bf16[1,2048]{1,0}; writes bf16[2048,2048]{1,0}"] == 1


def test_the_script_compiles_both_layer_readings_for_this_cpu(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--target", "cpu", "--random-llama", "tiny",
                                      "--batches", "1", "--top", "3"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["target"] == "cpu"
    assert [(r["layer_weights"], r["batch"]) for r in figures["runs"]] == [
        ("per-layer", 1), ("per-layer-transposed", 1)]
    for run in figures["runs"]:
        assert run["kernels_per_token"] > 2 * 10  # two layers' worth and the sampler
        assert run["kernels_per_layer"] == round(run["kernels_per_token"] / 2, 2)
        assert len(run["kinds"]) == 3
        assert run["products_written_mb_per_token"] == 0  # XLA:CPU keeps dots as dots
        assert run["copies_written_mb_per_token"] == 0
        code = run["machine_code"]
        assert code["gpu_code_for"] == [] and code["bytes"] > 0, code


def test_gpu_architectures_are_whole_names_in_the_executable():
    import device_program
    blob = b"\x00sm_90a\x00\x9fsm_9,\x01sm_80 sm_100\x00xsm_90\x00sm_9012"
    assert device_program.ARCHITECTURE.findall(blob) == [b"sm_90a", b"sm_80", b"sm_100"]


def test_the_script_compiles_pages_read_by_the_kernel(monkeypatch, capsys):
    """On pages with --attention pallas the short call interprets the kernel on this CPU
    and the program is traced again for the target (here the CPU: interpreted again)."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--target", "cpu", "--random-llama", "tiny",
                                      "--batches", "1", "--layer-weights",
                                      "per-layer-transposed", "--page-size", "16",
                                      "--attention", "pallas", "--top", "1"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (figures["page_size"], figures["attention"]) == (16, "pallas")
    assert figures["runs"][0]["kernels_per_token"] > 2 * 10


FUNCTIONS_ARGV = ["--target", "cpu", "--random-llama", "tiny", "--batches", "1",
                  "--layer-weights", "per-layer-kernels", "--page-size", "16", "--attention",
                  "pallas", "--top", "1", "--functions", "sample_step", "sample_trie",
                  "prefill", "fork", "copy_pages"]


def test_every_function_the_search_calls_is_compiled(monkeypatch, capsys):
    """--functions: the trie round, prefill, fork and page copy too, each called once on
    this CPU (a fork, a continued prompt, a trie) and compiled for the target."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *FUNCTIONS_ARGV])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    out = capsys.readouterr().out
    runs = json.loads(out.strip().splitlines()[-1])["runs"]
    assert [run["function"] for run in runs] == FUNCTIONS_ARGV[-5:]
    assert all("error" not in run for run in runs)
    by_function = {run["function"]: run for run in runs}
    assert by_function["sample_trie"]["kernels_per_token"] > 2 * 10
    assert by_function["prefill"]["kernels_per_token"] > 2 * 10  # a call's: the whole stack
    assert "prefill, per-layer-kernels, batch 1: " in out and " kernels a call " in out


def test_a_function_that_does_not_compile_is_reported_and_fails_the_run(monkeypatch, capsys):
    import device_program

    def compiled(decoder, name, device=None):
        if name == "fork":
            raise RuntimeError("Triton could not lower this")
        return original(decoder, name, device)
    original = device_program.Decoder.compiled
    monkeypatch.setattr(device_program.Decoder, "compiled", compiled)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *FUNCTIONS_ARGV[:-5], "sample_step",
                                      "fork"])
    with pytest.raises(SystemExit, match="1"):
        device_program.main()
    out = capsys.readouterr().out
    runs = json.loads(out.strip().splitlines()[-1])["runs"]
    assert runs[1] == {"function": "fork", "layer_weights": "per-layer-kernels", "batch": 1,
                       "error": "RuntimeError: Triton could not lower this"}
    assert "error" not in runs[0]
    assert "fork, per-layer-kernels, batch 1: DOES NOT COMPILE: RuntimeError" in out


def test_copying_pages_needs_pages(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--target", "cpu", "--functions",
                                      "copy_pages"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert "copy_pages copies pages: give --page-size too" in capsys.readouterr().err


def test_an_unknown_target_is_named_with_the_known_ones(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--target", "h100x"])
    with pytest.raises(SystemExit, match=r"no target 'h100x'.*h200.*v5e"):
        runpy.run_path(str(SCRIPT), run_name="__main__")


def test_the_kernel_needs_pages(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--target", "cpu", "--attention", "pallas"])
    with pytest.raises(SystemExit, match="give --page-size"):
        runpy.run_path(str(SCRIPT), run_name="__main__")


# A token loop whose layers run as a nested loop, as a scan over stacked layers compiles:
# its trip count annotated (XLA:GPU) or only in its condition (XLA:TPU).
SCANNED_LAYERS = """\
%fused_layer (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  ROOT %e = f32[8]{0} exponential(%p), metadata={op_name="jit(f)/exp"}
}
%layer_body (a: (s32[], f32[8])) -> (s32[], f32[8]) {
  %a = (s32[], f32[8]) parameter(0)
  %x = f32[8]{0} get-tuple-element(%a), index=1
  %fusion.1 = f32[8]{0} fusion(%x), kind=kLoop, calls=%fused_layer
  ROOT %fusion.2 = f32[8]{0} fusion(%fusion.1), kind=kLoop, calls=%fused_layer
}
%layer_cond (c: (s32[], f32[8])) -> pred[] {
  %c = (s32[], f32[8]) parameter(0)
  %constant.7 = s32[]{:T(128)} constant(16)
  %i = s32[]{:T(128)} get-tuple-element(%c), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %constant.7), direction=LT
}
%token_body (t: (s32[], f32[8])) -> (s32[], f32[8]) {
  %t = (s32[], f32[8]) parameter(0)
  %layers = (s32[], f32[8]) while(%t), condition=%layer_cond, body=%layer_body{annotation}
  ROOT %fusion.3 = f32[8]{0} fusion(%layers), kind=kLoop, calls=%fused_layer
}
ENTRY %main (w: (s32[], f32[8])) -> (s32[], f32[8]) {
  %w = (s32[], f32[8]) parameter(0)
  ROOT %loop = (s32[], f32[8]) while(%w), condition=%token_cond, body=%token_body
}
"""


@pytest.mark.parametrize("annotation", [', backend_config={"known_trip_count":{"n":"16"}}', ""],
                         ids=["annotated", "in-the-condition"])
def test_a_scan_over_the_layers_counts_its_kernels_once_a_layer(annotation):
    import device_program
    figures = device_program.analyse(SCANNED_LAYERS.replace("{annotation}", annotation),
                                     num_layers=16)
    assert figures["kernels_per_token"] == 16 * 2 + 1


def test_a_move_into_on_chip_memory_is_not_a_copy():
    """XLA:TPU prefetches a layer's weights into another memory space (S(1) in the
    layout); on a GPU the same slice copied within device memory is a copy."""
    import device_program
    from device_trace import Fusion

    def slice_to(layout):
        return Fusion(shape=f"bf16[1,2048,2048]{{{layout}}}", opcodes=["dynamic-slice"],
                      sources=["dynamic_slice"], reads=["bf16[16,2048,2048]{2,1,0}"],
                      root="dynamic-slice")
    assert device_program.copies_an_array(slice_to("2,1,0"))
    assert not device_program.copies_an_array(slice_to("1,2,0:T(8,128)(2,1)S(1)"))


def test_a_stored_product_is_a_big_elementwise_fusion_from_a_dot_general():
    """A loop fusion from dot_general writing 8 MiB stores a product; a dot or a
    convolution computes one, a reduction or an in-place cache update stores none, and
    neither does a fusion of a MiB less a byte. Only the moves of 1 MiB or more are copies;
    a slice that also multiplies is not a move."""
    import device_program
    from device_trace import Fusion

    def fusion(opcodes, root, shape="bf16[2048,2048]{1,0}"):
        return Fusion(shape=shape, opcodes=opcodes, sources=["dot_general"], reads=[],
                      root=root)
    assert device_program.writes_a_product(fusion(["broadcast", "multiply"], "multiply"))
    for opcodes, root in ((["dot"], "dot"), (["convolution"], "convolution"),
                          (["multiply", "reduce"], "reduce"),
                          (["multiply", "dynamic-update-slice"], "dynamic-update-slice"),
                          (["multiply", "scatter"], "scatter")):
        assert not device_program.writes_a_product(fusion(opcodes, root)), root
    assert not device_program.writes_a_product(fusion(["multiply"], "multiply", "u8[1048575]"))
    assert device_program.writes_a_product(fusion(["multiply"], "multiply", "u8[1048576]"))
    assert device_program.copies_an_array(fusion(["dynamic-slice", "copy"], "copy"))
    assert not device_program.copies_an_array(fusion(["dynamic-slice", "multiply"], "multiply"))
    assert not device_program.copies_an_array(fusion(["copy"], "copy", "f32[262143]"))
    # A tuple's elements summed, each at its type's width.
    assert device_program.array_bytes("(s32[], bf16[3,4]{1,0}, pred[5], f64[2])") == \
        4 + 24 + 5 + 16
