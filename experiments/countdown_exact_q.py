"""Countdown searched with an exact Q̂: the ceiling a perfect value model would give.

Q̂(s, a) is 1 when the trace s ⊕ a is correct or can still reach the target (the
exhaustive solver decides), else 0. Everything else — the policy, K, N, λ, the
rule utility g, the budgets — is the run's, so the gap between this and the learned
Q̂ on the same problems is what Q̂'s errors cost. It evaluates on the policy of an
earlier run (``--reuse``, whose training settings must match the overrides):

    python experiments/countdown_exact_q.py --reuse runs/base --out runs/exact \\
        task.eval_split=validation task.eval_problems=200 'eval.methods=[qstar]'

Prints the summary table and, as its last line, JSON:
{"methods": {NAME: {"accuracy": ..., "generated_tokens_per_problem": ..., "n": ...}}}.
"""

from __future__ import annotations

import sys

import numpy as np

from qstar_jax.reused_evaluation import evaluate_reused_run


class ExactCountdownQ:
    """The search's ``QValueFunction`` from Countdown's exhaustive solver."""

    def __init__(self, task, problems):
        self.task, self.problems = task, problems

    def score(self, items) -> np.ndarray:
        return np.array([float(self.task.can_still_succeed(
            self.problems[item.problem_index], (*item.prefix_steps, item.step_text)))
            for item in items], np.float64)


def main(argv: list[str]) -> int:
    def exact_q(ctx):
        split, count = ctx.config.task.eval_split, ctx.config.task.eval_problems
        return {"q_fn": ExactCountdownQ(ctx.task, ctx.problems(split, count))}
    return evaluate_reused_run(argv, __doc__.split("\n\n")[0], evaluate_options=exact_q,
                               countdown_only=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
