"""Batched KV-cache decoding: the slot pool, pure sampling, prefill and the step sampler."""

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.kv_cache import KVCache, SlotPool, SlotPoolExhausted, fork_slots, init_cache
from qstar_jax.decoding.sampling import SamplingParams, sample
from qstar_jax.decoding.step_chunks import StepBatch
from qstar_jax.decoding.step_sampler import EndReason

__all__ = ["Decoder", "EndReason", "KVCache", "SamplingParams", "SlotPool", "SlotPoolExhausted",
           "StepBatch", "fork_slots", "init_cache", "sample"]
