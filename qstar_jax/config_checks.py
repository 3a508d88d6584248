"""The range checks a type cannot express, run on every loaded config before any stage
starts. Each error names the key, the value given and, where another key sets the limit,
that key and its value."""

from __future__ import annotations

import dataclasses
import math

from qstar_jax.config import (CODE_TASKS, EXACT_VALUE_TASKS, FROM_SCRATCH_TASKS, METHODS,
                              POLICY_DTYPES, REASONER_METHODS, SCRATCH, SOLVER, SOLVER_TASKS,
                              STAGES, ConfigError, LabelMethod, QBackbone, RunConfig,
                              Scorer, ToTEvaluator, Utility)


def check_config(config: RunConfig) -> None:
    """Raise ConfigError at the first setting out of range."""
    from qstar_jax.tasks.registry import TASK_CLASSES  # names only: no task module loads

    _require(config.task.name in TASK_CLASSES, "task.name",
             f"unknown task {config.task.name!r}; choose from {sorted(TASK_CLASSES)}")
    # numpy's and random's generators take no negative seed; JAX's keys none of 2**63 or
    # more, and a second policy trains from seed + 1
    _require(0 <= config.seed < 2 ** 32, "seed", f"must be in [0, 2**32), got {config.seed}")
    _check_finite(config)
    _check_search(config)
    _check_eval(config)
    _check_decode(config)
    _check_training(config)


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _check_finite(settings, prefix: str = "") -> None:
    """No number setting is NaN or infinite: NaN passes every range check below (it
    compares false), and an infinite temperature or λ failed, or scored every node alike,
    inside a stage."""
    for field in dataclasses.fields(settings):
        value, key = getattr(settings, field.name), f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{key}.")
        elif isinstance(value, float):
            _require(math.isfinite(value), key, f"must be a finite number, got {value}")


def _at_least(minimum: float, prefix: str, settings, *fields: str) -> None:
    """Each of ``fields`` of ``settings`` (named ``prefix.field``) is >= ``minimum``."""
    for field in fields:
        value = getattr(settings, field)
        _require(value >= minimum, f"{prefix}.{field}", f"must be >= {minimum}, got {value}")


def _check_search(config: RunConfig) -> None:
    s, d = config.search, config.decode
    _at_least(1, "search", s, "k", "n_complete", "expansions_per_node", "max_expansions")
    _at_least(0, "search", s, "lam", "temperature")
    _require(s.max_generated_tokens >= d.step_token_cap, "search.max_generated_tokens",
             f"{s.max_generated_tokens} cannot finish one step of up to "
             f"decode.step_token_cap={d.step_token_cap} tokens")
    _require(s.utility != Utility.prm or s.prm_model is not None
             or "train_prm" in config.stages, "search.prm_model",
             "utility=prm needs a PRM: a Math-Shepherd checkpoint, a PRM directory written by "
             "train_prm, or train_prm in stages (to train one in this run)")
    _require(s.prm_good_token != s.prm_bad_token, "search.prm_good_token",
             f"a Math-Shepherd PRM's score compares two tokens' probabilities: "
             f"prm_bad_token must differ, both are {s.prm_good_token!r}")
    _require(s.utility != Utility.countdown_rule or config.task.name == "countdown",
             "search.utility", "countdown_rule scores Countdown steps; for "
             f"task.name={config.task.name} choose zero, prm or code_rule")
    _require(s.utility != Utility.code_rule or config.task.name in CODE_TASKS,
             "search.utility", f"code_rule reads Python; the code tasks are {CODE_TASKS}, "
             f"for task.name={config.task.name} choose zero or prm")


