"""The profiler trace summary the benchmarks print (experiments/device_trace.py)."""

import gzip
import json
import runpy
import sys
from pathlib import Path

import pytest

TRACE = runpy.run_path(str(Path(__file__).parents[1] / "experiments" / "device_trace.py"))
busy_us, summary = TRACE["busy_us"], TRACE["summary"]


def _trace(*kernels):
    """A Perfetto trace with a GPU process (kernels as (name, start, length) on two
    streams) and a host process whose events must not count."""
    meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
            {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}}]
    events = [{"ph": "X", "pid": 2, "tid": i % 2, "name": name, "ts": start, "dur": length}
              for i, (name, start, length) in enumerate(kernels)]
    host = [{"ph": "X", "pid": 1, "tid": 7, "name": "PjitFunction", "ts": 0.0, "dur": 500.0}]
    return {"traceEvents": meta + events + host}


def test_busy_time_counts_overlapping_kernels_once():
    events = [{"ts": 0.0, "dur": 10.0}, {"ts": 5.0, "dur": 10.0}, {"ts": 6.0, "dur": 2.0},
              {"ts": 30.0, "dur": 5.0}]
    assert busy_us(events) == 20.0  # [0, 15) and [30, 35)
    assert busy_us([]) == 0.0


def test_summary_ranks_the_device_kernels_by_total_time():
    figures = summary(_trace(("gemm", 0.0, 20.0), ("copy", 10.0, 30.0), ("gemm", 100.0, 20.0),
                             ("norm", 130.0, 1.0)), top=2)
    assert figures["kind"] == "device kernels" and figures["events"] == 4
    assert figures["busy_ms"] == 0.061 and figures["span_ms"] == 0.131  # 40 + 20 + 1 us
    assert [(row["name"], row["count"], row["total_ms"]) for row in figures["top"]] == [
        ("gemm", 2, 0.04), ("copy", 1, 0.03)]


# A GPU module's batch-1 projection as XLA:GPU leaves it: the dot rewritten as a multiply
# and a reduction over the weight's major axis, fused with the norm's scale.
GPU_HLO = """HloModule jit_sample_step, is_scheduled=true

%region_0.1 (a.0: f32[], b.0: f32[]) -> f32[] {
  %a.0 = f32[] parameter(0)
  %b.0 = f32[] parameter(1)
  ROOT %add.3 = f32[] add(%a.0, %b.0)
}

%fused_reduce.58 (param_0.1: bf16[2048,2048], param_1.2: bf16[1,2048]) -> bf16[1,2048] {
  %param_1.2 = bf16[1,2048]{1,0} parameter(1)
  %bitcast.4 = bf16[2048]{0} bitcast(%param_1.2)
  %broadcast.1 = bf16[2048,2048]{1,0} broadcast(%bitcast.4), dimensions={0}, metadata={op_name="jit(sample_step)/while/body/dot_general"}
  %param_0.1 = bf16[2048,2048]{1,0} parameter(0)
  %multiply.2 = bf16[2048,2048]{1,0} multiply(%broadcast.1, %param_0.1), metadata={op_name="jit(sample_step)/while/body/dot_general"}
  %constant.9 = bf16[] constant(0)
  ROOT %reduce.1 = bf16[1,2048]{1,0} reduce(%multiply.2, %constant.9), dimensions={0}, to_apply=%region_0.1
}

ENTRY %main.7 (p.1: bf16[2048,2048], x.1: bf16[1,2048]) -> bf16[1,2048] {
  %p.1 = bf16[2048,2048]{1,0} parameter(0)
  %x.1 = bf16[1,2048]{1,0} parameter(1)
  ROOT %input_reduce_fusion.58 = bf16[1,2048]{1,0} fusion(%p.1, %x.1), kind=kInput, calls=%fused_reduce.58
}
"""


def test_a_kernel_is_described_by_what_its_fusion_computes():
    contents = TRACE["fusion_contents"](GPU_HLO)
    assert contents == {"input_reduce_fusion_58": (
        "broadcast, multiply, reduce (from dot_general); reads bf16[1,2048]{1,0} "
        "bf16[2048,2048]{1,0}; writes bf16[1,2048]{1,0}")}


def test_every_fusion_of_a_compiled_function_is_described():
    """On this CPU's own compiled HLO: each fusion the entry computation calls, under the
    name a trace gives its kernel, with the operations of the computation it calls."""
    import jax
    import jax.numpy as jnp

    text = jax.jit(lambda x, w, b: jnp.tanh(jnp.sum(x[:, None] * w, axis=0) + b)).lower(
        jnp.ones(64), jnp.ones((64, 32)), jnp.ones(32)).compile().as_text()
    contents = TRACE["fusion_contents"](text)
    entry = text[text.index("ENTRY"):]
    fusions = [line.split(" = ")[0].split("%")[-1] for line in entry.splitlines()
               if " fusion(" in line]
    assert fusions and sorted(contents) == sorted(TRACE["kernel_name"](f) for f in fusions)
    assert any("tanh" in described for described in contents.values())


