"""GGUF files (llama.cpp): config from the ``llama.*`` metadata, tensors dequantized by ``gguf``."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import gguf
import numpy as np

from qstar_jax.models.config import ModelConfig, UnsupportedConfigError
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.rope_scaling import PerFrequencyRopeScaling
from qstar_jax.models.weights import (CheckpointError, StoredTensor, build_model,
                                      check_tensors, expected_tensor_names)

# GGUF architecture -> (its tensor names, the HF model_type it holds, whether llama.cpp's
# converter interleaved Q/K rows: it does for the architectures whose RoPE llama.cpp
# rotates in adjacent pairs, not for Qwen2's rotate-half).
ARCHITECTURES = {"llama": (gguf.MODEL_ARCH.LLAMA, "llama", True),
                 "qwen2": (gguf.MODEL_ARCH.QWEN2, "qwen2", False)}
ROPE_FREQS = "rope_freqs.weight"  # a factor per RoPE frequency (a Llama-3.1 scaling)


def open_gguf(path: Path) -> gguf.GGUFReader:
    """The file's reader, parsed once per process while the file stays as it was: gguf
    parses a 49k-token vocabulary field by field (7 s for SmolLM2 on this CPU), and a run
    reads the metadata to plan its memory before it loads the weights. The reader only
    reads (its tensors are memory-mapped views), so sharing it changes nothing."""
    try:
        stat = Path(path).stat()
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read: {err}") from None
    return _parsed(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _parsed(path: str, size: int, mtime_ns: int) -> gguf.GGUFReader:
    """``path``'s reader; ``size`` and ``mtime_ns`` key a changed file apart."""
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, OSError) as err:  # what gguf raises on a short file
        raise CheckpointError(f"{path} is not a readable GGUF file (corrupt or truncated?): "
                              f"{type(err).__name__}: {err}") from None


def _field(reader: gguf.GGUFReader, key: str, default=None):
    field = reader.get_field(key)
    return default if field is None else field.contents()


