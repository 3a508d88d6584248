"""Llama-family models: config, NNX decoder, checkpoint loading, tokenizer."""

from qstar_jax.models.config import ModelConfig, UnsupportedConfigError
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.loading import LoadedModel, load_model
from qstar_jax.models.tokenizer import Tokenizer
from qstar_jax.models.weights import CheckpointError

__all__ = ["CheckpointError", "LlamaModel", "LoadedModel", "ModelConfig", "Tokenizer",
           "UnsupportedConfigError", "load_model"]
