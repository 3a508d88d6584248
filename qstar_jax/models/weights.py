"""Fill an abstract ``LlamaModel`` from named checkpoint tensors (HF naming).

Every loader (safetensors, GGUF) presents its tensors under Hugging Face names, in HF
layout ([out, in] for projections); this module checks them against the model the config
describes and moves them into the NNX state. The module is built with ``nnx.eval_shape``,
so a 7B load never materialises random weights, and each tensor is read only when its
parameter is filled.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from qstar_jax.models.config import ModelConfig
from qstar_jax.models.llama import LlamaModel


PROGRESS_FROM_VALUES = 10**9  # parameters; SmolLM2's 135M load without a bar


class CheckpointError(ValueError):
    """A checkpoint does not match its config, or a file cannot be read."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoredTensor:
    """One checkpoint tensor: where it lives, its HF-layout shape, and how to read it."""
    file: Path
    shape: tuple[int, ...]
    read: Callable[[], np.ndarray]


def _is_known_non_weight(name: str, cfg: ModelConfig) -> bool:
    # Old checkpoints store RoPE buffers; tied checkpoints may store the tied head anyway.
    return name.endswith("rotary_emb.inv_freq") or (
        cfg.tie_word_embeddings and name == "lm_head.weight")


def hf_names(path: tuple[str, ...], num_layers: int) -> list[str]:
    """HF tensor names that make up the NNX parameter at ``path`` (one per layer if stacked)."""
    *modules, leaf = path
    suffix = "bias" if leaf == "bias" else "weight"
    if modules == ["lm_head"]:
        return ["lm_head.weight"]
    if modules[0] == "layers":
        inner = ".".join(modules[1:])
        return [f"model.layers.{i}.{inner}.{suffix}" for i in range(num_layers)]
    return [f"model.{'.'.join(modules)}.{suffix}"]


def _describe_files(tensors: Mapping[str, StoredTensor]) -> str:
    return ", ".join(sorted({str(t.file) for t in tensors.values()})) or "(no tensors)"


def _abstract_params(cfg: ModelConfig, dtype):
    """(graphdef, state, [(path, Param)]) of a LlamaModel whose arrays are only shapes."""
    abstract = nnx.eval_shape(lambda: LlamaModel(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    params = [(path, var) for path, var in nnx.to_flat_state(state) if isinstance(var, nnx.Param)]
    return graphdef, state, params


def expected_tensor_names(cfg: ModelConfig) -> list[str]:
    """The HF names of every tensor a checkpoint for ``cfg`` must hold."""
    _, _, params = _abstract_params(cfg, jnp.float32)
    return [name for names in _read_plan(cfg, params).values() for name in names]


def build_model(cfg: ModelConfig, tensors: Mapping[str, StoredTensor], *,
                dtype=jnp.float32) -> LlamaModel:
    """A ``LlamaModel`` whose parameters are the checkpoint's, cast to ``dtype``.

    Raises CheckpointError naming the tensor and file on a missing tensor, an unexpected
    tensor, or a shape mismatch; all three are checked before any tensor is read.
    """
    graphdef, state, params = _abstract_params(cfg, dtype)
    plan = _read_plan(cfg, params)
    _check_names_and_shapes(cfg, tensors, params, plan)
    read = [name for names in plan.values() for name in names]
    values = sum(math.prod(tensors[name].shape) for name in read)
    # A bar where reading (and dequantising) takes a while: a 7B checkpoint, not the tests'.
    progress = tqdm(total=len(read), desc="reading weights", unit="tensor", mininterval=2.0,
                    disable=values < PROGRESS_FROM_VALUES)
    for path, var in params:
        parts = []
        for name in plan[path]:
            parts.append(tensors[name].read())
            progress.update()
        value = np.stack(parts) if path[0] == "layers" else parts[0]
        if path[-1] == "kernel":  # HF stores [out, in]; nnx.Linear wants [in, out]
            value = np.swapaxes(value, -1, -2)
        var.set_value(jnp.asarray(value.astype(var.get_value().dtype)))
    progress.close()
    state["inv_freq"].set_value(jnp.asarray(cfg.rope_inv_freq()))
    return nnx.merge(graphdef, state)


def check_tensors(cfg: ModelConfig, tensors: Mapping[str, StoredTensor]) -> None:
    """What ``build_model`` checks before it reads a tensor, and nothing read: each
    tensor's name and shape against the model ``cfg`` describes (CheckpointError)."""
    _, _, params = _abstract_params(cfg, jnp.float32)
    _check_names_and_shapes(cfg, tensors, params, _read_plan(cfg, params))


def _read_plan(cfg: ModelConfig, params) -> dict[tuple[str, ...], list[str]]:
    """The HF names each parameter is read from."""
    return {path: hf_names(path, cfg.num_layers) for path, _ in params}


def _check_names_and_shapes(cfg, tensors, params, plan) -> None:
    expected = {name for names in plan.values() for name in names}
    unexpected = sorted(n for n in tensors
                        if n not in expected and not _is_known_non_weight(n, cfg))
    if unexpected:
        name = unexpected[0]
        raise CheckpointError(
            f"unexpected tensor {name!r} in {tensors[name].file} ({len(unexpected)} unexpected "
            f"in all) for a {cfg.model_type} model with {cfg.num_layers} layers: the checkpoint "
            "does not match its config, or it holds a part this decoder does not implement")
    for path, var in params:
        layer_shape = var.get_value().shape[1:] if path[0] == "layers" else var.get_value().shape
        hf_shape = layer_shape[::-1] if path[-1] == "kernel" else layer_shape
        for name in plan[path]:
            if name not in tensors:
                raise CheckpointError(
                    f"tensor {name!r} is missing from the checkpoint ({_describe_files(tensors)}); "
                    "the config asks for it: check that every shard is present and the config "
                    "belongs to these weights")
            if tuple(tensors[name].shape) != tuple(hf_shape):
                raise CheckpointError(
                    f"tensor {name!r} in {tensors[name].file} has shape "
                    f"{tuple(tensors[name].shape)} but the config implies {tuple(hf_shape)}: "
                    "the config does not belong to these weights")
