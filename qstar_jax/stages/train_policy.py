"""Stage train_policy (synthetic worlds: Countdown, arithmetic chains): a small decoder of
our architecture trained from scratch on solver traces, saved as an HF checkpoint
directory in ``out/policy``, its parameters for meshes beside (``sharded_params``). With
``policy_training.value_weight`` > 0 a value head is trained jointly on traces with a
wrong step in them (``lm_training.ValueRows``). With ``q_train.second_opinion=scratch`` a
second policy is trained the same way from the next seed into ``out/second_policy``: the
run with ``seed`` + 1 would train it alike. Training checkpoints its progress beside its
target (``out/policy.training``, every ``policy_training.checkpoint_every`` steps): a
killed run resumes from the last checkpoint, not from step 0, to the policy a run never
killed trains; the checkpoints are deleted once the policy is saved."""

from __future__ import annotations

import dataclasses
import functools
import json
import random
import shutil
from pathlib import Path
from typing import Iterable, Sequence

from flax import nnx

from qstar_jax.config import SCRATCH
from qstar_jax.models.char_tokenizer import build_char_tokenizer
from qstar_jax.models.config import ModelConfig
from qstar_jax.models.hf_export import save_hf_checkpoint
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.lm_training import (LMTrainingConfig, pack_examples,
                                          pack_value_rows, train_causal_lm)
from qstar_jax.models.sharded_params import PARAMS_FOLDER, save_params
from qstar_jax.parallel import barrier, is_writer
from qstar_jax.stages.context import RunContext
from qstar_jax.tasks.base import Problem, state_text


def policy_model_config(ctx: RunContext, tokenizer) -> ModelConfig:
    """The from-scratch policy's architecture (``policy_training``) over ``tokenizer``."""
    pt = ctx.config.policy_training
    return ModelConfig(
        model_type="llama", vocab_size=len(tokenizer), hidden_size=pt.hidden_size,
        intermediate_size=pt.intermediate_size, num_layers=pt.num_layers,
        num_heads=pt.num_heads, num_kv_heads=pt.num_kv_heads,
        head_dim=pt.hidden_size // pt.num_heads, tie_word_embeddings=True,
        max_position_embeddings=ctx.config.decode.max_len,
        bos_token_id=tokenizer.bos_token_id, eos_token_ids=(tokenizer.eos_token_id,))


def train_policy(ctx: RunContext) -> None:
    if ctx.config.policy.source != SCRATCH:
        return
    train_from_scratch(ctx, ctx.out / "policy")
    if ctx.config.q_train.second_opinion == SCRATCH:
        next_seed = dataclasses.replace(ctx.config, seed=ctx.config.seed + 1)
        train_from_scratch(dataclasses.replace(ctx, config=next_seed), ctx.second_opinion_dir)


def training_checkpoint_dir(target: Path) -> Path:
    """Where the training of the policy saved into ``target`` checkpoints its progress
    (``<target>.training``, beside it) until the policy is saved."""
    return target.with_name(target.name + ".training")


