"""The profiler trace summary the benchmarks print (experiments/device_trace.py)."""

import runpy
from pathlib import Path

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
