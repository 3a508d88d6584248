"""Does a second, independently trained policy see the first one's mistakes?

Issue 16's open lever: Q̂ ranks a node's children about as the policy's own mode does,
because its strongest input is the step's log-probability under the policy, which is
high exactly on the policy's confident mistakes. A second policy of the same size,
trained from another seed (its own traces and initialisation), may make partly other
mistakes. For every labelled (s, a) of RUN (taken from live states when the run's labels
are: the choice A* makes among a node's children), this reads the step's
log-probability under RUN's policy (saved by the label stage) and under OTHER's policy
(computed here the same way), and reports per step number the ROC AUC of each, and of
their sum, against the exact value of s ⊕ a (the task's solver decides it), and what
decides a search: over the states whose labelled children are both right and wrong, the
share where each score's best child is right.

    python -m qstar_jax.run --out runs/seed1 seed=1 'stages=[train_policy]'
    python experiments/second_opinion.py runs/default runs/seed1/policy

Prints a table and, as its last line, JSON: {"pairs": N, "auc": {"first": ..,
"second": .., "sum": ..}, "auc_by_step": {"1": {"first": .., "second": .., "sum": ..},
...}, "mixed_states": M, "best_child_right": {"first": .., "second": .., "sum": ..}}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from qstar_jax.config import EXACT_VALUE_TASKS
from qstar_jax.qvalue.dataset import load_labelled, load_step_logprobs
from qstar_jax.qvalue.scorers import SecondOpinion
from qstar_jax.qvalue.train import roc_auc
from qstar_jax.stages.context import RunContext


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a synthetic-world run whose label stage "
                        "saved the steps' log-probabilities")
    parser.add_argument("other", type=Path, help="the second policy's checkpoint directory")
    args = parser.parse_args(argv)
    ctx = RunContext.of_run(args.run)
    first = load_step_logprobs(ctx.labels_path)
    if ctx.config.task.name not in EXACT_VALUE_TASKS or first is None:
        raise SystemExit(f"needs a run of {EXACT_VALUE_TASKS} whose labels carry the steps' "
                         "log-probabilities")
    problems = ctx.problems(ctx.config.task.train_split, ctx.config.task.train_problems)
    prompts = ctx.prompts(problems)
    steps, _ = load_labelled(ctx.labels_path)
    second = SecondOpinion(ctx.load(args.other), prompts)(steps)
    exact = np.array([ctx.task.can_still_succeed(problems[s.problem_index],
                                                 (*s.prefix_steps, s.step_text))
                      for s in steps])
    number = np.array([len(s.prefix_steps) + 1 for s in steps])
    scores = {"first": first, "second": second, "sum": first + second}

    def aucs(rows: np.ndarray) -> dict:
        return {name: round(roc_auc(values[rows], exact[rows]) or 0.0, 3)
                for name, values in scores.items()}

    siblings: dict[tuple, list[int]] = {}
    for i, s in enumerate(steps):
        siblings.setdefault((s.problem_index, s.prefix_steps), []).append(i)
    mixed = [np.array(rows) for rows in siblings.values() if len(set(exact[rows])) == 2]
    report = {"pairs": len(steps), "auc": aucs(np.ones(len(steps), bool)),
              "auc_by_step": {str(n): aucs(number == n) for n in sorted(set(number))},
              "mixed_states": len(mixed),
              "best_child_right": {  # None where no state has right and wrong children
                  name: (round(float(np.mean([exact[rows[np.argmax(values[rows])]]
                                              for rows in mixed])), 3) if mixed else None)
                  for name, values in scores.items()}}
    print("step  pairs  first  second  sum")
    for n, row in report["auc_by_step"].items():
        print(f"{n:>4}  {int((number == int(n)).sum()):>5}  {row['first']:.3f}  "
              f"{row['second']:.3f}   {row['sum']:.3f}")
    print(f"states with right and wrong children: {len(mixed)}; best child right: "
          + ", ".join(f"{k} {v}" for k, v in report["best_child_right"].items()))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
