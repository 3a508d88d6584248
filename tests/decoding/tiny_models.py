"""Sizes and the config of the tiny models the decoding tests build."""

from qstar_jax.models.config import ModelConfig
from qstar_jax.models.rope_scaling import YarnRopeScaling

RANDOM_MAX_LEN = 64
COUNTING_MAX_LEN = 32
COUNTING_VOCAB = 32
COUNTING_NEWLINE_ID = 7
COUNTING_EOS_ID = 9
STEP_BUCKET = 16  # every test cap <= 16 shares one compiled step sampler per batch bucket
# A YaRN scaling for tiny_config's models: an attention factor of 1.5 scales every logit
# by 2.25, and positions past 16 are past the original context, so the frequencies are
# YaRN's blend too.
YARN = YarnRopeScaling(factor=4.0, original_max_position_embeddings=16, attention_factor=1.5,
                       beta_fast=32.0, beta_slow=1.0, truncate=True)


def tiny_config(vocab_size: int) -> ModelConfig:
    return ModelConfig(model_type="llama", vocab_size=vocab_size, hidden_size=32,
                       intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=8, rms_norm_eps=1e-5)
