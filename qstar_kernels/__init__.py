"""Pallas kernels, each beside the plain-``jnp`` reference it is tested against."""

from qstar_kernels.paged_attention import (compiling_for, paged_decode_attention,
                                           resolve_implementation)
from qstar_kernels.paged_attention_gpu import paged_decode_attention_gpu
from qstar_kernels.paged_attention_reference import paged_decode_attention_reference
from qstar_kernels.paged_attention_tpu import paged_decode_attention_tpu

__all__ = ["compiling_for", "paged_decode_attention", "paged_decode_attention_gpu",
           "paged_decode_attention_reference", "paged_decode_attention_tpu",
           "resolve_implementation"]
