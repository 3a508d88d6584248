"""Sizes and the config of the tiny models the decoding tests build."""

from qstar_jax.models.config import ModelConfig

RANDOM_MAX_LEN = 64
COUNTING_MAX_LEN = 32
COUNTING_VOCAB = 32
COUNTING_NEWLINE_ID = 7
COUNTING_EOS_ID = 9
STEP_BUCKET = 16  # every test cap <= 16 shares one compiled step sampler per batch bucket


def tiny_config(vocab_size: int) -> ModelConfig:
    return ModelConfig(model_type="llama", vocab_size=vocab_size, hidden_size=32,
                       intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=8, rms_norm_eps=1e-5)