def _check_eval(config: RunConfig) -> None:
    e = config.eval
    _at_least(1, "eval", e, "samples", "beam_width", "beam_k", "text_max_tokens",
              "problems_per_batch")
    _at_least(0, "eval", e, "temperature")
    _at_least(0, "eval", e, "text_kept_rows")
    _at_least(1, "task", config.task, "eval_problems")
    _at_least(0, "task", config.task, "train_problems")
    _require(config.task.train_problems >= 1 or "collect" not in config.stages,
             "task.train_problems", "collect reads train problems: must be >= 1 with collect "
             "in stages, got 0")
    _require(e.methods or "evaluate" not in config.stages, "eval.methods",
             f"lists no method for the evaluate stage; choose from {METHODS + REASONER_METHODS}"
             ", or leave evaluate out of stages")
    unknown = [m for m in e.methods if m not in METHODS + REASONER_METHODS]
    _require(not unknown, "eval.methods",
             f"unknown {unknown}; choose from {METHODS + REASONER_METHODS}")
    if "best_of_n_matched" in e.methods:
        before = e.methods[:e.methods.index("best_of_n_matched")]
        _require("best_of_n" in before and "qstar" in before, "eval.methods",
                 "best_of_n_matched reads best_of_n's and qstar's tokens: list both before it")
    _require("mctsr" not in e.methods or config.task.name not in CODE_TASKS, "eval.methods",
             "mctsr's prompts ask for an answer ending in the line 'The answer is: ...', which "
             f"task.name={config.task.name} ignores: it grades the answer's code; drop mctsr, "
             "or run it on a math task")
    _at_least(1, "eval.tot", e.tot, "k", "keep", "max_expansions", "value_samples")
    _at_least(0, "eval.tot", e.tot, "value_temperature")
    _require(e.tot.evaluator != ToTEvaluator.prm or config.search.utility != Utility.zero,
             "eval.tot.evaluator", "prm ranks states by g, which search.utility=zero fixes at 0")
    _require(e.best_of_n_scorer != Scorer.prm or config.search.utility != Utility.zero,
             "eval.best_of_n_scorer", "prm ranks chains by g, which search.utility=zero "
             "fixes at 0: choose f or q, or a search.utility")
    unknown = [stage for stage in config.stages if stage not in STAGES]
    _require(not unknown, "stages", f"unknown {unknown}; choose from {STAGES}")


def _check_decode(config: RunConfig) -> None:
    from qstar_jax.decoding.step_sampler import ROW_WINDOWS  # the decoder's imports, lazy
    from qstar_jax.decoding.weights import LAYER_WEIGHTS

    d, m = config.decode, config.mesh
    _require(d.layer_weights in LAYER_WEIGHTS, "decode.layer_weights",
             f"must be one of {LAYER_WEIGHTS}, got {d.layer_weights!r}")
    _require(d.row_windows in ROW_WINDOWS, "decode.row_windows",
             f"must be one of {tuple(ROW_WINDOWS)}, got {d.row_windows!r}")
    _at_least(1, "decode", d, "slots", "min_rows", "step_token_cap", "max_steps")
    _require(d.max_len > d.step_token_cap, "decode.max_len",
             f"must exceed decode.step_token_cap={d.step_token_cap} (a row holds its prompt "
             f"and at least one whole step), got {d.max_len}")
    _at_least(0, "decode", d, "page_size", "pages")
    _require(d.pages == 0 or d.page_size > 0, "decode.pages",
             f"sizes a paged cache, which decode.page_size=0 (rows) does not build; set "
             f"decode.page_size (e.g. 16) too, got pages={d.pages}")
    _require(d.step_chunk >= 0, "decode.step_chunk",
             f"must be >= 0 (0: a step in one call), got {d.step_chunk}")
    _require(d.page_size == 0 or d.max_len % d.page_size == 0, "decode.page_size",
             f"decode.max_len={d.max_len} must be a multiple of it, got {d.page_size}")
    row_pages = d.page_size and d.max_len // d.page_size
    shards = max(m.data, 1)  # -1: as many as the devices, which only the mesh knows
    _require(d.num_pages // shards >= row_pages, "decode.pages",
             f"{d.num_pages} pages" + (f" over mesh.data={m.data} shards" if shards > 1 else "")
             + f" hold no row of decode.max_len={d.max_len} tokens ({row_pages} pages of "
             f"{d.page_size}), which one rollout may fill: give at least "
             f"{row_pages * shards}")
    _require(m.model >= 1 and (m.data >= 1 or m.data == -1), "mesh",
             f"sizes must be >= 1 (data may be -1), got data={m.data} model={m.model}")
    _require(d.page_size == 0 or m.data == -1 or d.num_pages % m.data == 0, "decode.pages",
             f"{d.num_pages} pages do not split over mesh.data={m.data} shards; make it a "
             f"multiple of {m.data}")
    _require(m.data == -1 or d.slots % m.data == 0, "decode.slots",
             f"{d.slots} slots do not split over mesh.data={m.data} shards; make it a "
             f"multiple of {m.data}")
    _at_least(1, "distributed", config.distributed, "heartbeat_timeout_s")


