"""Model configuration for the Llama family, built from a Hugging Face ``config.json``.

One frozen dataclass covers Llama-2/3/3.1/3.2, DeepSeek-Math, Mistral, Qwen2/2.5 and
CodeQwen1.5 (and linearly scaled RoPE, as DeepSeek-Coder's). Any HF field that would
change the computation and that this decoder does not implement is an error naming the
field, never a silent default.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


class UnsupportedConfigError(ValueError):
    """An HF config asks for something this decoder does not compute."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Llama3RopeScaling:
    """Llama-3.1's rule: long wavelengths divided by ``factor``, short ones kept, a blend
    between."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def scale(self, inv_freq: np.ndarray) -> np.ndarray:
        low_wavelen = self.original_max_position_embeddings / self.low_freq_factor
        high_wavelen = self.original_max_position_embeddings / self.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        smooth = ((self.original_max_position_embeddings / wavelen - self.low_freq_factor)
                  / (self.high_freq_factor - self.low_freq_factor))
        scaled = np.where(wavelen > low_wavelen, inv_freq / self.factor, inv_freq)
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        blended = (1 - smooth) * inv_freq / self.factor + smooth * inv_freq
        return np.where(medium, blended, scaled)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearRopeScaling:
    """Position interpolation (HF's ``linear``: DeepSeek-Coder, long-context Llama-2
    fine-tunes): every frequency divided by ``factor``."""

    factor: float

    def scale(self, inv_freq: np.ndarray) -> np.ndarray:
        return inv_freq / self.factor


RopeScaling = Llama3RopeScaling | LinearRopeScaling
ROPE_SCALINGS = {"llama3": Llama3RopeScaling, "linear": LinearRopeScaling}


def rope_scaling_from_fields(fields: dict[str, Any]) -> RopeScaling:
    """The scaling whose fields ``fields`` names (``dataclasses.asdict`` read back)."""
    for kind in ROPE_SCALINGS.values():
        if set(fields) == {f.name for f in dataclasses.fields(kind)}:
            return kind(**fields)
    raise UnsupportedConfigError(f"rope_scaling fields {sorted(fields)} match no known scaling")


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

    @property
    def uniform_sliding_window(self) -> int | None:
        """The single window every layer uses; layers are scanned, so they must agree."""
        windows = set(self.sliding_windows)
        if len(windows) > 1:
            raise UnsupportedConfigError(
                f"layers mix attention windows {sorted(windows, key=str)}; "
                "per-layer windows are not supported by the scanned decoder")
        return next(iter(windows))

    def rope_inv_freq(self) -> np.ndarray:
        """Inverse RoPE frequencies [head_dim // 2], scaled as the config says."""
        inv_freq = 1.0 / (self.rope_theta ** (np.arange(0, self.head_dim, 2, dtype=np.float64)
                                              / self.head_dim))
        if self.rope_scaling is not None:
            inv_freq = self.rope_scaling.scale(inv_freq)
        return inv_freq.astype(np.float32)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "ModelConfig":
        """Build from a parsed HF ``config.json``; raises on unsupported math."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedConfigError(
                f"model_type={model_type!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}")
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedConfigError(f"hidden_act={act!r}: only 'silu' (SwiGLU) is supported")
        if hf.get("mlp_bias"):
            raise UnsupportedConfigError("mlp_bias=true is not supported")
        num_heads = hf["num_attention_heads"]
        num_layers = hf["num_hidden_layers"]
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
            rope_theta=_rope_theta(hf),
            rope_scaling=_rope_scaling(hf),
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=model_type == "qwen2" or bool(hf.get("attention_bias", False)),
            attention_out_bias=model_type != "qwen2" and bool(hf.get("attention_bias", False)),
            sliding_windows=_sliding_windows(hf, model_type, num_layers),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=_as_tuple(hf.get("eos_token_id")),
        )


def _as_tuple(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),)


def _rope_theta(hf: dict) -> float:
    params = hf.get("rope_parameters") or {}
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _rope_scaling(hf: dict) -> RopeScaling | None:
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters")
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return None
    if kind not in ROPE_SCALINGS:
        raise UnsupportedConfigError(
            f"rope_scaling type {kind!r} is not supported (supported: default, "
            f"{', '.join(ROPE_SCALINGS)})")
    fields = dataclasses.fields(ROPE_SCALINGS[kind])
    try:
        # Field types are annotation strings here ("int", "float"): each names its builtin.
        return ROPE_SCALINGS[kind](**{f.name: {"int": int, "float": float}[f.type](
            scaling[f.name]) for f in fields})
    except KeyError as missing:
        raise UnsupportedConfigError(f"{kind} rope_scaling lacks {missing}") from None


def _sliding_windows(hf: dict, model_type: str, num_layers: int) -> tuple[int | None, ...]:
    window = hf.get("sliding_window")
    if model_type == "llama" or window is None:
        return (None,) * num_layers
    layer_types = hf.get("layer_types")
    if layer_types is not None:
        return tuple(window if t == "sliding_attention" else None for t in layer_types)
    if model_type == "qwen2":
        if not hf.get("use_sliding_window", False):
            return (None,) * num_layers
        first = hf.get("max_window_layers", num_layers)
        return tuple(window if i >= first else None for i in range(num_layers))
    return (int(window),) * num_layers
