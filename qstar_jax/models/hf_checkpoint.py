"""Hugging Face checkpoint directories: ``config.json`` plus single or sharded safetensors."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import jax
import numpy as np
from safetensors import SafetensorError, safe_open

from qstar_jax.models.config import ModelConfig, UnsupportedConfigError
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.weights import CheckpointError, StoredTensor, build_model

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None


def read_hf_config(directory: Path) -> ModelConfig:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{directory} has no config.json: pass a Hugging Face checkpoint directory "
            "(config.json, *.safetensors, tokenizer files) or a .gguf file")
    try:
        return ModelConfig.from_hf(read_json(config_path))
    except UnsupportedConfigError as err:
        raise UnsupportedConfigError(f"{config_path}: {err}") from None


def generation_eos_ids(directory: Path) -> tuple[int, ...]:
    """EOS ids from ``generation_config.json`` (chat models often add end-of-turn ids)."""
    path = directory / "generation_config.json"
    if not path.is_file():
        return ()
    eos = read_json(path).get("eos_token_id")
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (int(eos),)


def safetensors_files(directory: Path) -> list[Path]:
    """The weight files: the shards an index names, or the single ``model.safetensors``."""
    index_path = directory / INDEX_FILE
    if index_path.is_file():
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path} has no 'weight_map' object")
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index_path} names shards that are missing: {missing}")
        return files
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    raise CheckpointError(
        f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}; only safetensors weights "
        "are read (convert .bin / .pth checkpoints with transformers' save_pretrained)")


def _open_safetensors(path: Path, stack: contextlib.ExitStack):
    # The flax framework reads bfloat16, which safetensors' numpy framework cannot.
    try:
        return stack.enter_context(safe_open(str(path), framework="flax"))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file "
                              f"(corrupt or truncated?): {err}") from None


def _host_device():
    """This process's CPU device, so np.asarray of a read tensor is a view, not a device
    round trip (a multi-process run's global CPU device 0 belongs to process 0); None (the
    default device) where JAX_PLATFORMS leaves out the CPU backend."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return None


def _tensor_reader(handle, name: str, path: Path):
    def read() -> np.ndarray:
        try:
            with jax.default_device(_host_device()):
                return np.asarray(handle.get_tensor(name))
        except SafetensorError as err:
            raise CheckpointError(f"cannot read tensor {name!r} from {path}: {err}") from None
    return read


def load_hf_model(directory: Path, *, dtype) -> tuple[ModelConfig, LlamaModel]:
    """Config and filled model from an HF directory; errors name the tensor and file."""
    cfg = read_hf_config(directory)
    with contextlib.ExitStack() as stack:
        tensors: dict[str, StoredTensor] = {}
        for path in safetensors_files(directory):
            handle = _open_safetensors(path, stack)
            for name in handle.keys():
                if name in tensors:
                    raise CheckpointError(
                        f"tensor {name!r} is stored twice: in {tensors[name].file} and {path}")
                shape = tuple(handle.get_slice(name).get_shape())
                tensors[name] = StoredTensor(file=path, shape=shape,
                                             read=_tensor_reader(handle, name, path))
        return cfg, build_model(cfg, tensors, dtype=dtype)
