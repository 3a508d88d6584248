"""Can a small model learn Countdown's value at all? A separate backbone trained on the
exact value of random states, read against it on held-out states, step by step.

``label_quality.py`` asks whether a run's labels or the policy's hidden state
limit Q̂. This asks the question under both: with no policy and no rollout labels, take
states reached by uniformly random legal steps from training problems (one step, or
two), label each with the exact value (the exhaustive solver: can the target still be
reached?), and train a model of the default policy's shape from scratch, with the Q̂
head on its last token, on the texts (question ⊕ steps). The held-out AUC within each
step number is what ranking siblings needs; the AUC over all states also rewards
telling step 1 from step 2, whose positive shares differ.

    python experiments/countdown_value_probe.py --config configs/countdown_verifier.yaml \\
        [--states 8000] [--steps 1500] [KEY=VALUE ...]

(a config file and overrides as for ``python -m qstar_jax.run``: the world and the
policy's shape.) Prints
a table and, as its last line, JSON: {"states": ..., "train_s": ..., "heldout_auc": ...,
"steps": [{"step": 1, "states": ..., "positive": ..., "heldout_auc": ...}, ...]}.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
from flax import nnx

from qstar_jax.config_loading import load_config
from qstar_jax.decoding.token_batch import pad_token_batch
from qstar_jax.models.char_tokenizer import build_char_tokenizer
from qstar_jax.qvalue.backbone import BackboneQ, BackboneQModel
from qstar_jax.qvalue.head import QHeadConfig
from qstar_jax.qvalue.train import TrainConfig, roc_auc, split_indices, train_q_model
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.train_policy import policy_model_config
from qstar_jax.tasks.base import state_text
from qstar_jax.tasks.countdown import COUNTDOWN_ALPHABET


def random_states(ctx: RunContext, count: int, seed: int):
    """``count`` (text, exact value, step number) from random legal play."""
    task = ctx.task
    problems = ctx.problems(ctx.config.task.train_split,
                            ctx.config.policy_training.train_problems)
    prompts = ctx.prompts(problems)
    rng = random.Random(seed)
    texts, values, steps = [], [], []
    while len(texts) < count:
        index = rng.randrange(len(problems))
        numbers = list(problems[index].metadata["numbers"])
        state, moves = tuple(numbers), []
        for _ in range(rng.choice([1, 2])):
            move, _, state = rng.choice(task.solver.moves(state))
            moves.append(move)
        lines = task.solver.trace_lines(numbers, moves)
        texts.append(state_text(prompts[index], lines))
        values.append(task.can_still_succeed(problems[index], lines))
        steps.append(len(lines))
    return texts, np.array(values, np.float32), np.array(steps)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--states", type=int, default=8000)
    parser.add_argument("--steps", type=int, default=1500, help="most training steps")
    parser.add_argument("--config", metavar="YAML",
                        help="a config file as for python -m qstar_jax.run (default: the defaults)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if min(args.states, args.steps) < 1:
        parser.error(f"--states and --steps must be >= 1, got {args.states} and {args.steps}")
    config = load_config(args.config, args.overrides)
    if config.task.name != "countdown":
        raise SystemExit("the exact value exists for Countdown only")
    ctx = RunContext(config=config, out=Path(config.out_dir))  # nothing is written there
    texts, values, step_numbers = random_states(ctx, args.states, config.seed)
    tokenizer = build_char_tokenizer(COUNTDOWN_ALPHABET)
    token_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    width = config.policy_training.hidden_size
    head = QHeadConfig(hidden_size=width, mlp_widths=(width,) * config.q_train.hidden_layers)
    model = BackboneQ(policy_model_config(ctx, tokenizer), head, rngs=nnx.Rngs(config.seed))
    training = TrainConfig(learning_rate=config.q_train.learning_rate,
                           warmup_steps=min(100, args.steps // 10),
                           max_steps=args.steps, batch_size=128,
                           heldout_fraction=config.q_train.holdout_fraction, eval_every=250,
                           patience=config.q_train.patience, seed=config.seed)
    start = time.perf_counter()
    train_q_model(model, pad_token_batch(token_ids, pad_id=tokenizer.pad_token_id,
                                         multiple_of=16), values, training)
    train_s = time.perf_counter() - start
    heldout = split_indices(len(values), training)[1]
    scores = BackboneQModel(model, pad_id=tokenizer.pad_token_id).score_texts(
        [token_ids[i] for i in heldout])
    positive = values[heldout] > 0.5

    def auc(mask):
        value = roc_auc(scores[mask], positive[mask])
        return None if value is None else round(value, 3)

    rows = [{"step": int(step), "states": int((step_numbers == step).sum()),
             "positive": round(float(values[step_numbers == step].mean()), 3),
             "heldout_auc": auc(step_numbers[heldout] == step)}
            for step in sorted(set(step_numbers.tolist()))]
    result = {"states": args.states, "train_s": round(train_s, 1),
              "heldout_auc": auc(np.ones(len(heldout), bool)), "steps": rows}
    print(f"{args.states} random states, trained {train_s:.0f} s; held-out AUC over all "
          f"states {result['heldout_auc']}")
    print(f"{'step':>4} {'states':>7} {'positive':>9} {'AUC':>6}")
    for r in rows:
        print(f"{r['step']:>4} {r['states']:>7} {r['positive']:>9} {str(r['heldout_auc']):>6}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
