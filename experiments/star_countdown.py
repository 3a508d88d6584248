"""STaR on Countdown (issue 19): does a policy that learns from its own right rationales
get better at the game, and does Q* still add to it?

Round 0 is a weak policy: our small decoder trained from scratch on a few solver traces
(``--weak-problems``), each seen twice, once with its plain question and once with the
answer given as a hint (the solution as one expression: "Use 2 5 7 to make 25 as
(7-2)*5." style), so that it learns to use a hint. Each STaR round
(``qstar_jax.training.star``) then samples ``--samples`` rationales for each of
``--star-problems`` other training problems, keeps each problem's first right one, asks
again with the hint where none was right (a kept rationalization is saved with the plain
question), and fine-tunes the weak policy (not the last round's) on the kept set. A
policy this small has no in-context learning to fall back on: fine-tuned on plain
questions alone it forgets what a hint means and rationalization dries up after one
round (measured: 143, 10 and 4 rationalizations in rounds 1-3). With ``--hinted-copies``
(the default) each kept rationale is trained on twice, under its plain question and
under the hinted one, as the weak policy was; the saved examples hold the plain
question only either way, and no kept rationale quotes its hint. After
each round the policy is judged on the validation problems of ``configs/star_countdown.yaml``
by greedy decoding and by Q* with a Q-hat trained on that policy's own rollouts: a full
pipeline run per round (``<out>/eval_<r>``), resumable like any run.

    python experiments/star_countdown.py --out runs/star_countdown

Prints, as its last line, JSON: {"rounds": R, "greedy_accuracy": [...], "greedy_ci95":
[...], "qstar_accuracy": [...], "qstar_ci95": [...], "kept": [...],
"rationalized": [...], "seconds": ...} with round 0 first (kept[0] = the weak policy's
training problems). Killed, it resumes at the first unfinished round or evaluation.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from flax import nnx
from tqdm import tqdm

from qstar_jax.config import ConfigError, PolicyTrainingConfig
from qstar_jax.config_loading import load_config
from qstar_jax.models.char_tokenizer import build_char_tokenizer
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.lm_training import LMTrainingConfig, pack_examples, train_causal_lm
from qstar_jax.models.loading import load_model
from qstar_jax.outputs.durable import copy_folder_atomically, write_text_atomically
from qstar_jax.policy.text_generator import DecoderTextGenerator
from qstar_jax.run import main as run_pipeline
from qstar_jax.search.interface import TextRequest
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.train_policy import (policy_model_config, remove_training_checkpoints,
                                           save_policy, trace_examples,
                                           training_checkpoint_dir)
from qstar_jax.tasks.base import Problem, join_steps, split_steps
from qstar_jax.tasks.countdown.steps import format_number, parse_step
from qstar_jax.training.star import Example, StarLoop, StarProblem

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "star_countdown.yaml"


def solution_expression(steps: list[str]) -> str:
    """A solution trace as one expression: each step's operands replaced by the
    expressions that made them (an operand no earlier step made is a given number)."""
    made: list[tuple[str, str]] = []  # (value as written, its expression), oldest first

    def take(value) -> str:
        text = format_number(value)
        for i in range(len(made) - 1, -1, -1):
            if made[i][0] == text:
                return f"({made.pop(i)[1]})"
        return text

    for line in steps:
        step = parse_step(line)
        if step is None:
            raise ValueError(f"not a Countdown step: {line!r}")
        left, right = take(step.left), take(step.right)
        made.append((format_number(step.result), f"{left}{step.op}{right}"))
    return made[-1][1]


def star_problem(problem: Problem, hint: str) -> StarProblem:
    question = problem.question.removesuffix(".")
    return StarProblem(id=problem.id, prompt=problem.question + "\n",
                       hinted_prompt=f"{question} {hint}.\n", hint=hint)


class DecoderRationales:
    """``RationaleSampler`` over the decoder: whole traces from any prompt text, a
    bounded number of prompts per decoder batch."""

    def __init__(self, ctx: RunContext, problems: list[Problem], prompts_of: dict[str, int],
                 temperature: float):
        self.generator = DecoderTextGenerator(ctx.runtime(problems),
                                              max_tokens=ctx.config.decode.max_len // 2)
        self.prompts_of, self.temperature = prompts_of, temperature
        self.slots = ctx.config.decode.slots

    def sample(self, prompts, n):
        out, per_batch = [], max(1, self.slots // (n + 1))  # a root and n rows per prompt
        for start in tqdm(range(0, len(prompts), per_batch), desc="sample rationales"):
            chunk = prompts[start:start + per_batch]
            out += [[tuple(split_steps(g.text)) for g in gens]
                    for gens in self.generator.generate([
                        TextRequest(problem_index=self.prompts_of[p], prompt=p, num_samples=n,
                                    temperature=self.temperature, stream="star")
                        for p in chunk])]
        return out


def train_policy_on(model: LlamaModel, tokenizer, examples: list[tuple[str, list[str]]],
                    steps: int, seed: int, folder: Path, settings: PolicyTrainingConfig
                    ) -> None:
    """Trains ``model`` on (prompt, steps) pairs for ``steps`` steps with the batch size,
    learning rate, warm-up, gradient clipping and checkpoint interval of ``settings`` and
    saves it to ``folder`` (a killed round resumes from its last checkpoint)."""
    tokens, mask = pack_examples(trace_examples(tokenizer, [p for p, _ in examples],
                                                [s for _, s in examples]),
                                 tokenizer.pad_token_id)
    log = train_causal_lm(model, tokens, mask, LMTrainingConfig(
        steps=steps, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        warmup_steps=min(settings.warmup_steps, steps // 5), seed=seed,
        max_grad_norm=settings.max_grad_norm, checkpoint_every=settings.checkpoint_every),
        desc=f"train {folder.name}", checkpoint_dir=training_checkpoint_dir(folder))
    save_policy(model, tokenizer, log, folder)
    remove_training_checkpoints(folder)


def evaluate(policy: Path, folder: Path, overrides: list[str]) -> dict:
    """A pipeline run of ``configs/star_countdown.yaml`` on ``policy``: its summary."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "policy").exists():
        copy_folder_atomically(policy, folder / "policy")  # a killed copy is not reused
    if run_pipeline([str(CONFIG), *overrides, "--out", str(folder)]) != 0:
        raise SystemExit(f"the evaluation run in {folder} failed")
    return json.loads((folder / "summary.json").read_text())["methods"]


