"""Save a ``LlamaModel`` as a Hugging Face checkpoint directory.

A policy trained here (Countdown's, from scratch) is written exactly like a downloaded
checkpoint: config.json, model.safetensors in HF names and layout, tokenizer files. It
then loads through ``load_model`` like any other model, and ``transformers`` opens it too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flax import nnx
from safetensors.numpy import save_file
from transformers import PreTrainedTokenizerBase

from qstar_jax.models.config import ModelConfig
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.weights import hf_names
from qstar_jax.outputs.disk_full import rust_write_errors_as_os_errors


def hf_config_dict(cfg: ModelConfig) -> dict:
    """The config.json of a ``llama`` model with this architecture."""
    if cfg.model_type != "llama" or cfg.rope_scaling is not None or any(cfg.sliding_windows):
        raise ValueError("hf_export writes plain llama configs only (no rope scaling or "
                         f"sliding window); got {cfg.model_type}")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim, "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings, "attention_bias": cfg.attention_bias,
        "mlp_bias": cfg.mlp_bias,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1
        else (cfg.eos_token_ids[0] if cfg.eos_token_ids else None),
        "torch_dtype": "float32",
    }


def save_hf_checkpoint(model: LlamaModel, tokenizer: PreTrainedTokenizerBase,
                       directory: str | Path) -> Path:
    cfg = model.config
    if cfg.attention_bias != cfg.attention_out_bias:
        raise ValueError("hf_export: llama applies attention_bias to q, k, v and o alike")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = np.asarray(var.get_value(), np.float32)
        if path[-1] == "kernel":  # nnx.Linear is [in, out]; HF stores [out, in]
            value = np.swapaxes(value, -1, -2)
        names = hf_names(path, cfg.num_layers)
        parts = value if path[0] == "layers" else value[None]
        tensors.update({name: np.ascontiguousarray(part) for name, part in zip(names, parts)})
    # A full disk is an OSError, as run reports in one line (safetensors and tokenizers
    # raise their own errors for it).
    with rust_write_errors_as_os_errors(directory):
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        (directory / "config.json").write_text(json.dumps(hf_config_dict(cfg), indent=2) + "\n")
        tokenizer.save_pretrained(str(directory))
    return directory
