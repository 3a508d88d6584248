"""The shapes (``ModelConfig``) of the models a run holds, read without loading a weight:
from a checkpoint's config.json or GGUF metadata, from a config.json given for a
checkpoint not on this machine (configs/architectures/ ships the paper models'), or from
``policy_training`` for a policy trained from scratch. ``memory_plan`` sizes a run with
them and ``run`` checks a config with them before any stage.
"""

from __future__ import annotations

import os
from pathlib import Path

from qstar_jax.config import SCRATCH, ConfigError, QBackbone, RunConfig, Utility
from qstar_jax.models.config import ModelConfig, UnsupportedConfigError

SCRATCH_VOCAB = 256  # a from-scratch policy's character vocabulary is smaller than this
# The paper configs' models' HF config.json files, in a source checkout.
ARCHITECTURES = Path(__file__).resolve().parents[1] / "configs" / "architectures"


def shipped_architectures() -> str:
    """Where a source checkout keeps the paper models' config.json files, to append to
    the message asking for one ('' where there are none, as in an installed wheel)."""
    files = sorted(ARCHITECTURES.glob("*.json"))
    if not files:
        return ""
    return (f"; {os.path.relpath(ARCHITECTURES)}/ holds the paper models': "
            + ", ".join(file.name for file in files))


def architecture(source: str, key: str, option: str,
                 model_config: str | None = None) -> ModelConfig:
    """The ModelConfig of the checkpoint ``source`` (config key ``key``) without loading
    its weights: from ``model_config`` (an HF config.json, the command's ``option``), the
    checkpoint's config.json or GGUF metadata."""
    from qstar_jax.models.gguf_checkpoint import gguf_config, open_gguf
    from qstar_jax.models.hf_checkpoint import read_hf_config, read_json
    from qstar_jax.models.loading import PACKAGED_MODELS, checkpoint_path, resolve_alias

    if model_config is not None:
        try:
            return ModelConfig.from_hf(read_json(Path(model_config)))
        except UnsupportedConfigError as err:
            raise UnsupportedConfigError(f"{option} {model_config}: {err}") from None
    path = resolve_alias(source) if source in PACKAGED_MODELS else Path(source)
    if not path.exists():
        raise ConfigError(f"{key} {source} is not on this machine: give its HF "
                          f"config.json with {option} to size the run without it"
                          + shipped_architectures())
    path = checkpoint_path(path)  # a directory or a .gguf file, or the loader's refusal
    if path.is_dir():
        return read_hf_config(path)
    return gguf_config(open_gguf(path), path)


def _scratch_architecture(run: RunConfig) -> ModelConfig:
    """The model train_policy trains from scratch (policy.source / second_opinion=scratch)."""
    pt = run.policy_training
    return ModelConfig(model_type="llama", vocab_size=SCRATCH_VOCAB,
                       hidden_size=pt.hidden_size, intermediate_size=pt.intermediate_size,
                       num_layers=pt.num_layers, num_heads=pt.num_heads,
                       num_kv_heads=pt.num_kv_heads, head_dim=pt.hidden_size // pt.num_heads,
                       tie_word_embeddings=True)


def policy_architecture(run: RunConfig, model_config: str | None = None) -> ModelConfig:
    """The policy's ModelConfig without loading its weights: from ``model_config`` (an HF
    config.json), the checkpoint's config.json or GGUF metadata, or policy_training."""
    if run.policy.source == SCRATCH and model_config is None:
        return _scratch_architecture(run)
    return architecture(run.policy.source, "policy.source", "--model-config", model_config)


def evaluate_models(run: RunConfig, *, prm_config: str | None = None,
                    q_config: str | None = None) -> dict[str, ModelConfig]:
    """The models besides the policy that the evaluate stage loads on the device (none
    when ``evaluate`` is not among the stages): "prm", a Math-Shepherd checkpoint for
    ``search.utility=prm`` where a method reads its rewards (a learned PRM is a small head
    on the policy: not counted);
    "q_backbone", Q̂'s ``q_train.separate_model`` where a method reads Q̂; or
    "second_opinion", the ``q_train.second_opinion`` policy, which Q̂ reads and greedy
    also decodes. ``prm_config`` / ``q_config``: HF config.json files for a PRM / Q̂
    model whose checkpoint is not on this machine (a missing checkpoint without one is a
    ConfigError)."""
    from qstar_jax.stages.evaluate import reads_any_process_rewards, reads_q_hat
    from qstar_jax.stages.prm import LEARNED_PRM_MARKER

    if "evaluate" not in run.stages:
        return {}
    models = {}
    s, q = run.search, run.q_train
    reads_prm = (s.utility == Utility.prm and s.prm_model is not None
                 and reads_any_process_rewards(run))
    learned_prm = reads_prm and (Path(s.prm_model) / LEARNED_PRM_MARKER).is_file()
    if reads_prm and (prm_config is not None or not learned_prm):
        models["prm"] = architecture(s.prm_model, "search.prm_model", "--prm-config",
                                     prm_config)
    reads_q = reads_q_hat(run)
    if q.backbone == QBackbone.separate and reads_q:
        models["q_backbone"] = architecture(q.separate_model, "q_train.separate_model",
                                            "--q-config", q_config)
    elif q.second_opinion is not None and (reads_q or "greedy" in run.eval.methods):
        models["second_opinion"] = (
            _scratch_architecture(run) if q.second_opinion == SCRATCH and q_config is None
            else architecture(q.second_opinion, "q_train.second_opinion", "--q-config",
                              q_config))
    return models


def context_warning(run: RunConfig, policy: ModelConfig) -> str | None:
    """A line saying that ``decode.max_len`` runs past the positions the policy's checkpoint
    was trained for, or None. Not an error: the decoder runs there, but what a model
    generates past its context is seldom worth searching."""
    limit = policy.max_position_embeddings
    scaling = policy.rope_scaling
    # YaRN (Qwen2.5's long context) and Llama-3.1's rule stretch an original context by
    # their factor, past what max_position_embeddings may say.
    if hasattr(scaling, "original_max_position_embeddings"):
        limit = max(limit, int(scaling.factor * scaling.original_max_position_embeddings))
    if run.policy.source == SCRATCH or run.decode.max_len <= limit:
        return None
    return (f"warning: decode.max_len={run.decode.max_len} is past the {limit} positions the "
            f"policy ({run.policy.source}) was trained for (max_position_embeddings, or its "
            f"RoPE scaling's reach): tokens past them sit where the model was not trained; "
            f"set decode.max_len to at most {limit}")