def gguf_config(reader: gguf.GGUFReader, path: Path) -> ModelConfig:
    """The ModelConfig that the GGUF metadata describes; raises on math we do not compute."""
    arch = architecture(reader, path)
    tensor_names = {t.name for t in reader.tensors}
    if _field(reader, f"{arch}.expert_count", 0):
        raise CheckpointError(f"{path}: mixture-of-experts GGUF models are not supported")

    def key(name, default=None):
        return _field(reader, f"{arch}.{name}", default)

    required = {name: key(name) for name in ("block_count", "embedding_length",
                                             "feed_forward_length", "attention.head_count")}
    token_embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    # Older files omit vocab_size; the embedding's row count says the same.
    required["vocab_size"] = key("vocab_size") or (
        int(token_embd.shape[-1]) if token_embd is not None else None)
    missing = [f"{arch}.{name}" for name, value in required.items() if value is None]
    if missing:
        raise CheckpointError(f"{path}: GGUF metadata lacks {missing}; the file is incomplete")
    num_heads, hidden = required["attention.head_count"], required["embedding_length"]
    head_dim = key("attention.key_length", hidden // num_heads)
    rope_dim = key("rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise CheckpointError(f"{path}: partial rotary embedding (rope dimension {rope_dim} of "
                              f"head_dim {head_dim}) is not supported")
    scaling = key("rope.scaling.type", "none")
    per_frequency = _rope_frequency_factors(reader, path, head_dim)
    if per_frequency is not None and scaling != "none":
        raise CheckpointError(f"{path} scales RoPE twice: by its {ROPE_FREQS} tensor and by "
                              f"rope.scaling.type {scaling!r}")
    if scaling not in ("none", "linear", "yarn"):
        raise CheckpointError(f"{path}: GGUF RoPE scaling {scaling!r} is not supported (only "
                              "linear and yarn); load the model's HF safetensors directory "
                              "instead")
    scaling_fields = _scaling_fields(scaling, key, path)
    hf_style = {
        "model_type": ARCHITECTURES[arch][1],
        "vocab_size": required["vocab_size"],
        "hidden_size": hidden,
        "intermediate_size": required["feed_forward_length"],
        "num_hidden_layers": required["block_count"],
        "num_attention_heads": num_heads,
        "num_key_value_heads": key("attention.head_count_kv", num_heads),
        "head_dim": head_dim,
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": key("rope.freq_base", 10000.0),
        "rope_scaling": scaling_fields,
        "max_position_embeddings": key("context_length", 4096),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        # llama.cpp's llama architecture reads optional biases of the MLP's products
        "mlp_bias": any(f"blk.0.{name}.bias" in tensor_names
                        for name in ("ffn_gate", "ffn_up", "ffn_down")),
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
    }
    try:
        cfg = ModelConfig.from_hf(hf_style)
    except UnsupportedConfigError as err:
        raise UnsupportedConfigError(f"{path}: {err}") from None
    return cfg if per_frequency is None else dataclasses.replace(cfg, rope_scaling=per_frequency)


def _scaling_fields(scaling: str, key, path: Path) -> dict | None:
    """HF's rope_scaling fields for the scaling llama.cpp's keys describe (None: none): a
    linear
    scaling's factor; YaRN's factor, original context and (where written) betas, with its
    attention factor left to HF's rule, which is llama.cpp's (0.1 ln factor + 1). A YaRN
    key that changes llama.cpp's rule away from HF's is refused, not dropped."""
    if scaling == "none":
        return None
    fields = {"rope_type": scaling, "factor": key("rope.scaling.factor")}
    if scaling != "yarn":
        return {k: v for k, v in fields.items() if v is not None}
    original = key("rope.scaling.original_context_length")
    if None in (fields["factor"], original):
        raise CheckpointError(f"{path}: its YaRN RoPE scaling lacks rope.scaling.factor or "
                              "rope.scaling.original_context_length; the file is incomplete")
    changed = [name for name, plain in (("rope.scaling.attn_factor", 1.0),
                                        ("rope.scaling.yarn_attn_factor", 1.0),
                                        ("rope.scaling.yarn_ext_factor", 1.0),
                                        ("rope.scaling.yarn_log_multiplier", 0.0))
               if key(name, plain) != plain]
    if changed:
        raise CheckpointError(f"{path}: its YaRN RoPE scaling sets {changed}, which HF's YaRN "
                              "rule has no counterpart for; load the model's HF safetensors "
                              "directory instead")
    betas = {name: key(f"rope.scaling.yarn_{name}") for name in ("beta_fast", "beta_slow")}
    return {**fields, "original_max_position_embeddings": original,
            **{name: beta for name, beta in betas.items() if beta is not None}}


def architecture(reader: gguf.GGUFReader, path: Path) -> str:
    """The file's ``general.architecture``, one of ARCHITECTURES."""
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{path}: GGUF architecture {arch!r} is not supported (only {sorted(ARCHITECTURES)}: "
            "llama covers Llama and Mistral, qwen2 Qwen2, Qwen2.5 and CodeQwen1.5); load the "
            "model's HF safetensors directory instead")
    return arch


def _rope_frequency_factors(reader: gguf.GGUFReader, path: Path,
                            head_dim: int) -> PerFrequencyRopeScaling | None:
    """The factor llama.cpp divides each RoPE frequency by, where the file stores them as
    a tensor (as llama.cpp's converter writes Llama-3.1's ``llama3`` scaling)."""
    tensor = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
    if tensor is None:
        return None
    factors = _dequantizer(tensor, path, None)().reshape(-1)
    if factors.shape != (head_dim // 2,) or not np.all(factors > 0):
        raise CheckpointError(f"{path}: its {ROPE_FREQS} tensor should hold {head_dim // 2} "
                              f"positive factors (one per RoPE frequency), got shape "
                              f"{factors.shape}, least {factors.min(initial=np.inf):g}")
    return PerFrequencyRopeScaling(factors=tuple(factors.tolist()))


def unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: weight [num_heads * head_dim, ...].

    llama.cpp's converter interleaves the two rotary halves of each head (its RoPE rotates
    adjacent pairs); rotate-half RoPE needs them back as two contiguous halves.
    """
    half = weight.shape[0] // num_heads // 2
    split = weight.reshape(num_heads, half, 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


def _dequantizer(tensor, path: Path, permuted_heads: int | None):
    """Reads ``tensor`` as float32 in HF layout; ``permuted_heads`` set for Q and K rows."""
    def read() -> np.ndarray:
        try:
            # A plain-ndarray view of the memmap: numpy's memmap subclass makes every
            # intermediate slice in the block dequantizers several times slower.
            values = gguf.quants.dequantize(tensor.data.view(np.ndarray), tensor.tensor_type)
        except NotImplementedError:
            raise CheckpointError(
                f"tensor {tensor.name!r} in {path} has type {tensor.tensor_type.name}, which "
                "the gguf package cannot dequantize; use a GGUF with another quantization "
                "(e.g. F16, Q8_0, Q4_K_M)") from None
        values = values.reshape(tuple(int(d) for d in reversed(tensor.shape)))
        return values if permuted_heads is None else unpermute_rows(values, permuted_heads)
    return read


def has_vocabulary(path: Path) -> bool:
    """Whether the GGUF file carries a tokenizer vocabulary."""
    return open_gguf(path).get_field("tokenizer.ggml.tokens") is not None


def has_chat_template(path: Path) -> bool:
    """Whether the GGUF file carries a chat template (transformers' tokenizer of the file
    takes its template from this key)."""
    return open_gguf(path).get_field("tokenizer.chat_template") is not None


def load_gguf_model(path: Path, *, dtype) -> tuple[ModelConfig, LlamaModel]:
    """Config and filled model.

    Errors name the tensor and the file.
    """
    cfg, tensors = _config_and_tensors(path)
    return cfg, build_model(cfg, tensors, dtype=dtype)


def check_gguf_checkpoint(path: Path) -> ModelConfig:
    """The file's config, once its header says that ``load_gguf_model`` finds every
    tensor it reads, of the shape it reads (no tensor is read)."""
    cfg, tensors = _config_and_tensors(path)
    check_tensors(cfg, tensors)
    return cfg


def _config_and_tensors(path: Path) -> tuple[ModelConfig, dict[str, StoredTensor]]:
    """The file's config and its tensors under HF names, none read yet."""
    reader = open_gguf(path)
    cfg = gguf_config(reader, path)
    tensor_arch, _, permuted = ARCHITECTURES[architecture(reader, path)]
    name_map = gguf.get_tensor_name_map(tensor_arch, cfg.num_layers)
    hf_name_of = {name_map.get_name(hf, try_suffixes=(".weight", ".bias")): hf
                  for hf in expected_tensor_names(cfg)}
    tensors = {}
    for tensor in reader.tensors:
        if tensor.name == ROPE_FREQS:  # read into the config's RoPE scaling
            continue
        hf_name = hf_name_of.get(tensor.name, tensor.name)  # unknown names stay as found
        heads = (None if not permuted else cfg.num_heads if ".self_attn.q_proj." in hf_name
                 else cfg.num_kv_heads if ".self_attn.k_proj." in hf_name else None)
        tensors[hf_name] = StoredTensor(file=path,
                                        shape=tuple(int(d) for d in reversed(tensor.shape)),
                                        read=_dequantizer(tensor, path, heads))
    return cfg, tensors
