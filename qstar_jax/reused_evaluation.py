"""The command line of experiments that search a finished run's policy another way (e.g.
with an exact Q̂): ``--reuse DIR --out DIR [key=value ...]``; evaluate on what DIR
trained, then print the summary table and a JSON line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from qstar_jax.config import ConfigError, load_config, to_yaml
from qstar_jax.reuse import reuse_trained_outputs
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.evaluate import evaluate


def evaluate_reused_run(argv: Sequence[str], description: str, *,
                        evaluate_options: Callable[[RunContext], dict[str, Any]],
                        countdown_only: bool = False) -> int:
    """Exit status 0, or 2 on a config error. ``evaluate_options(ctx)``: keyword
    arguments for ``evaluate`` (e.g. ``q_fn``).

    Last line printed, JSON: {"methods": {NAME: {"accuracy": ..., "n": ...,
    "generated_tokens_per_problem": ...}}}.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--reuse", required=True, metavar="DIR",
                        help="a run whose training stages finished (its policy is searched)")
    parser.add_argument("--out", required=True, help="output folder (new)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    try:
        config = load_config(None, [*args.overrides, "stages=[evaluate]"])
        if countdown_only and config.task.name != "countdown":
            raise ConfigError("task.name: this experiment exists for Countdown only")
        out = Path(args.out)
        if out.exists():
            raise ConfigError(f"--out {out} exists; give a new folder")
        out.mkdir(parents=True)
        reuse_trained_outputs(Path(args.reuse), out, config)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    (out / "config.yaml").write_text(to_yaml(config))
    ctx = RunContext(config=config, out=out)
    summary = evaluate(ctx, **evaluate_options(ctx))
    print((out / "summary.md").read_text())
    print(json.dumps({"methods": {name: {
        "accuracy": entry["accuracy"], "n": entry["n"],
        "generated_tokens_per_problem": round(entry["generated_tokens"] / entry["n"], 1)}
        for name, entry in summary["methods"].items()}}))
    return 0
