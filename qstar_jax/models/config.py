"""Model configuration for the Llama family, built from a Hugging Face ``config.json``.

One frozen dataclass covers Llama-2/3/3.1/3.2, DeepSeek-Math, Mistral, Qwen2/2.5 and
CodeQwen1.5, with any RoPE scaling ``rope_scaling.py`` reads (as DeepSeek-Coder's and
Qwen2.5's long-context setting ask for). Any HF field that would change the computation
and that this decoder does not implement is an error naming the field, never a silent
default.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from qstar_jax.models.rope_scaling import RopeScaling, rope_scaling_from_hf, rope_theta_from_hf
from qstar_jax.values import is_integer

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
# The shape fields every HF config.json of these model types holds; the rest have defaults.
REQUIRED_HF_FIELDS = ("vocab_size", "hidden_size", "intermediate_size",
                      "num_attention_heads", "num_hidden_layers")
# Shape fields a config.json may leave out (or null) for a default.
OPTIONAL_HF_SHAPE_FIELDS = ("num_key_value_heads", "head_dim", "max_position_embeddings")
# What transformers' config class of each type puts where a config.json leaves a field
# out (MistralConfig, Qwen2Config), for the fields that change what the model computes.
HF_CLASS_DEFAULTS = {"mistral": {"num_key_value_heads": 8, "sliding_window": 4096},
                     "qwen2": {"num_key_value_heads": 32, "max_window_layers": 28}}
# Fields transformers 5 reads nowhere in these three models' code, so the logits it
# computes are the same with them as without, and ours too: Gemma's
# attn_logit_softcapping and final_logit_softcapping, Cohere's logit_scale, Llama-2's
# pretraining_tp (a split of the products used in training, no longer read), and
# attention_dropout (training only). Nothing reads them here either.


class UnsupportedConfigError(ValueError):
    """An HF config asks for something this decoder does not compute."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q, k and v projections
    attention_out_bias: bool = False  # bias on the output projection (Llama's attention_bias)
    mlp_bias: bool = False  # bias on the MLP's gate, up and down projections (Llama's)
    # One entry per layer: the attention window in tokens, or None for full attention.
    sliding_windows: tuple[int | None, ...] = ()
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}")
        if not self.sliding_windows:
            object.__setattr__(self, "sliding_windows", (None,) * self.num_layers)
        if len(self.sliding_windows) != self.num_layers:
            raise UnsupportedConfigError(
                f"{len(self.sliding_windows)} sliding-window entries for {self.num_layers} layers")
        # Layers are scanned, so they must agree; refused here, where the config is read,
        # not when a stage builds the model.
        windows = set(self.sliding_windows)
        if len(windows) > 1:
            raise UnsupportedConfigError(
                f"layers mix attention windows {sorted(windows, key=str)}; "
                "per-layer windows are not supported by the scanned decoder")

    @property
    def uniform_sliding_window(self) -> int | None:
        """The single window every layer uses (None: full attention)."""
        return self.sliding_windows[0]

    def rope_inv_freq(self) -> np.ndarray:
        """Inverse RoPE frequencies [head_dim // 2], scaled as the config says."""
        inv_freq = 1.0 / (self.rope_theta ** (np.arange(0, self.head_dim, 2, dtype=np.float64)
                                              / self.head_dim))
        if self.rope_scaling is not None:
            inv_freq = self.rope_scaling.scale(inv_freq, self.rope_theta)
        return inv_freq.astype(np.float32)

    @property
    def attention_scale(self) -> float:
        """Attention's softmax scale: 1/sqrt(head_dim), times the square of the factor a
        YaRN scaling multiplies the rotary cos and sin by (on q and on k)."""
        factor = 1.0 if self.rope_scaling is None else self.rope_scaling.attention_factor
        return self.head_dim ** -0.5 * factor ** 2

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "ModelConfig":
        """Build from a parsed HF ``config.json``; raises on unsupported math, and on a
        shape field that is not a positive integer or a token id that is not an integer."""
        if not isinstance(hf, dict):
            raise UnsupportedConfigError(f"holds a JSON {type(hf).__name__}, where a "
                                         "config.json holds an object of settings")
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedConfigError(
                f"model_type={model_type!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}")
        hf = {**HF_CLASS_DEFAULTS.get(model_type, {}), **hf}
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedConfigError(f"hidden_act={act!r}: only 'silu' (SwiGLU) is supported")
        quantization = hf.get("quantization_config")
        if quantization:
            method = (quantization.get("quant_method") if isinstance(quantization, dict)
                      else None)
            raise UnsupportedConfigError(
                f"quantization_config (quant_method={method!r}): weights packed by a "
                "quantization method are not read; use the model's unquantized checkpoint "
                "(float32, float16 or bfloat16) or a GGUF file of it (a GGUF's quantized "
                "weights are dequantized as they load)")
        missing = [field for field in REQUIRED_HF_FIELDS if field not in hf]
        if missing:
            raise UnsupportedConfigError(f"lacks {missing}, which a {model_type} config.json "
                                         "holds; is it the checkpoint's own config.json?")
        shapes = REQUIRED_HF_FIELDS + tuple(field for field in OPTIONAL_HF_SHAPE_FIELDS
                                            if hf.get(field) is not None)
        bad = [f"{field}={hf[field]!r}" for field in shapes if not _is_positive_int(hf[field])]
        if bad:
            raise UnsupportedConfigError(f"{', '.join(bad)}: each must be a positive integer")
        num_heads = hf["num_attention_heads"]
        num_layers = hf["num_hidden_layers"]
        llama_bias = model_type == "llama" and bool(hf.get("attention_bias", False))
        rope_theta, rope_scaling = _rope(hf)
        return cls(
            model_type=model_type,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            # Qwen2 biases q, k and v whatever the field says; Mistral ignores it.
            attention_bias=model_type == "qwen2" or llama_bias,
            attention_out_bias=llama_bias,
            # Llama's MLP has biases where mlp_bias says; Mistral's and Qwen2's never do,
            # whatever the field says (their MLPs are built with bias=False).
            mlp_bias=model_type == "llama" and bool(hf.get("mlp_bias", False)),
            sliding_windows=_sliding_windows(hf, model_type, num_layers),
            bos_token_id=_hf_token_id(hf, "bos_token_id"),
            eos_token_ids=_hf_token_ids(hf, "eos_token_id"),
        )