# The settings a folder's weak policy, rounds and evaluations were made with (--rounds
# aside: a rerun with more rounds goes on from the last one).
SETTINGS_FILE = "star_settings.json"
SETTINGS = ("weak_problems", "weak_steps", "star_problems", "samples", "round_steps",
            "temperature", "hinted_copies", "overrides")


def check_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Stop unless ``args`` are the settings ``--out`` was first made with (saved there
    on a first run): the script reuses what the folder holds, so a rerun under others
    would report its own settings over another run's policies."""
    settings = {name: getattr(args, name) for name in SETTINGS}
    saved_path = args.out / SETTINGS_FILE
    if not saved_path.is_file():
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomically(saved_path, json.dumps(settings))
        return
    saved = json.loads(saved_path.read_text())
    differ = [f"--{name.replace('_', '-')} {saved.get(name)!r} there, {settings[name]!r} now"
              for name in SETTINGS if saved.get(name) != settings[name]]
    if differ:
        parser.error(f"--out {args.out} holds a run made with other settings "
                     f"({'; '.join(differ)}): rerun with its settings to go on, or name "
                     "another --out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/star_countdown"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--weak-problems", type=int, default=150,
                        help="solver traces the round-0 policy learns from")
    parser.add_argument("--weak-steps", type=int, default=500)
    parser.add_argument("--star-problems", type=int, default=3000,
                        help="training problems each round samples rationales for")
    parser.add_argument("--samples", type=int, default=4, help="rationales per problem")
    parser.add_argument("--round-steps", type=int, default=500,
                        help="fine-tuning steps per round")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--hinted-copies", action=argparse.BooleanOptionalAction, default=True,
                        help="also train each kept rationale under its hinted question")
    parser.add_argument("overrides", nargs="*", help="dotted key=value for the evaluation runs")
    args = parser.parse_args()
    if min(args.rounds, args.weak_problems, args.weak_steps, args.star_problems, args.samples,
           args.round_steps) < 1:
        parser.error("--rounds, --weak-problems, --weak-steps, --star-problems, --samples and "
                     "--round-steps must be >= 1")
    if not args.temperature > 0:  # met by the sampler only after the weak policy trains
        parser.error(f"--temperature must be greater than 0, got {args.temperature}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; name a folder")
    started = time.perf_counter()
    try:
        config = load_config(CONFIG, args.overrides)
    except ConfigError as error:
        parser.error(f"config error: {error}")
    if not {"greedy", "qstar"} <= set(config.eval.methods):  # each round reports both
        parser.error(f"eval.methods={list(config.eval.methods)}: the evaluation runs report "
                     "greedy and qstar; list both")
    check_settings(parser, args)
    ctx = RunContext(config=config, out=args.out)
    task, rng = ctx.task, random.Random(config.seed)
    problems = ctx.problems(config.task.train_split, args.weak_problems + args.star_problems)
    solutions = [task.solution_steps(p, rng) for p in problems]
    star_problems = [star_problem(p, "as " + solution_expression(s))
                     for p, s in zip(problems, solutions)]
    weak, rest = slice(0, args.weak_problems), slice(args.weak_problems, None)
    tokenizer = build_char_tokenizer(task.alphabet)

    base = args.out / "weak_policy"
    if not base.exists():
        model = LlamaModel(policy_model_config(ctx, tokenizer), rngs=nnx.Rngs(config.seed))
        pairs = [(sp.prompt, s) for sp, s in zip(star_problems[weak], solutions[weak])]
        pairs += [(sp.hinted_prompt, s) for sp, s in zip(star_problems[weak], solutions[weak])]
        train_policy_on(model, tokenizer, pairs, args.weak_steps, config.seed, base,
                        config.policy_training)

    by_id = {p.id: p for p in problems}
    hinted_of = {sp.id: sp.hinted_prompt for sp in star_problems}
    prompts_of = {text: i for i, sp in enumerate(star_problems)
                  for text in (sp.prompt, sp.hinted_prompt)}

    def sampler(policy_dir: Path):
        policy_ctx = RunContext(config=load_config(CONFIG, [
            *args.overrides, f"policy.source={policy_dir.absolute()}"]), out=args.out)
        return DecoderRationales(policy_ctx, problems, prompts_of, args.temperature)

    def finetune(examples: list[Example], r: int) -> Path:
        folder = args.out / f"round_{r}" / "policy"
        if not examples and not folder.exists():  # nothing kept: the round keeps the base
            copy_folder_atomically(base, folder)
        if not folder.exists():
            pairs = [(e.prompt, list(e.rationale)) for e in examples]
            if args.hinted_copies:
                pairs += [(hinted_of[e.problem_id], list(e.rationale)) for e in examples]
            train_policy_on(load_model(base).model, tokenizer, pairs, args.round_steps,
                            config.seed + r + 1, folder, config.policy_training)
        return folder

    loop = StarLoop(folder=args.out, rounds=args.rounds, samples=args.samples,
                    sampler=sampler, finetune=finetune,
                    save=lambda policy, folder: None,  # finetune saved it already
                    load=lambda folder: base if folder is None else folder,
                    is_right=lambda sp, steps: task.grade(by_id[sp.id], join_steps(steps)))
    kept = loop.run(star_problems[rest])
    rationalized = [sum(json.loads(line)["rationalized"] for line in
                        (loop.round_folder(r) / "examples.jsonl").read_text().splitlines())
                    for r in range(args.rounds)]

    policies = [base] + [loop.round_folder(r) / "policy" for r in range(args.rounds)]
    result = {"rounds": args.rounds, "greedy_accuracy": [], "greedy_ci95": [],
              "qstar_accuracy": [], "qstar_ci95": [],
              "kept": [args.weak_problems, *kept], "rationalized": [0, *rationalized]}
    for r, policy in enumerate(policies):
        methods = evaluate(policy, args.out / f"eval_{r}", args.overrides)
        for method in ("greedy", "qstar"):
            result[f"{method}_accuracy"].append(methods[method]["accuracy"])
            result[f"{method}_ci95"].append([round(x, 4) for x in methods[method]["ci95"]])
        print(f"round {r}: kept {result['kept'][r]} (rationalized {result['rationalized'][r]}), "
              f"greedy {methods['greedy']['accuracy']:.3f}, "
              f"Q* {methods['qstar']['accuracy']:.3f}", flush=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
