"""Can a separate small value model, trained from scratch, judge steps better than the
policy's own confidence? (Issue 16's "separate small value model" and "numbers as single
tokens" levers, on a synthetic world's run.)

Trains a Llama-family backbone of our architecture with a Q̂ head (``BackboneQ``), from
random weights, on RUN's solver-labelled steps of 90% of its training problems, plus
``--synthetic`` extra training problems written out by the task's solver: each step of
the solution (labelled γ^(steps left)), a plausible wrong step in its place
(``task.wrong_step``, labelled 0) and, for 30% of them, a state whose earlier line was
wrong and then continued consistently (labelled 0). Text is cut into pieces where every
number below 100 is one token (``--number-tokens``, default) or into characters. Held
out: the labelled steps of the other 10% of RUN's training problems (policy rollouts,
what search meets); per step number, the ROC AUC of the model against "can still reach
the answer", beside that of the step's log-probability under the policy.

    python experiments/value_model_from_scratch.py runs/default --steps 1000

A synthetic problem that asks what a held-out problem asks is left out (the world can deal
one twice). Prints, as its last line, JSON: {"train_rows": ..., "held_out_rows": ...,
"synthetic_problems_left_out": ..., "seconds_per_step": ...,
"auc": ..., "auc_by_step": {"1": ..., ...}, "logprob_auc_by_step": {...}} (an AUC is
null where the held-out steps it ranks are all of one class).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

import numpy as np
from flax import nnx

from qstar_jax.config import EXACT_VALUE_TASKS
from qstar_jax.decoding.token_batch import pad_token_batch
from qstar_jax.models.config import ModelConfig
from qstar_jax.qvalue.backbone import BackboneQ, BackboneQModel
from qstar_jax.qvalue.dataset import load_labelled, load_step_logprobs
from qstar_jax.qvalue.head import QHeadConfig
from qstar_jax.qvalue.train import TrainConfig, roc_auc, train_q_model
from qstar_jax.stages.context import RunContext
from qstar_jax.tasks.base import state_text

HELD_OUT_SHARE = 0.1
DEAD_PREFIX_SHARE = 0.3


class PieceVocabulary:
    """Numbers below 100 as single tokens (or every character alone), then characters."""

    def __init__(self, number_tokens: bool):
        numbers = [str(i) for i in range(10)] + [f"{i:02d}" for i in range(100)]
        pieces = (numbers if number_tokens else []) + [chr(c) for c in range(32, 127)] + ["\n"]
        self.ids = {"<pad>": 0, "<unk>": 1}
        for piece in pieces:
            self.ids.setdefault(piece, len(self.ids))
        self._pattern = re.compile(r"\d\d?|\D" if number_tokens else r".", re.S)

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(piece, 1) for piece in self._pattern.findall(text)]

    encode_input = encode  # no BOS


def synthetic_rows(ctx: RunContext, count: int, gamma: float, seed: int,
                   held_out_prompts: frozenset[str] = frozenset()
                   ) -> tuple[list[str], list[float], int]:
    """States from the solver's traces of ``count`` fresh training problems, with their
    exact discounted values (see the module docstring), and how many of the problems were
    left out for asking what a held-out problem asks (``held_out_prompts``): a procedural
    world can deal the same problem twice, and its solver's steps would then be trained
    on."""
    task, rng = ctx.task, random.Random(seed)
    texts, labels, left_out = [], [], 0
    for problem in ctx.task.load(ctx.config.task.train_split, limit=count, seed=seed + 1):
        prompt = ctx.prompts([problem])[0]
        if prompt in held_out_prompts:
            left_out += 1
            continue
        solution = task.solution_steps(problem)
        for depth in range(len(solution)):
            prefix, live = list(solution[:depth]), True
            if depth and rng.random() < DEAD_PREFIX_SHARE:
                wrong_at = rng.randrange(depth)
                wrong = task.wrong_step(problem, solution[:wrong_at], rng)
                prefix = [*solution[:wrong_at], wrong,
                          *task.solver_completion(problem, (*solution[:wrong_at], wrong))][:depth]
                live = False
            right = task.solver_completion(problem, prefix)
            if not right:
                continue
            value = gamma ** (len(right) - 1) if live else 0.0
            texts.append(state_text(prompt, (*prefix, right[0])))
            labels.append(value)
            if live:
                texts.append(state_text(prompt, (*prefix, task.wrong_step(problem, prefix, rng))))
                labels.append(0.0)
    return texts, labels, left_out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a synthetic-world run whose label stage finished")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--synthetic", type=int, default=5000, help="extra solver-written "
                        "training problems")
    parser.add_argument("--characters", action="store_true", help="one token per character "
                        "instead of numbers as single tokens")
    args = parser.parse_args(argv)
    ctx = RunContext.of_run(args.run)
    if ctx.config.task.name not in EXACT_VALUE_TASKS:
        raise SystemExit(f"needs a synthetic world with an exact solver: {EXACT_VALUE_TASKS}")
    if not all(hasattr(ctx.task, part) for part in ("solver_completion", "wrong_step")):
        # Countdown's solver values states but writes no completions or wrong steps.
        raise SystemExit(f"{ctx.config.task.name}: needs a world whose solver writes "
                         "completions and wrong steps (arithmetic)")
    problems = ctx.problems(ctx.config.task.train_split, ctx.config.task.train_problems)
    prompts = ctx.prompts(problems)
    steps, _ = load_labelled(ctx.labels_path)
    first_held = int(len(problems) * (1 - HELD_OUT_SHARE))
    held = np.array([s.problem_index >= first_held for s in steps])
    train_rows, held_rows = np.flatnonzero(~held), np.flatnonzero(held)
    texts = [state_text(prompts[s.problem_index], (*s.prefix_steps, s.step_text)) for s in steps]
    extra_texts, extra_labels, left_out = synthetic_rows(
        ctx, args.synthetic, ctx.config.label.gamma, ctx.config.seed,
        held_out_prompts=frozenset(prompts[first_held:]))
    vocabulary = PieceVocabulary(number_tokens=not args.characters)
    train_ids = [vocabulary.encode(texts[i]) for i in train_rows]
    train_ids += [vocabulary.encode(t) for t in extra_texts]
    train_y = np.array([steps[i].label for i in train_rows] + extra_labels, np.float32)
    held_steps = [steps[i] for i in held_rows]
    held_ids = [vocabulary.encode(texts[i]) for i in held_rows]
    exact = np.array([ctx.task.can_still_succeed(problems[s.problem_index],
                                                 (*s.prefix_steps, s.step_text))
                      for s in held_steps])
    number = np.array([len(s.prefix_steps) + 1 for s in held_steps])

    width = args.hidden_size
    config = ModelConfig(model_type="llama", vocab_size=len(vocabulary.ids), hidden_size=width,
                         intermediate_size=3 * width, num_layers=args.layers, num_heads=4,
                         num_kv_heads=2, head_dim=width // 4,
                         max_position_embeddings=max(map(len, train_ids + held_ids)) + 8)
    model = BackboneQ(config, QHeadConfig(hidden_size=width, mlp_widths=(width,),
                                          output="sigmoid"), rngs=nnx.Rngs(ctx.config.seed))
    training = TrainConfig(loss="bce", learning_rate=args.learning_rate, max_steps=args.steps,
                           batch_size=args.batch_size, heldout_fraction=0.0,
                           warmup_steps=min(100, args.steps - 1), eval_every=args.steps,
                           checkpoint_every=args.steps, seed=ctx.config.seed)
    started = time.perf_counter()
    train_q_model(model, pad_token_batch(train_ids, pad_id=0, multiple_of=8), train_y,
                  training)
    seconds_per_step = (time.perf_counter() - started) / args.steps

    scores = BackboneQModel(model, pad_id=0).score_texts(held_ids)
    logprobs = load_step_logprobs(ctx.labels_path)

    def rounded_auc(values, labels):  # None where the steps are all of one class
        auc = roc_auc(values, labels)
        return None if auc is None else round(auc, 3)

    def by_step(values):
        return {str(n): rounded_auc(values[number == n], exact[number == n])
                for n in sorted(set(number))}

    report = {"train_rows": len(train_ids), "held_out_rows": len(held_ids),
              "synthetic_problems_left_out": left_out,
              "seconds_per_step": round(seconds_per_step, 3),
              "auc": rounded_auc(scores, exact), "auc_by_step": by_step(scores),
              "logprob_auc_by_step": (None if logprobs is None else by_step(logprobs[held]))}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
