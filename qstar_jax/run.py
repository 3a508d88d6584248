"""python -m qstar_jax.run [CONFIG.yaml] [key=value ...] [--out DIR]

Runs the configured stages in order (train_policy, collect, label, train_q, evaluate);
each is skipped when its outputs already exist in the output folder, so rerunning a
killed run resumes it. With no arguments: the default Countdown experiment.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from qstar_jax.config import ConfigError, load_config, to_yaml
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.evaluate import evaluate
from qstar_jax.stages.rollouts import collect, label
from qstar_jax.stages.train_policy import train_policy
from qstar_jax.stages.train_q import train_q

STAGE_FUNCTIONS = {"train_policy": train_policy, "collect": collect, "label": label,
                   "train_q": train_q, "evaluate": evaluate}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m qstar_jax.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="YAML config (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    parser.add_argument("--out", help="output folder (default: the config's out_dir)")
    args = parser.parse_args(argv)
    if args.config and "=" in args.config:  # no YAML file, only overrides
        args.overrides.insert(0, args.config)
        args.config = None
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out or config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = out / "config.yaml"
    if resolved.exists() and resolved.read_text() != to_yaml(config):
        print(f"config error: {out} holds a run with a different config ({resolved}); "
              "choose another --out or delete the folder", file=sys.stderr)
        return 2
    resolved.write_text(to_yaml(config))
    ctx = RunContext(config=config, out=out)
    for stage in config.stages:
        start = time.perf_counter()
        print(f"[qstar] stage {stage} ...", flush=True)
        STAGE_FUNCTIONS[stage](ctx)
        print(f"[qstar] stage {stage} done in {time.perf_counter() - start:.1f}s", flush=True)
    if "evaluate" in config.stages:
        print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
