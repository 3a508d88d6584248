"""Stage train_policy (Countdown only): a small decoder of our architecture trained from
scratch on solver traces, saved as an HF checkpoint directory in ``out/policy``."""

from __future__ import annotations

import random
import shutil

from flax import nnx

from qstar_jax.models.char_tokenizer import build_char_tokenizer
from qstar_jax.models.config import ModelConfig
from qstar_jax.models.hf_export import save_hf_checkpoint
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.lm_training import LMTrainingConfig, pack_examples, train_causal_lm
from qstar_jax.stages.context import RunContext
from qstar_jax.tasks.base import STEP_SEPARATOR
from qstar_jax.tasks.countdown import COUNTDOWN_ALPHABET


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
    target = ctx.out / "policy"
    if (target / "config.json").exists() or ctx.config.policy.source != "scratch":
        return
    pt = ctx.config.policy_training
    problems = ctx.problems(ctx.config.task.train_split, pt.train_problems)
    rng = random.Random(ctx.config.seed)
    traces = ["".join(s + STEP_SEPARATOR for s in ctx.task.solution_steps(p, rng))
              for p in problems]
    tokenizer = build_char_tokenizer(COUNTDOWN_ALPHABET)
    prompt_ids = tokenizer(ctx.prompts(problems), add_special_tokens=False)["input_ids"]
    trace_ids = tokenizer(traces, add_special_tokens=False)["input_ids"]
    examples = [(p, t + [tokenizer.eos_token_id]) for p, t in zip(prompt_ids, trace_ids)]
    tokens, mask = pack_examples(examples, tokenizer.pad_token_id)
    model = LlamaModel(policy_model_config(ctx, tokenizer), rngs=nnx.Rngs(ctx.config.seed))
    train_causal_lm(model, tokens, mask, LMTrainingConfig(
        steps=pt.steps, batch_size=pt.batch_size, learning_rate=pt.learning_rate,
        warmup_steps=pt.warmup_steps, seed=ctx.config.seed))
    # Written aside and moved in whole: a killed run never leaves a half-saved policy.
    partial = ctx.out / "policy.partial"
    shutil.rmtree(partial, ignore_errors=True)
    save_hf_checkpoint(model, tokenizer, partial)
    partial.rename(target)
