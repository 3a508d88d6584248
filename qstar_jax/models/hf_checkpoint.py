"""Hugging Face checkpoint directories: ``config.json`` plus single or sharded safetensors
(or, where a directory has none, PyTorch ``.bin`` files: ``torch_checkpoint``)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import jax
import numpy as np
from safetensors import SafetensorError, safe_open

from qstar_jax.models.config import ModelConfig, UnsupportedConfigError, token_ids
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.torch_checkpoint import open_torch_checkpoint
from qstar_jax.models.weights import (CheckpointError, StoredTensor, build_model,
                                      check_tensors)

# (index, single file) of each weight format, in the order they are looked for.
WEIGHT_FILES = (("model.safetensors.index.json", "model.safetensors"),
                ("pytorch_model.bin.index.json", "pytorch_model.bin"))


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
            "(config.json, *.safetensors or pytorch_model*.bin, tokenizer files) or a .gguf "
            "file")
    try:
        return ModelConfig.from_hf(read_json(config_path))
    except UnsupportedConfigError as err:
        raise UnsupportedConfigError(f"{config_path}: {err}") from None


def generation_eos_ids(directory: Path) -> tuple[int, ...]:
    """EOS ids from ``generation_config.json`` (chat models often add end-of-turn ids)."""
    path = directory / "generation_config.json"
    if not path.is_file():
        return ()
    settings = read_json(path)
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path} holds a JSON {type(settings).__name__}, where it holds "
                              "an object of settings")
    try:
        return token_ids(settings.get("eos_token_id"))
    except ValueError as error:
        raise CheckpointError(f"{path}: eos_token_id: {error}") from None


def weight_files(directory: Path) -> list[Path]:
    """The weight files: the shards an index names, or the single file; safetensors where
    the directory has them, PyTorch .bin files otherwise."""
    for index_name, single_name in WEIGHT_FILES:
        index_path = directory / index_name
        if index_path.is_file():
            weight_map = read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index_path} has no 'weight_map' object")
            files = [directory / name for name in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{index_path} names shards that are missing: {missing}")
            return files
        if (directory / single_name).is_file():
            return [directory / single_name]
    names = [name for pair in WEIGHT_FILES for name in pair]
    raise CheckpointError(f"{directory} has no weights: none of {', '.join(names)} (other "
                          "formats: re-save the model with transformers' save_pretrained)")


def _safetensors_tensors(path: Path, stack: contextlib.ExitStack) -> dict[str, StoredTensor]:
    # The flax framework reads bfloat16, which safetensors' numpy framework cannot.
    try:
        handle = stack.enter_context(safe_open(str(path), framework="flax"))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file "
                              f"(corrupt or truncated?): {err}") from None
    return {name: StoredTensor(file=path, shape=tuple(handle.get_slice(name).get_shape()),
                               read=_tensor_reader(handle, name, path))
            for name in handle.keys()}


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


def _stored_tensors(directory: Path, stack: contextlib.ExitStack) -> dict[str, StoredTensor]:
    """Every tensor of the directory's weight files, by name, none read yet (the files
    stay open on ``stack``)."""
    tensors: dict[str, StoredTensor] = {}
    for path in weight_files(directory):
        opened = (_safetensors_tensors(path, stack) if path.suffix == ".safetensors"
                  else open_torch_checkpoint(path, stack))
        for name, tensor in opened.items():
            if name in tensors:
                raise CheckpointError(
                    f"tensor {name!r} is stored twice: in {tensors[name].file} and {path}")
            tensors[name] = tensor
    return tensors


def load_hf_model(directory: Path, *, dtype) -> tuple[ModelConfig, LlamaModel]:
    """Config and filled model from an HF directory; errors name the tensor and file."""
    cfg = read_hf_config(directory)
    with contextlib.ExitStack() as stack:
        return cfg, build_model(cfg, _stored_tensors(directory, stack), dtype=dtype)


def check_hf_checkpoint(directory: Path) -> ModelConfig:
    """The directory's config, once its weight files' headers say that ``load_hf_model``
    finds every tensor it reads, of the shape it reads (no tensor is read)."""
    cfg = read_hf_config(directory)
    with contextlib.ExitStack() as stack:
        check_tensors(cfg, _stored_tensors(directory, stack))
    return cfg
