"""A model's parameters as an orbax checkpoint that a mesh writes and reads in shards.

A run saves its trained policy twice: as an HF export (``hf_export``: what transformers,
and ``load_model`` without a mesh, open), which process 0 writes, and as its parameters
here, which every process writes (the shards its devices hold). Later stages restore
these straight onto the layout the decoder gives its weights on the run's mesh
(``parallel.weight_shardings``), each process reading only its own shards, so no process
needs a whole copy of a model that is sharded over the ``model`` axis.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from qstar_jax.models.config import ModelConfig
from qstar_jax.models.llama import LlamaModel
from qstar_jax.outputs.disk_full import orbax_write_errors_as_os_errors
from qstar_jax.parallel import ShardingRules, replicate, weight_shardings

# The folder of a checkpoint directory that holds its parameters for meshes.
PARAMS_FOLDER = "orbax_params"


def save_params(model: nnx.Module, directory: str | os.PathLike) -> None:
    """``model``'s parameters into ``directory``, which must not exist yet. Every process
    of a run calls this; orbax writes each shard once and returns when all are on disk."""
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with (orbax_write_errors_as_os_errors(directory),  # a full disk: an OSError
          ocp.StandardCheckpointer() as checkpointer):
        checkpointer.save(Path(directory).absolute(), params)


def restore_params(directory: str | os.PathLike, abstract: Any, shardings: Any) -> Any:
    """The parameters saved in ``directory``, in ``abstract``'s structure and dtypes, each
    read onto its sharding in ``shardings``: a process reads the shards its devices hold."""
    targets = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                           abstract, shardings)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(Path(directory).absolute(), targets)


def module_template(build: Callable[[], nnx.Module]) -> tuple[nnx.GraphDef, Any, nnx.State]:
    """(graphdef, parameter shapes and dtypes as a pure dict, the rest of the state) of
    the module ``build`` makes. Only shapes are built for the parameters (no random init
    of a large model); the rest (e.g. RoPE tables) is computed under jit, where the unused
    parameter init is dead code."""
    graphdef, abstract_params, _ = nnx.split(nnx.eval_shape(build), nnx.Param, ...)
    rest = jax.jit(lambda: nnx.split(build(), nnx.Param, ...)[2])()
    return graphdef, nnx.to_pure_dict(abstract_params), rest


def load_llama_onto_mesh(directory: str | os.PathLike, config: ModelConfig, mesh: Mesh, *,
                         dtype) -> LlamaModel:
    """The model whose parameters ``save_params`` wrote into ``directory``, cast to
    ``dtype`` and laid out on ``mesh`` as the decoder lays out its weights."""
    graphdef, abstract, rest = module_template(
        lambda: LlamaModel(config, dtype=dtype, rngs=nnx.Rngs(0)))
    shardings = weight_shardings(abstract, mesh, ShardingRules().for_model(config, mesh))
    return nnx.merge(graphdef, restore_params(directory, abstract, shardings),
                     replicate(rest, mesh))
