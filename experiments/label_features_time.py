"""What the label stage's feature pass costs on a finished run, and whether it still gives
the features that run saved: its labelled (s, a) pairs through ``StepFeatures`` as the
stage calls it (``last_step_features``), twice (the first call compiles, the second is
timed), with how many rows (carriers, ``qvalue/features.py``) the pairs rode on.

    python experiments/label_features_time.py RUN

RUN: a run folder with a finished label stage (``labels.jsonl`` and its features). Prints
the pairs, rows and both calls' times and, last, JSON: {"pairs", "rows", "first_call_s",
"timed_call_s", "hidden_max_diff", "logprob_max_diff"}, the last two against the saved
features (0.0 when the run was labelled by this code on this machine).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from qstar_jax.qvalue.dataset import features_path, load_labelled, load_step_logprobs
from qstar_jax.qvalue.features import StepFeatures, shared_carriers, step_texts
from qstar_jax.stages.context import RunContext


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    ctx = RunContext.of_run(args.run)
    steps, saved_hidden = load_labelled(ctx.labels_path)
    if saved_hidden is None:
        raise SystemExit(f"{features_path(ctx.labels_path)} is missing: label the run first")
    saved_logprobs = load_step_logprobs(ctx.labels_path)
    problems = ctx.problems(ctx.config.task.train_split, ctx.config.task.train_problems)
    prompts = ctx.prompts(problems)
    states, actions = step_texts(prompts, steps)
    tokenizer = ctx.policy.tokenizer
    rows = len(shared_carriers([tokenizer.encode(s + a) for s, a in zip(states, actions)]))
    features = StepFeatures(ctx.policy.model, tokenizer, fine_rows=True)
    times = []
    for _ in range(2):
        began = time.perf_counter()
        hidden, logprobs = features(states, actions)
        times.append(round(time.perf_counter() - began, 2))
    print(f"{len(steps)} labelled pairs on {rows} rows; first call {times[0]} s "
          f"(with compiling), timed call {times[1]} s")
    print(json.dumps({
        "pairs": len(steps), "rows": rows, "first_call_s": times[0], "timed_call_s": times[1],
        "hidden_max_diff": float(np.abs(hidden - saved_hidden).max()),
        "logprob_max_diff": (None if saved_logprobs is None
                             else float(np.abs(logprobs - saved_logprobs).max()))}))


if __name__ == "__main__":
    main()
