"""A run's Q̂ labels and trained Q̂, read against the exact value (the synthetic worlds,
Countdown and arithmetic chains, whose solvers decide it).

For every labelled (s, a) of RUN, the exact value is 1 when s ⊕ a is correct or can still
reach the answer (the task's exact solver decides). Per step number of a (1 = the first
step): how many pairs, the share labelled positive, the share exactly positive, the share
of exactly positive pairs the labels call positive (recall; a positive best-of-rollouts
label is a found solution, so a dead state is never called positive), and the ROC AUC
of the run's Q̂ on its held-out rows against the labels and against the exact value;
last, the same AUC for a head trained the same way on the exact values instead of the
labels. Low recall means the labels limit Q̂; a low AUC even when trained on the exact
values means Q̂'s input (the policy's hidden state) does. Where the label stage saved the
steps' log-probabilities, the AUC of that log-probability alone against the exact value,
per step, is the last column (how much of Q̂'s signal is the policy's own confidence).

    python experiments/label_quality.py runs/default

Prints a table and, as its last line, JSON: {"steps": [{"step": 1, "pairs": ...,
"label_positive": ..., "exact_positive": ..., "label_recall": ...,
"heldout_q_auc_vs_label": ..., "heldout_q_auc_vs_exact": ...,
"exact_trained_auc_vs_exact": ..., "logprob_auc_vs_exact": ...}, ...]}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from flax import nnx

from qstar_jax.config import EXACT_VALUE_TASKS, QBackbone
from qstar_jax.qvalue.checkpoint import load_q_head
from qstar_jax.qvalue.dataset import load_labelled, load_step_logprobs
from qstar_jax.qvalue.head import QHead, QHeadModel
from qstar_jax.qvalue.train import roc_auc, split_indices, train_q_model
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.train_q import head_config, labelled_head_inputs, train_config


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a synthetic-world run whose train_q stage "
                        "finished")
    run = parser.parse_args(argv).run
    ctx = RunContext.of_run(run)
    if (ctx.config.task.name not in EXACT_VALUE_TASKS
            or ctx.config.q_train.backbone != QBackbone.policy):
        raise SystemExit(f"the exact value exists for {EXACT_VALUE_TASKS}, and this reads a "
                         "Q̂ head on the policy's hidden states (q_train.backbone=policy)")
    problems = ctx.problems(ctx.config.task.train_split, ctx.config.task.train_problems)
    steps, features = load_labelled(ctx.labels_path)
    labels = np.array([s.label > 0 for s in steps])  # a solution found, discounted or not
    exact = np.array([ctx.task.can_still_succeed(problems[s.problem_index],
                                                 (*s.prefix_steps, s.step_text))
                      for s in steps])
    step_logprobs = load_step_logprobs(ctx.labels_path)
    inputs = labelled_head_inputs(ctx, steps, features)
    q = QHeadModel(load_q_head(ctx.q_dir, policy_config=ctx.policy.config)).score_hidden(inputs)
    training = train_config(ctx, len(steps))
    exact_head = QHead(head_config(ctx), rngs=nnx.Rngs(ctx.config.seed))
    train_q_model(exact_head, inputs, exact.astype(np.float32), training, progress=False)
    q_exact = QHeadModel(exact_head).score_hidden(inputs)
    heldout = np.zeros(len(steps), bool)
    heldout[split_indices(len(steps), training)[1]] = True
    number = np.array([len(s.prefix_steps) + 1 for s in steps])
    rows = []
    for step in sorted(set(number)):
        on = number == step
        held = on & heldout
        auc_label, auc_exact = roc_auc(q[held], labels[held]), roc_auc(q[held], exact[held])
        auc_upper = roc_auc(q_exact[held], exact[held])
        auc_logprob = (None if step_logprobs is None
                       else roc_auc(step_logprobs[on], exact[on]))
        rows.append({"step": int(step), "pairs": int(on.sum()),
                     "label_positive": round(float(labels[on].mean()), 3),
                     "exact_positive": round(float(exact[on].mean()), 3),
                     "label_recall": (round(float(labels[on & exact].mean()), 3)
                                      if (on & exact).any() else None),
                     "heldout_q_auc_vs_label": None if auc_label is None else round(auc_label, 3),
                     "heldout_q_auc_vs_exact": None if auc_exact is None else round(auc_exact, 3),
                     "exact_trained_auc_vs_exact": (None if auc_upper is None
                                                    else round(auc_upper, 3)),
                     "logprob_auc_vs_exact": (None if auc_logprob is None
                                              else round(auc_logprob, 3))})
    print(f"{'step':>4} {'pairs':>6} {'label+':>7} {'exact+':>7} {'recall':>7} "
          f"{'AUC/label':>10} {'AUC/exact':>10} {'exact-fit':>10} {'logprob':>8}")
    for r in rows:
        print(f"{r['step']:>4} {r['pairs']:>6} {r['label_positive']:>7} {r['exact_positive']:>7} "
              f"{str(r['label_recall']):>7} {str(r['heldout_q_auc_vs_label']):>10} "
              f"{str(r['heldout_q_auc_vs_exact']):>10} "
              f"{str(r['exact_trained_auc_vs_exact']):>10} "
              f"{str(r['logprob_auc_vs_exact']):>8}")
    print(json.dumps({"steps": rows}))
    return rows


if __name__ == "__main__":
    main()
