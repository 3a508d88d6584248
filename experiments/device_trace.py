"""Where a benchmark's device time goes: one region under ``jax.profiler``, summarized.

``traced(directory, label)`` runs its block under ``jax.profiler.trace`` with a Perfetto
trace written (``perfetto_trace.json.gz``: every kernel the device ran, with its start and
length) and, when the block ends, prints a summary of it: the region's wall-clock, the
device's busy time (the union of its kernels' intervals), the number of kernels, and the
kernels that took most of it, by name (XLA names a kernel after its fusion or custom
call). A device busy for a small share of the wall-clock waits on the host (launches,
transfers, Python); a busy one is as fast as its kernels, and the top ones say which.

Given the optimized HLO of what ran (``traced(..., hlo=...)``), it saves it beside the
trace and says under each busy kernel what its fusion computes (``fusion_contents``): its
operations, the JAX operations they were lowered from, and its operands' and result's
shapes. A kernel named ``input_reduce_fusion_58`` whose operations are a multiply and a
reduce, lowered from ``dot_general``, over a [2048, 2048] operand, is a matrix product
XLA rewrote as a reduction.

Where the trace says which HLO module ran a kernel (XLA:CPU's runtime events do), the
kernel is named after it, ``jit_sample_step:ynn_fusion.2``, and only the given HLO's own
kernels are described: every compiled program numbers its own fusions, so a prefill and a
step loop may both run a ``ynn_fusion.2``.

On a CPU the trace holds no device: XLA's CPU runtime threads stand in (their events are
whole executables, not kernels), so the summary says what the host ran and little else.

Used by ``bench_decode --trace DIR`` (with the step loop's HLO) and ``bench_search --trace
DIR``; read a saved trace again with ``python experiments/device_trace.py TRACE.json.gz
[--top N] [--hlo HLO.txt]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import json
import re
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

# An HLO instruction: "[ROOT ]%name = shape opcode(operands), attributes".
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+(?: \S+)*?) ([\w\-]+)\(")
# A computation's header: "[ENTRY ]%name (parameters) -> shape {".
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_SKIPPED_OPCODES = {"parameter", "constant", "bitcast", "get-tuple-element", "tuple"}


def device_events(trace: dict) -> tuple[list[dict], str]:
    """The kernel events of a Perfetto trace (``traceEvents`` of phase X) on its
    accelerator processes (named ``/device:...``), and what they are; without any, those
    of XLA's host runtime threads."""
    events = trace["traceEvents"]
    process_names = {e["pid"]: e["args"]["name"] for e in events
                     if e.get("ph") == "M" and e.get("name") == "process_name"}
    devices = {pid for pid, name in process_names.items() if name.startswith("/device:")}
    if devices:
        return [e for e in events if e.get("ph") == "X" and e["pid"] in devices], "device kernels"
    thread_names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
                    if e.get("ph") == "M" and e.get("name") == "thread_name"}
    runtime = {key for key, name in thread_names.items() if name.startswith("tf_XLA")}
    return ([e for e in events if e.get("ph") == "X" and (e["pid"], e.get("tid")) in runtime],
            "host runtime events (no device in the trace)")


def busy_us(events: list[dict]) -> float:
    """Microseconds covered by at least one of ``events`` (overlaps counted once)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted((e["ts"], e["ts"] + e.get("dur", 0.0)) for e in events):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def event_name(event: dict) -> str:
    """A kernel event's name, after "MODULE:" where the trace says which HLO module ran it
    (``args.hlo_module``): each compiled program numbers its own fusions, so a prefill's
    ``ynn_fusion.2`` and a step loop's are different kernels."""
    module = event.get("args", {}).get("hlo_module")
    return f"{module}:{event['name']}" if module else event["name"]


