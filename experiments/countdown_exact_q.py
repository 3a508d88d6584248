"""Countdown searched with an exact Q̂: the ceiling a perfect value model would give.

Q̂(s, a) is 1 when the trace s ⊕ a is correct or can still reach the target (the
exhaustive solver decides), else 0. Everything else — the policy, K, N, λ, the
rule utility g, the budgets — is the run's, so the gap between this and the learned
Q̂ on the same problems is what Q̂'s errors cost. It evaluates on the policy of an
earlier run (``--reuse``, whose training settings must match the overrides):

    python experiments/countdown_exact_q.py --config configs/countdown_verifier.yaml \\
        --reuse runs/base --out runs/exact task.eval_split=validation \\
        task.eval_problems=200 'eval.methods=[qstar]'

Prints the summary table and, as its last line, JSON:
{"methods": {NAME: {"accuracy": ..., "generated_tokens_per_problem": ..., "n": ...}}}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from qstar_jax.config import ConfigError
from qstar_jax.config_loading import load_config, to_yaml
from qstar_jax.stages.reuse import reuse_trained_outputs
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.evaluate import evaluate


class ExactCountdownQ:
    """The search's ``QValueFunction`` from Countdown's exhaustive solver."""

    def __init__(self, task, problems):
        self.task, self.problems = task, problems

    def score(self, items) -> np.ndarray:
        return np.array([float(self.task.can_still_succeed(
            self.problems[item.problem_index], (*item.prefix_steps, item.step_text)))
            for item in items], np.float64)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuse", required=True, metavar="DIR",
                        help="a run whose training stages finished (its policy is searched)")
    parser.add_argument("--out", required=True, help="output folder (new)")
    parser.add_argument("--config", metavar="YAML",
                        help="the reused run's config file (default: the defaults)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, [*args.overrides, "stages=[evaluate]"])
        if config.task.name != "countdown":
            raise ConfigError("task.name: the exact Q̂ exists for Countdown only")
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
    problems = ctx.problems(config.task.eval_split, config.task.eval_problems)
    summary = evaluate(ctx, q_fn=ExactCountdownQ(ctx.task, problems))
    print((out / "summary.md").read_text())
    print(json.dumps({"methods": {name: {
        "accuracy": entry["accuracy"], "n": entry["n"],
        "generated_tokens_per_problem": round(entry["generated_tokens"] / entry["n"], 1)}
        for name, entry in summary["methods"].items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
