"""The RoPE frequency scalings a Hugging Face config can ask for, read as ``transformers``
reads them: Llama-3.1's (``llama3``), position interpolation (``linear``:
DeepSeek-Coder, long-context Llama-2 fine-tunes) and YaRN (``yarn``: Qwen2.5's long-
context setting); and a factor per frequency, as a Llama-3.1 GGUF stores its scaling.

Each turns the plain inverse frequencies into the scaled ones. YaRN also multiplies the
rotary cos and sin by an attention factor, so every query-key product grows by its
square: ``ModelConfig.attention_scale`` folds that into attention's softmax scale.
Errors are ``ValueError``s naming what is wrong; ``ModelConfig.from_hf`` reports them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np


class _Scaling:
    attention_factor: ClassVar[float] = 1.0  # YaRN's is a field

    @classmethod
    def from_hf(cls, scaling: dict[str, Any]):
        """Each field read from the HF dict and cast to its annotated type."""
        # Annotations are strings here ("int", "float"): each names its builtin.
        casts = {"int": int, "float": float}
        return cls(**{f.name: casts[f.type](scaling[f.name]) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Llama3RopeScaling(_Scaling):
    """Long wavelengths divided by ``factor``, short ones kept, a blend between."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def scale(self, inv_freq: np.ndarray, theta: float) -> np.ndarray:
        del theta  # the rule reads wavelengths alone
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
class LinearRopeScaling(_Scaling):
    """Every frequency divided by ``factor``."""

    factor: float

    def scale(self, inv_freq: np.ndarray, theta: float) -> np.ndarray:
        del theta
        return inv_freq / self.factor