def _is_positive_int(value: Any) -> bool:
    return is_integer(value) and value > 0


def token_ids(value: Any) -> tuple[int, ...]:
    """A token-id setting (``eos_token_id`` of config.json or generation_config.json) as
    ids: null, one id or a list of ids. Anything else (a token's text, say) is a
    ValueError."""
    ids = () if value is None else tuple(value) if isinstance(value, list) else (value,)
    if not all(is_integer(i) and i >= 0 for i in ids):
        raise ValueError(f"{value!r:.60} is not a token id or a list of them (integers >= 0)")
    return ids


def _hf_token_ids(hf: dict, field: str) -> tuple[int, ...]:
    try:
        return token_ids(hf.get(field))
    except ValueError as error:
        raise UnsupportedConfigError(f"{field}: {error}") from None


def _hf_token_id(hf: dict, field: str) -> int | None:
    """A field the decoder reads one id of (a one-item list is that id)."""
    ids = _hf_token_ids(hf, field)
    if len(ids) > 1:
        raise UnsupportedConfigError(f"{field}={hf[field]!r} names {len(ids)} tokens; one is "
                                     "read")
    return ids[0] if ids else None


def _rope(hf: dict) -> tuple[float, RopeScaling | None]:
    """RoPE's base and scaling, as ``rope_scaling.py`` reads them."""
    try:
        return rope_theta_from_hf(hf), rope_scaling_from_hf(hf)
    except ValueError as err:
        raise UnsupportedConfigError(str(err)) from None


def _sliding_windows(hf: dict, model_type: str, num_layers: int) -> tuple[int | None, ...]:
    """Each layer's window as transformers' model of the type reads the config: Llama
    has none; Mistral's attention and mask read sliding_window alone, for every layer,
    whatever layer_types says; Qwen2 windows only where use_sliding_window says, the
    layers layer_types names (without it, those from max_window_layers on)."""
    window = hf.get("sliding_window")
    if model_type == "llama":
        return (None,) * num_layers
    if model_type == "mistral":
        return (None if window is None else int(window),) * num_layers
    on = hf.get("use_sliding_window", False) and window is not None
    layer_types = hf.get("layer_types")
    if layer_types is None:
        first = hf["max_window_layers"]
        if on and not is_integer(first):
            raise UnsupportedConfigError(f"max_window_layers={first!r}: must be an integer")
        return tuple(int(window) if on and i >= first else None for i in range(num_layers))
    sliding = [kind == "sliding_attention" for kind in layer_types]
    if any(sliding) and not on:  # transformers fails on it: a window of None
        raise UnsupportedConfigError(
            "layer_types names sliding_attention layers, but no window is on "
            f"(use_sliding_window={hf.get('use_sliding_window', False)!r}, "
            f"sliding_window={window!r})")
    return tuple(int(window) if s else None for s in sliding)
