"""What train_policy trains a from-scratch policy on: each solver trace after its prompt,
ended by EOS; with a value head, each step's end labelled with the state's exact value,
on the solution and on a copy with one wrong step; the architecture it builds; and the
policies it trains."""

import dataclasses
import functools
import random
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from qstar_jax.config_loading import load_config
from qstar_jax.models.char_tokenizer import build_char_tokenizer
from qstar_jax.models.lm_training import LMTrainingConfig, pack_examples, pack_value_rows
from qstar_jax.stages.context import RunContext
from qstar_jax.stages import train_policy
from qstar_jax.stages.train_policy import (policy_model_config, token_ids, trace_examples,
                                           value_training_rows)


def arithmetic(tmp_path, *overrides):
    ctx = RunContext(config=load_config(None, list(overrides)), out=tmp_path)
    return ctx, build_char_tokenizer(ctx.task.alphabet)


def test_a_trace_is_its_steps_as_the_policy_writes_them_then_eos(tmp_path):
    _, tokenizer = arithmetic(tmp_path)
    [(prompt, completion)] = trace_examples(tokenizer, ["1 + 2\n"], [["1 + 2 = 3", "#### 3"]])
    assert tokenizer.decode(prompt) == "1 + 2\n"
    assert completion[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(completion[:-1]) == "1 + 2 = 3\n#### 3\n"


def test_value_rows_label_each_step_end_with_the_states_exact_value(tmp_path):
    ctx, tokenizer = arithmetic(tmp_path)
    problems = ctx.problems("train", 2)
    prompts = ctx.prompts(problems)
    solutions = [ctx.task.solution_steps(p, random.Random(0)) for p in problems]
    rows = value_training_rows(ctx, problems, prompts, solutions, random.Random(1),
                               functools.partial(token_ids, tokenizer))
    texts = [tokenizer.decode(ids) for ids, _ in rows]
    assert texts == [
        prompts[0] + "".join(f"{s}\n" for s in solutions[0]),
        prompts[0] + "37 + 11 = 48\n#### 48\n",  # an early answer after one right step
        prompts[1] + "".join(f"{s}\n" for s in solutions[1]),
        prompts[1] + "96 - 9 = 87\n87 + 14 = 101\n101 + 18 = 119\n119 - 21 = 98\n#### 98\n"]
    assert [labels for _, labels in rows] == [
        [(53, 1.0), (66, 1.0), (78, 1.0), (90, 1.0), (103, 1.0), (111, 1.0)],
        [(53, 1.0), (61, 0.0)],
        [(48, 1.0), (61, 1.0), (74, 1.0), (87, 1.0), (95, 1.0)],
        [(48, 0.0), (62, 0.0), (77, 0.0), (91, 0.0), (99, 0.0)]]
    # Each label sits on its step's last token, the newline that ends it.
    assert {tokenizer.decode([ids[at]]) for ids, labels in rows for at, _ in labels} == {"\n"}


def test_a_value_head_needs_a_task_that_writes_wrong_steps(tmp_path):
    ctx = RunContext(config=load_config(None, ["task.name=countdown",
                                               "label.method=best_of_rollouts"]), out=tmp_path)
    with pytest.raises(ValueError, match="needs a task that can write wrong steps .* countdown"):
        value_training_rows(ctx, [], [], [], random.Random(0), None)


def test_the_policys_architecture_is_policy_trainings(tmp_path):
    ctx, tokenizer = arithmetic(tmp_path, "policy_training.hidden_size=32",
                                "policy_training.intermediate_size=64",
                                "policy_training.num_layers=3", "policy_training.num_heads=4",
                                "policy_training.num_kv_heads=2", "decode.max_len=96")
    config = policy_model_config(ctx, tokenizer)
    assert (config.vocab_size, config.hidden_size, config.intermediate_size, config.num_layers,
            config.num_heads, config.num_kv_heads, config.head_dim) == (
        len(tokenizer), 32, 64, 3, 4, 2, 8)
    assert (config.max_position_embeddings, config.tie_word_embeddings, config.bos_token_id,
            config.eos_token_ids) == (96, True, tokenizer.bos_token_id,
                                      (tokenizer.eos_token_id,))


def test_the_second_policy_is_trained_from_the_next_seed_beside_the_policy(tmp_path,
                                                                           monkeypatch):
    trained = []
    monkeypatch.setattr(train_policy, "train_from_scratch",
                        lambda ctx, target: trained.append((ctx.config.seed, target)))

    def trains(*overrides):
        trained.clear()
        train_policy.train_policy(RunContext(config=load_config(None, ["seed=4", *overrides]),
                                             out=tmp_path))
        return list(trained)
    assert trains() == [(4, tmp_path / "policy"), (5, tmp_path / "second_policy")]
    assert trains("q_train.second_opinion=null") == [(4, tmp_path / "policy")]
    assert trains("policy.source=/a/policy", "q_train.second_opinion=null") == []


def test_a_policy_trains_on_policy_trainings_problems_settings_and_seed(tmp_path, monkeypatch):
    """train_from_scratch at seed 3 over policy_training's 3 problems (not the task's 700):
    their solver traces and value rows drawn from one random.Random(3), packed to the
    longest, a model of policy_training's architecture drawn from nnx.Rngs(3), and every
    training setting handed on, with the folder it checkpoints into; a policy already
    there is not trained again."""
    trained, saved = [], []
    # The model as drawn (building a real one costs seconds of first-use compiles).
    monkeypatch.setattr(train_policy, "LlamaModel", lambda config, rngs: SimpleNamespace(
        config=config, rngs=rngs))
    monkeypatch.setattr(train_policy, "train_causal_lm", lambda model, tokens, mask, config,
                        **kw: trained.append((model, tokens, mask, config, kw)) or {"loss": []})
    monkeypatch.setattr(train_policy, "save_policy", lambda model, tokenizer, log, target:
                        saved.append((log, target)))
    ctx, tokenizer = arithmetic(
        tmp_path, "seed=3", "policy_training.train_problems=3", "policy_training.steps=7",
        "policy_training.batch_size=4", "policy_training.learning_rate=0.001",
        "policy_training.warmup_steps=2", "policy_training.value_weight=0.25",
        "policy_training.value_batch_size=5", "policy_training.max_grad_norm=0.5",
        "policy_training.checkpoint_every=3", "policy_training.hidden_size=16",
        "policy_training.intermediate_size=32", "policy_training.num_layers=1")
    mesh = object()
    ctx = dataclasses.replace(ctx, mesh=mesh)
    train_policy.train_from_scratch(ctx, tmp_path / "policy")
    [(model, tokens, mask, config, kw)] = trained
    assert config == LMTrainingConfig(steps=7, batch_size=4, learning_rate=0.001,
                                      warmup_steps=2, seed=3, value_weight=0.25,
                                      value_batch_size=5, max_grad_norm=0.5,
                                      checkpoint_every=3)
    assert (kw["mesh"], kw["desc"]) == (mesh, "train policy")
    assert kw["checkpoint_dir"] == tmp_path / "policy.training"
    assert saved == [({"loss": []}, tmp_path / "policy")]

    problems = ctx.problems("train", 3)
    prompts, rng = ctx.prompts(problems), random.Random(3)
    solutions = [ctx.task.solution_steps(p, rng) for p in problems]
    rows = value_training_rows(ctx, problems, prompts, solutions, rng,
                               functools.partial(token_ids, tokenizer))
    examples = trace_examples(tokenizer, prompts, solutions)
    length = max(len(ids) for ids in [*(p + c for p, c in examples), *(ids for ids, _ in rows)])
    want_tokens, want_mask = pack_examples(examples, tokenizer.pad_token_id, length)
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_array_equal(mask, want_mask)
    want_rows = pack_value_rows(rows, tokenizer.pad_token_id, length)
    for field in ("tokens", "targets", "weights"):
        np.testing.assert_array_equal(getattr(kw["value_rows"], field),
                                      getattr(want_rows, field))
    assert model.config == policy_model_config(ctx, tokenizer)
    assert jax.random.key_data(model.rngs.default.key[...]).tolist() == [0, 3]  # Rngs(3)

    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "config.json").write_text("{}")
    train_policy.train_from_scratch(ctx, tmp_path / "policy")  # there: not trained again
    assert len(trained) == 1 and len(saved) == 1