def summary(trace: dict, *, top: int = 12) -> dict:
    """Busy time, kernel count and the ``top`` kernels (``event_name``) by total time of
    one trace."""
    events, kind = device_events(trace)
    by_name: dict[str, list[float]] = defaultdict(list)
    for event in events:
        by_name[event_name(event)].append(event.get("dur", 0.0))
    ranked = sorted(by_name.items(), key=lambda item: -sum(item[1]))
    return {"kind": kind, "events": len(events), "busy_ms": busy_us(events) / 1e3,
            "span_ms": ((max(e["ts"] + e.get("dur", 0.0) for e in events)
                         - min(e["ts"] for e in events)) / 1e3 if events else 0.0),
            "top": [{"name": name[:90], "count": len(durations),
                     "total_ms": round(sum(durations) / 1e3, 3),
                     "mean_us": round(sum(durations) / len(durations), 2)}
                    for name, durations in ranked[:top]]}


def kernel_name(instruction: str) -> str:
    """The name a GPU profiler trace gives the kernel of HLO instruction ``instruction``
    (XLA:CPU's runtime events keep the instruction's own name: normalized the same)."""
    return re.sub(r"[.\-]", "_", instruction)


@dataclasses.dataclass(frozen=True)
class Fusion:
    """A fusion instruction of an optimized HLO module and what its computation holds."""
    shape: str  # what it writes
    opcodes: list[str]  # its computation's operations in order, less parameters,
    #                     constants, bitcasts and tuples
    sources: list[str]  # the JAX operations they came from (the end of each op_name)
    reads: list[str]  # its parameters' shapes
    root: str  # the opcode of its computation's root ("dynamic-update-slice": in place)


def computation_lines(hlo_text: str) -> dict[str, list[str]]:
    """Each computation of an HLO module's text: its instruction lines, by its name."""
    computations: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = computations.setdefault(header.group(1), [])
        elif current is not None and _INSTRUCTION.match(line):
            current.append(line)
    return computations


def parse_fusions(hlo_text: str) -> dict[str, Fusion]:
    """Every fusion instruction of an optimized HLO module, by its instruction name."""
    computations: dict[str, list[tuple[str, str, str]]] = {}  # name -> (shape, opcode, line)
    fusions: dict[str, tuple[str, str]] = {}  # instruction -> (shape, computation)
    for computation, lines in computation_lines(hlo_text).items():
        for line in lines:
            name, shape, opcode = _INSTRUCTION.match(line).groups()
            computations.setdefault(computation, []).append((shape, opcode, line))
            called = re.search(r"calls=%?([\w.\-]+)", line)
            if opcode == "fusion" and called:
                fusions[name] = (shape, called.group(1))
    parsed = {}
    for name, (shape, called) in fusions.items():
        body = computations.get(called, [])
        roots = [op for _, op, line in body if line.lstrip().startswith("ROOT ")]
        parsed[name] = Fusion(
            shape=shape,
            opcodes=list(dict.fromkeys(op for _, op, _ in body if op not in _SKIPPED_OPCODES)),
            sources=list(dict.fromkeys(
                match.group(1).rsplit("/", 1)[-1] for _, _, line in body
                for match in [re.search(r'op_name="([^"]+)"', line)] if match)),
            reads=[shape for shape, op, _ in body if op == "parameter"],
            root=roots[0] if roots else "")
    return parsed


def describe(fusion: Fusion) -> str:
    """"multiply, reduce (from dot_general); reads ...; writes ...": what it computes."""
    return (f"{', '.join(fusion.opcodes) or 'nothing'}"
            + (f" (from {', '.join(fusion.sources)})" if fusion.sources else "")
            + f"; reads {' '.join(fusion.reads) or 'nothing'}; writes {fusion.shape}")


def fusion_contents(hlo_text: str) -> dict[str, str]:
    """For each fusion instruction of an optimized HLO module, by its kernel name: what
    it computes (``describe``)."""
    return {kernel_name(name): describe(fusion)
            for name, fusion in parse_fusions(hlo_text).items()}


