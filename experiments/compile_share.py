"""Where a run's evaluation time goes: compiling, against everything else, per method.

Each method runs alone, in a process of its own, from an empty compile cache (as a first
run meets it) and with JAX's compile log on. Its wall-clock is the run summary's; its
compile seconds are JAX's log lines ("Finished XLA compilation of ... in S sec") summed,
with the programs that took over a second (those the persistent cache keeps) apart.

    python experiments/compile_share.py configs/smollm2_mctsr.yaml [OVERRIDE ...] \\
        --reuse RUN --methods greedy best_of_n qstar mctsr

RUN is a run of the same config whose training stages finished: its trained outputs are
reused (``--reuse``), so only the evaluate stage runs. Prints a line per method and, as
its last line, JSON: {"greedy": {"wall_s": ..., "compile_s": ..., "programs": ...,
"programs_over_1s": ..., "compile_over_1s_s": ...}, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

COMPILED = re.compile(r"Finished XLA compilation of \S+ in ([0-9.eE+-]+) sec")
LONG_COMPILE_S = 1.0  # jax_persistent_cache_min_compile_time_secs' default


def compile_seconds(log: str) -> list[float]:
    """Each program's compile time, from JAX's compile log (JAX_LOG_COMPILES=1)."""
    return [float(match.group(1)) for match in COMPILED.finditer(log)]


def compile_share(seconds: list[float], wall_s: float) -> dict:
    long = [s for s in seconds if s > LONG_COMPILE_S]
    return {"wall_s": round(wall_s, 1), "compile_s": round(sum(seconds), 1),
            "programs": len(seconds), "programs_over_1s": len(long),
            "compile_over_1s_s": round(sum(long), 1)}


def time_method(config: str, reuse: str, method: str, overrides: list[str],
                scratch: Path) -> dict:
    """``method`` evaluated alone from an empty compile cache: its compile share."""
    out = scratch / method
    env = dict(os.environ, JAX_LOG_COMPILES="1",
               QSTAR_COMPILE_CACHE=str(scratch / f"{method}_compile_cache"))
    command = [sys.executable, "-m", "qstar_jax.run", config, "--reuse", reuse,
               "--out", str(out), "stages=[evaluate]", f"eval.methods=[{method}]", *overrides]
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return compile_share(compile_seconds(done.stderr),
                         summary["methods"][method]["wall_s"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--reuse", required=True,
                        help="a run of the same config whose training stages finished")
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("overrides", nargs="*",
                        help="key=value settings for every run, before --reuse")
    args = parser.parse_args(argv)
    shares = {}
    with tempfile.TemporaryDirectory(prefix="compile_share_") as scratch:
        for method in args.methods:
            share = shares[method] = time_method(args.config, args.reuse, method,
                                                 args.overrides, Path(scratch))
            print(f"{method}: {share['wall_s']:.1f} s, of which {share['compile_s']:.1f} s "
                  f"compiling {share['programs']} programs ({share['programs_over_1s']} "
                  f"over 1 s: {share['compile_over_1s_s']:.1f} s)", flush=True)
    print(json.dumps(shares))
    return shares


if __name__ == "__main__":
    main()