def test_without_a_device_the_host_runtime_threads_are_summarised():
    """XLA:CPU's trace: kernels run on its tf_XLA* threads; the Python thread's events and
    a trace of neither do not count."""
    meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
            {"ph": "M", "pid": 1, "tid": 3, "name": "thread_name",
             "args": {"name": "tf_XLACpuCompile"}},
            {"ph": "M", "pid": 1, "tid": 4, "name": "thread_name", "args": {"name": "python3"}}]
    events = [{"ph": "X", "pid": 1, "tid": 3, "name": "fusion_1", "ts": 10.0, "dur": 4.0},
              {"ph": "X", "pid": 1, "tid": 3, "name": "fusion_1", "ts": 20.0, "dur": 2.0},
              {"ph": "X", "pid": 1, "tid": 4, "name": "PjitFunction", "ts": 0.0, "dur": 90.0}]
    figures = summary({"traceEvents": meta + events})
    assert figures["kind"] == "host runtime events (no device in the trace)"
    assert (figures["events"], figures["busy_ms"], figures["span_ms"]) == (2, 0.006, 0.012)
    assert figures["top"] == [{"name": "fusion_1", "count": 2, "total_ms": 0.006,
                               "mean_us": 3.0}]
    assert summary({"traceEvents": meta[:1]}) == {
        "kind": "host runtime events (no device in the trace)", "events": 0, "busy_ms": 0.0,
        "span_ms": 0.0, "top": []}


def test_the_command_prints_a_saved_traces_top_kernels_and_what_they_compute(
        tmp_path, monkeypatch, capsys):
    """A saved trace read again with --top 2 and the HLO beside it: a header of its 4
    kernels' span and busy time, then the 2 busiest with total ms, count and mean us,
    the fused reduction described under its kernel."""
    trace = tmp_path / "t.json.gz"
    with gzip.open(trace, "wt") as file:
        json.dump(_trace(("input_reduce_fusion_58", 0.0, 2000.0), ("copy", 2500.0, 2800.0),
                         ("input_reduce_fusion_58", 6000.0, 1000.0), ("norm", 8000.0, 500.0)),
                  file)
    hlo = tmp_path / "module.hlo.txt"
    hlo.write_text(GPU_HLO)
    monkeypatch.setattr(sys, "argv", ["device_trace.py", str(trace), "--top", "2",
                                      "--hlo", str(hlo)])
    TRACE["main"]()
    assert capsys.readouterr().out.splitlines() == [
        "[trace t.json.gz] 4 device kernels over 8.5 ms, busy 6.3 ms",
        "[trace t.json.gz]       3.000 ms      2x   1500.00 us  input_reduce_fusion_58",
        "[trace t.json.gz]       = broadcast, multiply, reduce (from dot_general); reads "
        "bf16[1,2048]{1,0} bf16[2048,2048]{1,0}; writes bf16[1,2048]{1,0}",
        "[trace t.json.gz]       2.800 ms      1x   2800.00 us  copy"]


def test_kernels_of_two_modules_are_told_apart_and_only_the_given_ones_described(
        monkeypatch, capsys):
    """XLA:CPU's events carry their HLO module: the prefill's input_reduce_fusion.58 is
    not the step loop's, whose HLO is given, though both have its name."""
    def event(module, start, length):
        return {"ph": "X", "pid": 2, "tid": 0, "name": "input_reduce_fusion_58", "ts": start,
                "dur": length, "args": {"hlo_module": module}}

    trace = _trace(("copy", 0.0, 100.0))
    trace["traceEvents"] += [event("jit_prefill", 200.0, 3000.0),
                             event("jit_sample_step", 4000.0, 1000.0),
                             event("jit_sample_step", 6000.0, 1000.0)]
    figures = summary(trace)
    assert [(row["name"], row["count"]) for row in figures["top"]] == [
        ("jit_prefill:input_reduce_fusion_58", 1), ("jit_sample_step:input_reduce_fusion_58", 2),
        ("copy", 1)]
    assert TRACE["module_name"](GPU_HLO) == "jit_sample_step"
    TRACE["print_summary"]("t", figures, hlo_text=GPU_HLO)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith("jit_prefill:input_reduce_fusion_58")
    assert lines[2].endswith("jit_sample_step:input_reduce_fusion_58")
    assert lines[3].startswith("[trace t]       = broadcast, multiply, reduce")
    assert lines[4].endswith("copy") and len(lines) == 5



def test_a_folder_or_a_file_that_is_no_gzipped_trace_is_refused_by_name(tmp_path, monkeypatch,
                                                                         capsys):
    plain = tmp_path / "trace.json.gz"
    plain.write_text("{}")
    for path, message in [(tmp_path, f"{tmp_path} is not a file: give the <label>.json.gz"),
                          (plain, f"cannot read {plain} as a gzipped JSON trace: ")]:
        monkeypatch.setattr(sys, "argv", ["device_trace.py", str(path)])
        with pytest.raises(SystemExit) as stopped:
            TRACE["main"]()
        assert stopped.value.code == 2 and message in capsys.readouterr().err