def module_name(hlo_text: str) -> str | None:
    """The name of an HLO module's text ("HloModule jit_sample_step, ..."): what a
    trace's events of it give as ``hlo_module``."""
    match = re.match(r"HloModule ([\w.\-]+)", hlo_text)
    return match.group(1) if match else None


def described(name: str, contents: dict[str, str], module: str | None) -> str | None:
    """What kernel ``name`` (``event_name``) computes, from ``contents`` of HLO module
    ``module``: nothing for another module's kernel of the same name."""
    ran_in, _, kernel = name.rpartition(":")
    if ran_in and module is not None and ran_in != module:
        return None
    return contents.get(kernel_name(kernel))


def print_summary(label: str, figures: dict, wall_s: float | None = None,
                  hlo_text: str | None = None) -> None:
    """The summary's lines; ``hlo_text``, the optimized HLO of what ran, says under each
    of its module's kernels what it computes (``fusion_contents``)."""
    contents = fusion_contents(hlo_text) if hlo_text else {}
    module = module_name(hlo_text) if hlo_text else None
    wall = f"{wall_s * 1e3:.1f} ms wall, " if wall_s is not None else ""
    print(f"[trace {label}] {wall}{figures['events']} {figures['kind']} over "
          f"{figures['span_ms']:.1f} ms, busy {figures['busy_ms']:.1f} ms", flush=True)
    for row in figures["top"]:
        print(f"[trace {label}]   {row['total_ms']:9.3f} ms {row['count']:6d}x "
              f"{row['mean_us']:9.2f} us  {row['name']}", flush=True)
        what = described(row["name"], contents, module)
        if what:
            print(f"[trace {label}]       = {what}", flush=True)


@contextlib.contextmanager
def traced(directory: Path, label: str, *, top: int = 12,
           hlo: Callable[[], str] | None = None):
    """Run the block under the profiler; then save its trace as
    ``directory/<label>.json.gz`` and print its summary. ``hlo``: returns, once the block
    has run, the optimized HLO of what it ran, saved as ``<label>.hlo.txt`` and read to
    say what the busiest kernels compute."""
    import jax

    work = Path(directory) / f".{label}"
    shutil.rmtree(work, ignore_errors=True)
    start = time.perf_counter()
    with jax.profiler.trace(str(work), create_perfetto_trace=True):
        yield
    wall_s = time.perf_counter() - start
    found = sorted(work.rglob("perfetto_trace.json.gz"))
    if not found:
        print(f"[trace {label}] the profiler wrote no Perfetto trace under {work}")
        return
    saved = Path(directory) / f"{label}.json.gz"
    shutil.move(found[-1], saved)
    shutil.rmtree(work, ignore_errors=True)
    text = None
    if hlo is not None:
        text = hlo()
        (Path(directory) / f"{label}.hlo.txt").write_text(text)
    with gzip.open(saved) as file:
        print_summary(label, summary(json.load(file), top=top), wall_s, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", type=Path, help="a perfetto_trace.json.gz")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--hlo", type=Path, default=None,
                        help="the optimized HLO of what ran (a saved <label>.hlo.txt)")
    args = parser.parse_args()
    if args.top < 1:
        parser.error(f"--top must be at least 1, got {args.top}")
    if not args.trace.is_file():
        parser.error(f"{args.trace} is not a file: give the <label>.json.gz a --trace DIR "
                     "holds, or a profiler's perfetto_trace.json.gz")
    try:
        with gzip.open(args.trace) as file:
            trace = json.load(file)
    except (OSError, EOFError, ValueError) as error:  # not gzip, cut short, not JSON
        parser.error(f"cannot read {args.trace} as a gzipped JSON trace: {error}")
    print_summary(args.trace.name, summary(trace, top=args.top),
                  hlo_text=args.hlo.read_text() if args.hlo else None)


if __name__ == "__main__":
    main()