def train_from_scratch(ctx: RunContext, target: Path) -> None:
    """A policy trained on ``ctx``'s problems, traces and seed into ``target`` (skipped
    when it is there). Training checkpoints its progress every
    ``policy_training.checkpoint_every`` steps into ``training_checkpoint_dir(target)``, so
    a killed run resumes from its last checkpoint to the policy a run never killed
    trains; once the policy is saved, the checkpoints are deleted."""
    checkpoints = training_checkpoint_dir(target)
    if (target / "config.json").exists():
        remove_training_checkpoints(target)  # a kill between saving and deleting left them
        return
    pt = ctx.config.policy_training
    problems = ctx.problems(ctx.config.task.train_split, pt.train_problems)
    rng = random.Random(ctx.config.seed)
    solutions = [ctx.task.solution_steps(p, rng) for p in problems]
    tokenizer = build_char_tokenizer(ctx.task.alphabet)
    encode = functools.partial(token_ids, tokenizer)
    prompts = ctx.prompts(problems)
    examples = trace_examples(tokenizer, prompts, solutions)
    value_rows = None
    length = max(len(p) + len(c) for p, c in examples)
    if pt.value_weight > 0:
        rows = value_training_rows(ctx, problems, prompts, solutions, rng, encode)
        length = max(length, *(len(ids) for ids, _ in rows))
        value_rows = pack_value_rows(rows, tokenizer.pad_token_id, length)
    tokens, mask = pack_examples(examples, tokenizer.pad_token_id, length)
    model = LlamaModel(policy_model_config(ctx, tokenizer), rngs=nnx.Rngs(ctx.config.seed))
    log = train_causal_lm(model, tokens, mask, LMTrainingConfig(
        steps=pt.steps, batch_size=pt.batch_size, learning_rate=pt.learning_rate,
        warmup_steps=pt.warmup_steps, seed=ctx.config.seed, value_weight=pt.value_weight,
        value_batch_size=pt.value_batch_size, max_grad_norm=pt.max_grad_norm,
        checkpoint_every=pt.checkpoint_every),
        value_rows=value_rows, mesh=ctx.mesh, checkpoint_dir=checkpoints,
        desc=f"train {target.name.replace('_', ' ')}")
    save_policy(model, tokenizer, log, target)
    remove_training_checkpoints(target)


def remove_training_checkpoints(target: Path) -> None:
    """Delete the training checkpoints of the policy saved into ``target`` (on process 0,
    which writes the run's outputs)."""
    if is_writer():
        shutil.rmtree(training_checkpoint_dir(target), ignore_errors=True)


def trace_examples(tokenizer, prompts: Sequence[str], traces: Sequence[Sequence[str]]
                   ) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) to train a policy on: each trace's steps as the policy
    writes them, then EOS."""
    completions = token_ids(tokenizer, (state_text("", steps) for steps in traces))
    return [(p, t + [tokenizer.eos_token_id])
            for p, t in zip(token_ids(tokenizer, prompts), completions)]


def token_ids(tokenizer, texts: Iterable[str]) -> list[list[int]]:
    """Each text's token ids, without special tokens."""
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def save_policy(model: LlamaModel, tokenizer, log: dict, target: Path) -> None:
    """The policy as an HF checkpoint directory with its ``training_log.json``, which
    process 0 writes, and its parameters for meshes (``sharded_params``), which every
    process writes (its devices' shards); all aside, then moved in whole: a killed run
    never leaves a half-saved policy. Every process calls this."""
    partial = target.with_name(target.name + ".partial")
    if is_writer():
        shutil.rmtree(partial, ignore_errors=True)
    barrier(f"{partial.name} cleared")
    save_params(model, partial / PARAMS_FOLDER)
    if is_writer():
        save_hf_checkpoint(model, tokenizer, partial)
        (partial / "training_log.json").write_text(json.dumps(log) + "\n")
        partial.rename(target)


def value_training_rows(ctx: RunContext, problems: list[Problem], prompts: list[str],
                        solutions: list[list[str]], rng: random.Random, encode
                        ) -> list[tuple[list[int], list[tuple[int, float]]]]:
    """For each problem its solution, and a copy with one wrong step (``task.wrong_step``
    at a random depth) continued by the task's solver from there, each step end labelled
    with the state's exact value (``task.can_still_succeed``): 1 before the wrong step, 0
    from it on (as a later step cannot undo it)."""
    task = ctx.task
    if not all(hasattr(task, name) for name in ("wrong_step", "solver_completion",
                                                 "can_still_succeed")):
        raise ValueError(f"policy_training.value_weight > 0 needs a task that can write wrong "
                         f"steps and complete traces exactly; {task.name} cannot")
    rows = []
    for problem, prompt, solution in zip(problems, prompts, solutions):
        depth = rng.randrange(len(solution))
        wrong = [*solution[:depth], task.wrong_step(problem, solution[:depth], rng)]
        for steps in (solution, wrong + task.solver_completion(problem, wrong)):
            ids, labelled = list(encode([prompt])[0]), []
            for t, step in enumerate(steps):
                ids += encode([state_text("", (step,))])[0]
                labelled.append((len(ids) - 1, float(task.can_still_succeed(problem,
                                                                             steps[:t + 1]))))
            rows.append((ids, labelled))
    return rows
