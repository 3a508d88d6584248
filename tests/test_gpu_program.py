"""experiments/gpu_program.py: one token's kernels read from a step loop's optimized HLO
(a GPU-like module written out here, since compiling for a GPU needs JAX's CUDA plugin),
and the script end to end on this CPU."""

import json
import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "experiments/gpu_program.py"

# A token loop as XLA:GPU compiles a batch-1 projection over an [in, out] kernel: the
# product stored by one kernel (8 MiB) and reduced by another; the cache updated in place;
# the sampler under a conditional whose larger branch has two kernels; a cuBLAS call.
TOKEN_LOOP = """\
%fused_multiply (p0: bf16[2048,2048], p1: bf16[1,2048]) -> bf16[2048,2048] {
  %p0 = bf16[2048,2048]{1,0} parameter(0)
  %p1 = bf16[1,2048]{1,0} parameter(1)
  %b = bf16[2048,2048]{1,0} broadcast(%p1), dimensions={0,1}, metadata={op_name="jit(f)/dot_general"}
  ROOT %m = bf16[2048,2048]{1,0} multiply(%b, %p0), metadata={op_name="jit(f)/dot_general"}
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
    import gpu_program
    figures = gpu_program.analyse(TOKEN_LOOP, num_layers=1)
    # multiply, reduce, the cache write, the cuBLAS call, the sampled branch's two.
    assert figures["kernels_per_token"] == 6
    # Only the stored product: the reduction writes 4 KiB, the cache write is in place.
    assert figures["products_written_mb_per_token"] == round(2048 * 2048 * 2 / 1e6, 1)
    kinds = figures["kinds"]
    assert kinds["custom call __cublas$gemm"] == 1
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
        code = run["machine_code"]
        assert code["gpu_code_for"] == [] and code["bytes"] > 0, code


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


def test_the_kernel_needs_pages(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--target", "cpu", "--attention", "pallas"])
    with pytest.raises(SystemExit, match="give --page-size"):
        runpy.run_path(str(SCRIPT), run_name="__main__")