@dataclasses.dataclass(frozen=True, kw_only=True)
class YarnRopeScaling(_Scaling):
    """Frequencies that turn fewer than ``beta_slow`` times over the original context
    divided by ``factor``, those that turn more than ``beta_fast`` times kept, a linear
    ramp over the pair index between; logits scaled by ``attention_factor`` squared."""

    factor: float
    original_max_position_embeddings: int
    attention_factor: float
    beta_fast: float
    beta_slow: float
    truncate: bool

    @classmethod
    def from_hf(cls, scaling: dict[str, Any], max_position_embeddings: int | None = None):
        original = int(scaling["original_max_position_embeddings"])
        factor = scaling["factor"]
        if factor is None:  # the ratio of the two context lengths, as transformers takes it
            factor = max_position_embeddings / original
        attention_factor = scaling.get("attention_factor")
        if attention_factor is None:
            mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
            attention_factor = (_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
                                if mscale and mscale_all_dim else _yarn_mscale(factor))
        return cls(factor=float(factor), original_max_position_embeddings=original,
                   attention_factor=float(attention_factor),
                   beta_fast=float(scaling.get("beta_fast") or 32),
                   beta_slow=float(scaling.get("beta_slow") or 1),
                   truncate=bool(scaling.get("truncate", True)))

    def scale(self, inv_freq: np.ndarray, theta: float) -> np.ndarray:
        dim = 2 * len(inv_freq)

        def pair_turning(rotations: float) -> float:  # the (fractional) pair index that
            # turns ``rotations`` times over the original context
            return (dim * math.log(self.original_max_position_embeddings
                                   / (rotations * 2 * math.pi)) / (2 * math.log(theta)))

        low, high = pair_turning(self.beta_fast), pair_turning(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        interpolated = np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
        return inv_freq / self.factor * interpolated + inv_freq * (1 - interpolated)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PerFrequencyRopeScaling(_Scaling):
    """Each frequency divided by its own factor: llama.cpp's ``rope_freqs`` tensor, which
    a Llama-3.1-style GGUF carries in place of the ``llama3`` rule's parameters."""

    factors: tuple[float, ...]

    def __post_init__(self):  # a list read back from JSON: hashable, as configs must be
        object.__setattr__(self, "factors", tuple(float(f) for f in self.factors))

    def scale(self, inv_freq: np.ndarray, theta: float) -> np.ndarray:
        del theta
        if len(self.factors) != len(inv_freq):
            raise ValueError(f"{len(self.factors)} RoPE frequency factors for "
                             f"{len(inv_freq)} frequencies")
        return inv_freq / np.asarray(self.factors, np.float64)


RopeScaling = Llama3RopeScaling | LinearRopeScaling | YarnRopeScaling | PerFrequencyRopeScaling
ROPE_SCALINGS = {"llama3": Llama3RopeScaling, "linear": LinearRopeScaling,
                 "yarn": YarnRopeScaling}


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def hf_rope_parameters(hf: dict[str, Any]) -> dict[str, Any]:
    """The RoPE settings of an HF ``config.json`` as transformers 5 takes them: a
    (transformers 4) rope_scaling in place of rope_parameters where it has both; a
    ValueError for settings given per layer type, on which these three models' rotary
    embeddings fail (they read one ``rope_type``)."""
    params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise ValueError(f"rope_scaling/rope_parameters {params!r:.60} is not an object of "
                         "settings")
    per_layer_type = sorted(key for key, value in params.items() if isinstance(value, dict))
    if per_layer_type:
        raise ValueError(f"RoPE settings per layer type ({', '.join(per_layer_type)}) are not "
                         "supported")
    return params


def rope_theta_from_hf(hf: dict[str, Any]) -> float:
    """RoPE's base: the RoPE settings' rope_theta, else the top-level one, else 10000."""
    return float(hf_rope_parameters(hf).get("rope_theta", hf.get("rope_theta", 10000.0)))


def rope_scaling_from_hf(hf: dict[str, Any]) -> RopeScaling | None:
    """The scaling an HF ``config.json`` asks for, None for plain RoPE; a ValueError
    naming the type or the field where it asks for one this decoder does not compute."""
    scaling = hf_rope_parameters(hf)
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        # transformers' plain RoPE (each model's compute_default_rope_parameters) rotates
        # the whole head whatever partial_rotary_factor says, and so does ours.
        return None
    if kind not in ROPE_SCALINGS:
        raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: default, "
                         f"{', '.join(ROPE_SCALINGS)})")
    # A scaled RoPE's frequencies in transformers cover int(head_dim * factor) of each
    # head, which its rotation of whole heads then fails on (or, where that rounds to
    # head_dim less one, runs at other frequencies).
    partial = scaling.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if partial is not None and partial != 1:
        raise ValueError(f"partial_rotary_factor={partial!r} with {kind} RoPE scaling is not "
                         "supported: RoPE over part of each head is not computed")
    if kind in ("llama3", "yarn"):
        # transformers' reading: a top-level original_max_position_embeddings wins, the
        # model's max_position_embeddings stands in where neither says.
        top = hf.get("original_max_position_embeddings")
        scaling = ({**scaling, "original_max_position_embeddings": top} if top is not None
                   else {"original_max_position_embeddings": hf.get("max_position_embeddings"),
                         **scaling})
    try:
        if kind == "yarn":
            return YarnRopeScaling.from_hf(scaling, hf.get("max_position_embeddings"))
        return ROPE_SCALINGS[kind].from_hf(scaling)
    except KeyError as missing:
        raise ValueError(f"{kind} rope_scaling lacks {missing}") from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"{kind} rope_scaling {scaling} is malformed: {err}") from None


def rope_scaling_from_fields(fields: dict[str, Any]) -> RopeScaling:
    """The scaling whose fields ``fields`` names (``dataclasses.asdict`` read back)."""
    for kind in (*ROPE_SCALINGS.values(), PerFrequencyRopeScaling):
        if set(fields) == {f.name for f in dataclasses.fields(kind)}:
            return kind(**fields)
    raise ValueError(f"rope_scaling fields {sorted(fields)} match no known scaling")