def _check_training(config: RunConfig) -> None:
    pt, label, q = config.policy_training, config.label, config.q_train
    _require(config.policy.dtype in POLICY_DTYPES, "policy.dtype",
             f"must be one of {POLICY_DTYPES}, got {config.policy.dtype!r}")
    _at_least(1, "policy_training", pt, "steps", "batch_size", "train_problems",
              "hidden_size", "num_layers", "intermediate_size", "num_heads", "num_kv_heads",
              "value_batch_size", "checkpoint_every")
    _require(pt.hidden_size % pt.num_heads == 0 and pt.num_heads % pt.num_kv_heads == 0,
             "policy_training.num_heads", f"must divide hidden_size and be a multiple of "
             f"num_kv_heads, got hidden_size={pt.hidden_size} num_heads={pt.num_heads} "
             f"num_kv_heads={pt.num_kv_heads}")
    _require(pt.hidden_size // pt.num_heads % 2 == 0, "policy_training.num_heads",
             f"RoPE rotates pairs of a head's dimensions: hidden_size / num_heads must be "
             f"even, got {pt.hidden_size} / {pt.num_heads} = {pt.hidden_size // pt.num_heads}")
    _at_least(0, "policy_training", pt, "warmup_steps", "value_weight")
    _require(pt.learning_rate > 0, "policy_training.learning_rate",
             f"must be > 0, got {pt.learning_rate}")
    _require(pt.max_grad_norm is None or pt.max_grad_norm > 0, "policy_training.max_grad_norm",
             f"must be > 0 (or null: no clipping), got {pt.max_grad_norm}")
    _at_least(1, "collect", config.collect, "rollouts_per_problem")
    _at_least(0, "collect", config.collect, "temperature")
    _at_least(1, "label", label, "rollouts_per_state", "rounds")
    _require(0 < label.gamma <= 1, "label.gamma", f"must be in (0, 1], got {label.gamma}")
    _at_least(-1, "q_train", q, "trainable_layers")  # -1: all
    _at_least(0, "q_train", q, "hidden_layers")
    _at_least(1, "q_train", q, "batch_size", "max_epochs", "patience")
    _require(q.learning_rate > 0, "q_train.learning_rate", f"must be > 0, got {q.learning_rate}")
    _require(0.0 <= q.holdout_fraction < 1.0, "q_train.holdout_fraction",
             f"must be in [0, 1), got {q.holdout_fraction}")
    _require(not label.live_states_only or config.task.name in EXACT_VALUE_TASKS,
             "label.live_states_only", f"needs a task with an exact solver {EXACT_VALUE_TASKS}; "
             f"the defaults are the arithmetic world's labels: for task.name="
             f"{config.task.name} start from its config in configs/, or set "
             "label.live_states_only=false and label.method (e.g. best_of_rollouts)")
    _require(not label.trace_is_a_rollout or label.method == LabelMethod.best_of_rollouts,
             "label.trace_is_a_rollout", f"counts the traces among best-of-rollouts' "
             f"rollouts; label.method is {label.method.value}")
    _require(label.method != LabelMethod.stronger_model or label.stronger_model is not None,
             "label.stronger_model", "label.method=stronger_model needs a model")
    _require(label.method != LabelMethod.stronger_model or label.stronger_model != SOLVER
             or config.task.name in SOLVER_TASKS, "label.stronger_model",
             f"'solver' completes traces with a task's exact solver; the tasks that have one "
             f"are {SOLVER_TASKS}: give a model directory")
    _require(q.backbone != QBackbone.separate or q.separate_model is not None,
             "q_train.separate_model", "q_train.backbone=separate needs a model")
    _require(q.second_opinion is None or q.backbone == QBackbone.policy,
             "q_train.second_opinion",
             "is read by the head on the policy's hidden states (q_train.backbone=policy)")
    _require(q.second_opinion != SCRATCH or config.policy.source == SCRATCH,
             "q_train.second_opinion", f"'scratch' (the default experiment's) trains a second "
             f"policy beside a policy trained from scratch (policy.source=scratch); with "
             f"policy.source={config.policy.source} set it to null or a checkpoint directory")
    _require(not config.policy.chat_template or config.policy.source != SCRATCH,
             "policy.chat_template", "a policy trained from scratch (policy.source=scratch) "
             "reads plain text through a character tokenizer with no chat template: set it "
             "to false")
    _require(config.policy.source != SCRATCH or config.task.name in FROM_SCRATCH_TASKS,
             "policy.source", f"'scratch' (train a policy from scratch) is for the synthetic "
             f"worlds {FROM_SCRATCH_TASKS}; point it at an HF directory, a .gguf file or an "
             "alias")
